/**
 * Other tools' migration folders (tests/fixtures/<tool>/, written from each tool's
 * documentation): recognised, applied as that tool applies them (its order, its up parts only,
 * its no-transaction option), once, by ten replicas at once, and unchanged by a checkout's
 * line endings; no layout, whatever the flags, runs a down or undo part.
 */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { compareFlywayVersions, EXIT, flywayChecksum, LAYOUT_NAMES, normalizedText, schemaPlan, type LayoutName } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { events, ROOT, runScript, useCluster } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const FIXTURES = join(ROOT, "tests", "fixtures");

let cluster: Cluster;
let workDir: string;
let folders = 0;
useCluster({}, (made) => ({ cluster, dir: workDir } = made));

/** What a database holds after a folder ran: relations, valid indexes, columns of the accounts table and its rows, functions, policies. */
async function databaseState(database: string, accounts: string) {
  const [state] = await cluster.query(`
    select (select coalesce(json_agg(c.relname order by c.relname), '[]') from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = 'public' and c.relkind in ('r', 'v') and c.relname not in ('init_database_migrations', 'schema_migrations')) as relations,
           (select coalesce(json_agg(i.indexrelid::regclass::text order by i.indexrelid::regclass::text), '[]') from pg_index i join pg_class c on c.oid = i.indrelid
             join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = 'public' and i.indisvalid and c.relname not in ('init_database_migrations', 'schema_migrations')) as indexes,
           (select json_agg(a.attname order by a.attnum) from pg_attribute a where a.attrelid = to_regclass('public.' || quote_ident($$${accounts}$$)) and a.attnum > 0 and not a.attisdropped) as columns,
           (select count(*)::int from public.${JSON.stringify(accounts)}) as rows,
           (select coalesce(json_agg(p.proname order by p.proname), '[]') from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public') as functions,
           (select coalesce(json_agg(policyname order by policyname), '[]') from pg_policies where schemaname = 'public') as policies`, database);
  return state;
}

interface LayoutCase {
  layout: LayoutName;
  /** The folder handed to --migrations, under tests/fixtures. */
  dir: string;
  /** The steps in the order the tool applies them. */
  order: string[];
  accounts: string;
  state: Record<string, unknown>;
}

const CASES: LayoutCase[] = [
  {
    layout: "golang-migrate", dir: "golang-migrate", accounts: "accounts",
    // Numeric versions: by name, 10_ and 100_ would run before 2_ (and 10 needs 2's column).
    order: ["1_create_accounts.up.sql", "2_add_name.up.sql", "10_index_name.up.sql", "100_audit.up.sql"],
    state: { relations: ["accounts", "audit"], indexes: ["accounts_name_idx", "accounts_pkey"], columns: ["id", "email", "name"], rows: 1, functions: [], policies: [] },
  },
  {
    // The project's root: dbmate's default folder db/migrations is found inside it.
    layout: "dbmate", dir: "dbmate", accounts: "accounts",
    order: ["20240101093000_create_accounts.sql", "20240102093000_index_email.sql", "20240103093000_sessions.sql"],
    state: { relations: ["accounts", "sessions"], indexes: ["accounts_email_idx", "accounts_pkey", "sessions_pkey"], columns: ["id", "email", "name"], rows: 1, functions: [], policies: [] },
  },
  {
    // Flyway's version order (1.10 after 1.2), the repeatable last, the undo file never.
    layout: "flyway", dir: "flyway", accounts: "accounts",
    order: ["V1__create_accounts.sql", "V1_1__add_name.sql", "V1_2__index_email.sql", "V1_10__rename_index.sql", "R__account_names.sql"],
    state: { relations: ["account_names", "accounts"], indexes: ["accounts_email_key", "accounts_pkey"], columns: ["id", "email", "name"], rows: 1, functions: [], policies: [] },
  },
  {
    layout: "prisma", dir: "prisma/migrations", accounts: "Account",
    order: ["20240101093000_init/migration.sql", "20240102093000_add_name/migration.sql", "20240103093000_index_email/migration.sql"],
    state: { relations: ["Account"], indexes: ["\"Account_email_key\"", "\"Account_pkey\""], columns: ["id", "email", "name"], rows: 1, functions: [], policies: [] },
  },
  {
    // Only what the journal lists: 0002_not_in_journal.sql (which drops the table) never runs.
    layout: "drizzle", dir: "drizzle", accounts: "accounts",
    order: ["0000_init.sql", "0001_add_name.sql"],
    state: { relations: ["accounts"], indexes: ["accounts_email_idx", "accounts_pkey"], columns: ["id", "email", "name"], rows: 1, functions: [], policies: [] },
  },
  {
    layout: "diesel", dir: "diesel", accounts: "accounts",
    order: ["00000000000000_diesel_initial_setup/up.sql", "2024-01-01-093000_create_accounts/up.sql", "2024-01-02-093000_index_email/up.sql"],
    state: { relations: ["accounts"], indexes: ["accounts_email_idx", "accounts_pkey"], columns: ["id", "email", "updated_at"], rows: 1, functions: ["touch_updated_at"], policies: [] },
  },
  {
    layout: "goose", dir: "goose", accounts: "accounts",
    order: ["1_create_accounts.sql", "2_add_name.sql", "10_index_name.sql"],
    state: { relations: ["accounts"], indexes: ["accounts_name_idx", "accounts_pkey"], columns: ["id", "email", "name"], rows: 1, functions: ["account_label"], policies: [] },
  },
  {
    layout: "supabase", dir: "supabase", accounts: "accounts",
    order: ["20240101093000_create_accounts.sql", "20240102093000_row_level_security.sql", "20240103093000_add_name.sql"],
    state: { relations: ["accounts"], indexes: ["accounts_pkey"], columns: ["id", "email", "name"], rows: 1, functions: [], policies: ["accounts are readable"] },
  },
];

const init = (database: string, args: string[]) => runScript(SCRIPT, [...args, "--json"], { DATABASE_URL: cluster.url({ database }) });
const stepEvents = (stdout: string) => events(stdout).filter((event) => event.event === "schema");
const summary = (stdout: string) => events(stdout).find((event) => event.event === "summary");

/** A copy of a fixture folder with every file's line endings CRLF, and a BOM before each *.sql file's first byte. */
function crlfCopy(from: string): string {
  const to = join(workDir, `crlf-${++folders}`);
  cpSync(from, to, { recursive: true });
  const convert = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) convert(path);
      else if (name.endsWith(".sql")) writeFileSync(path, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(readFileSync(path, "utf8").replaceAll("\n", "\r\n"))]));
    }
  };
  convert(to);
  return to;
}

for (const entry of CASES) {
  const dir = join(FIXTURES, entry.dir);
  describe(`${entry.layout}'s layout`, () => {
    test(`is recognised and applied as ${entry.layout} applies it: its order, its up parts only, once`, async () => {
      const database = await cluster.freshDatabase();
      const run = await init(database, ["--migrations", dir]);
      expect(run.code).toBe(EXIT.ok);
      expect(run.stderr).toContain(`in ${entry.layout}'s layout`);
      expect(events(run.stdout).find((event) => event.event === "layout")).toMatchObject({ layout: entry.layout, detected: true, migrations: entry.order.length });
      expect(stepEvents(run.stdout).map((event) => [event.step, event.status])).toEqual(entry.order.map((name) => [name, "applied"]));
      expect(await databaseState(database, entry.accounts)).toEqual(entry.state);

      const again = await init(database, ["--migrations", dir]);
      expect(again.code).toBe(EXIT.ok);
      expect(summary(again.stdout)).toMatchObject({ ok: true, applied: 0, steps: entry.order.length });
      // The same folder checked out with CRLF line endings and a BOM is the same migrations.
      const crlf = await init(database, ["--migrations", crlfCopy(dir)]);
      expect(crlf.code).toBe(EXIT.ok);
      expect(summary(crlf.stdout)).toMatchObject({ ok: true, applied: 0, steps: entry.order.length });
      expect(await databaseState(database, entry.accounts)).toEqual(entry.state);
    });

    test("ten replicas at once on an empty database all exit 0, and each migration is applied once", async () => {
      const database = await cluster.freshDatabase();
      const runs = await Promise.all(Array.from({ length: 10 }, () => init(database, ["--migrations", dir, "--timeout", "60"])));
      expect(runs.map((run) => run.code)).toEqual(runs.map(() => EXIT.ok));
      const applied = runs.flatMap((run) => stepEvents(run.stdout).filter((event) => event.status === "applied").map((event) => event.step)).sort();
      expect(applied).toEqual([...entry.order].sort());
      expect(await databaseState(database, entry.accounts)).toEqual(entry.state);
    });

    test("no --migrations-format runs a down or undo part, nor changes what the folder built", async () => {
      const database = await cluster.freshDatabase();
      expect((await init(database, ["--migrations", dir])).code).toBe(EXIT.ok);
      for (const format of LAYOUT_NAMES) {
        const run = await init(database, ["--migrations", dir, "--migrations-format", format]);
        expect([EXIT.ok, EXIT.schemaFailed, EXIT.usage] as number[]).toContain(run.code);
        expect(await databaseState(database, entry.accounts)).toEqual(entry.state);
      }
    });
  });
}

describe("recognising a folder", () => {
  const folder = (files: Record<string, string>) => {
    const dir = join(workDir, `folder-${++folders}`);
    for (const [name, text] of Object.entries(files)) {
      mkdirSync(join(dir, name, ".."), { recursive: true });
      writeFileSync(join(dir, name), text);
    }
    return dir;
  };
  const plan = async (dir: string, args: string[] = []) => runScript(SCRIPT, ["--migrations", dir, "--dry-run", ...args], { DATABASE_URL: cluster.url() });

  test("two tools' layouts in one folder are refused (exit 2), naming both", async () => {
    const run = await plan(folder({ "1_a.up.sql": "select 1;", "20240101_b.sql": "-- migrate:up\nselect 1;\n" }));
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("golang-migrate ({version}_{title}.up.sql files) and dbmate");
    expect(run.stderr).toContain("--migrations-format golang-migrate|dbmate");
  });

  test("a folder in no layout is refused (exit 2), naming what it holds", async () => {
    const run = await plan(folder({ "notes.txt": "x", "data/seed.csv": "1" }));
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("holds no migrations in a layout the kit knows (found notes.txt, data/)");
  });

  test("--migrations-format names an unknown layout: exit 2 with the list", async () => {
    const run = await plan(join(FIXTURES, "goose"), ["--migrations-format", "liquibase"]);
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain(`choose one of ${LAYOUT_NAMES.join(", ")}`);
  });

  test("Flyway placeholders are refused before anything runs, naming the file and line", async () => {
    const run = await plan(folder({ "V1__a.sql": "create table a (id int);\ngrant select on a to ${reader};\n" }));
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("V1__a.sql, line 2: Flyway placeholder ${reader}");
  });

  test("Flyway: a migration mixing statements that cannot share a transaction is refused, as Flyway refuses it", async () => {
    const run = await plan(folder({ "V1__a.sql": "create table a (id int);\ncreate index concurrently a_id on a (id);\n" }));
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("which Flyway refuses too");
  });

  test("Prisma migrations written for another provider are refused (exit 2)", async () => {
    const run = await plan(folder({ "migration_lock.toml": 'provider = "mysql"\n', "20240101_init/migration.sql": "create table a (id int);" }));
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain('migration_lock.toml says provider = "mysql"');
  });

  test("a drizzle journal naming a missing file is refused (exit 2)", async () => {
    const run = await plan(folder({ "meta/_journal.json": JSON.stringify({ entries: [{ idx: 0, when: 1, tag: "0000_gone", breakpoints: true }] }), "0001_x.sql": "select 1;" }));
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("lists 0000_gone, but 0000_gone.sql is missing");
  });

  test("a plain folder holding a dbmate file is refused rather than run whole, down section included", async () => {
    const run = await plan(folder({ "001_a.sql": "-- migrate:up\ncreate table a (id int);\n-- migrate:down\ndrop table a;\n" }), ["--migrations-format", "kit"]);
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain('"-- migrate:down" opens a down section, which the kit never runs');
  });

  test("goose versions sort as numbers and dbmate's up part stops at its down section", () => {
    const goose = schemaPlan({ migrations: folder({ "10_c.sql": "-- +goose Up\nselect 10;\n", "9_b.sql": "-- +goose Up\nselect 9;\n-- +goose Down\ndrop table x;\n" }) });
    expect(goose.map((step) => step.name)).toEqual(["9_b.sql", "10_c.sql"]);
    expect(goose[0]!.script.statements.map((statement) => statement.words)).toEqual([["select"]]);
    const dbmate = schemaPlan({ migrations: folder({ "1_a.sql": "-- migrate:up\ncreate table a (id int);\n\n-- migrate:down\ndrop table a;\n" }) });
    expect(dbmate[0]!.script.statements.map((statement) => statement.words)).toEqual([["create", "table", "a"]]);
    // Lines keep the file's numbers, so an error points where the user looks.
    expect(dbmate[0]!.script.statements[0]!.line).toBe(2);
  });
});

describe("checksums", () => {
  test("CRLF line endings and a leading BOM do not change a step's checksum; LF files keep the raw SHA-256 earlier versions recorded", () => {
    const lf = Buffer.from("create table a (id int);\ninsert into a values (1);\n");
    const crlf = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(lf.toString().replaceAll("\n", "\r\n"))]);
    expect(normalizedText(crlf)).toEqual(lf);
    expect(normalizedText(lf)).toBe(lf);
    expect(flywayChecksum(crlf)).toBe(flywayChecksum(lf));
  });

  test("Flyway's checksum is CRC-32 of the file's lines as UTF-8 without their line breaks (or a BOM), as a signed 32-bit number", () => {
    // -1286909640 is zlib's CRC-32 (java.util.zip.CRC32's polynomial) of "-- caféCREATE TABLE ü (id int);SELECT 1;", computed apart from the kit.
    const text = "-- café\r\nCREATE TABLE ü (id int);\r\n\r\nSELECT 1;";
    expect(flywayChecksum(Buffer.from(text))).toBe(-1286909640);
    expect(flywayChecksum(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text.replaceAll("\r\n", "\n"))]))).toBe(-1286909640);
    expect(flywayChecksum(Buffer.from(text + "\n"))).toBe(-1286909640);
    expect(flywayChecksum(Buffer.from(text.replace("1", "2")))).not.toBe(-1286909640);
  });

  test("a ledger written by an earlier version (SHA-256 of a CRLF file's raw bytes) keeps matching while the file's bytes are unchanged", async () => {
    const database = await cluster.freshDatabase();
    const dir = join(workDir, `old-ledger-${++folders}`);
    mkdirSync(dir);
    const bytes = Buffer.from("create table old_style (id int);\r\ninsert into old_style values (1);\r\n");
    writeFileSync(join(dir, "001_old.sql"), bytes);
    await cluster.query(`create table schema_migrations (name text primary key, checksum text not null, applied_at timestamptz not null default now());
      create table old_style (id int); insert into old_style values (1);
      insert into schema_migrations (name, checksum) values ('001_old.sql', '${createHash("sha256").update(bytes).digest("hex")}')`, database);
    const run = await init(database, ["--migrations", dir]);
    expect(run.code).toBe(EXIT.ok);
    expect(summary(run.stdout)).toMatchObject({ ok: true, applied: 0, steps: 1 });
    // Its bytes changed (not only its line endings): that is an edit.
    writeFileSync(join(dir, "001_old.sql"), "create table old_style (id bigint);\n");
    const edited = await init(database, ["--migrations", dir]);
    expect(edited.code).toBe(EXIT.schemaFailed);
    expect(edited.stderr).toContain("MIGRATION_CHANGED");
  });
});

describe("Flyway's order", () => {
  test("compares versions part by part as numbers", () => {
    const versions = ["1.10", "1.2", "1", "2", "1.1", "1.2.1", "10"];
    expect(versions.sort(compareFlywayVersions)).toEqual(["1", "1.1", "1.2", "1.2.1", "1.10", "2", "10"]);
    expect(compareFlywayVersions("1.0", "1")).toBe(0);
  });

  test("a repeatable migration runs again when its checksum changes, and is recorded with its new one", async () => {
    const database = await cluster.freshDatabase();
    const dir = join(workDir, `repeatable-${++folders}`);
    cpSync(join(FIXTURES, "flyway"), dir, { recursive: true });
    expect((await init(database, ["--migrations", dir])).code).toBe(EXIT.ok);
    writeFileSync(join(dir, "R__account_names.sql"), "CREATE OR REPLACE VIEW account_names AS SELECT id, name, email FROM accounts;\n");
    const run = await init(database, ["--migrations", dir]);
    expect(run.code).toBe(EXIT.ok);
    expect(stepEvents(run.stdout).filter((event) => event.status === "applied").map((event) => event.step)).toEqual(["R__account_names.sql"]);
    expect(await cluster.query(`select count(*)::int as n from init_database_migrations where name = 'R__account_names.sql'`, database)).toEqual([{ n: 1 }]);
    expect(await cluster.query(`select json_agg(attname order by attnum) as columns from pg_attribute where attrelid = 'account_names'::regclass`, database))
      .toEqual([{ columns: ["id", "name", "email"] }]);
  });
});

describe("a step sent as one query (as dbmate sends a file)", () => {
  const failing = async (text: string) => {
    const database = await cluster.freshDatabase();
    const dir = join(workDir, `one-query-${++folders}`);
    mkdirSync(dir);
    writeFileSync(join(dir, "001_a.sql"), text);
    const run = await init(database, ["--migrations", dir]);
    return { run, tables: await cluster.query(`select to_regclass('a') as a`, database) };
  };

  test("an error the server places is reported at its statement's line and column, and nothing of the step stays", async () => {
    const { run, tables } = await failing("create table a (id int);\ninsert into a values (1);\n\nselect nosuch from a;\n");
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(events(run.stdout).find((event) => event.event === "summary")).toMatchObject({ code: "42703", where: "line 4, column 8" });
    expect(tables).toEqual([{ a: null }]);
  });

  test("several statements, each within --command-timeout but longer together than one answer may take, are not cut off by the client", async () => {
    const database = await cluster.freshDatabase();
    const dir = join(workDir, `one-query-slow-${++folders}`);
    mkdirSync(dir);
    // --command-timeout 1: each statement may take 1 s on the server, the client waits 3 s for an answer; together they take 4 s.
    writeFileSync(join(dir, "001_slow.sql"), "create table slow (id int);\n" + "select pg_sleep(0.8);\n".repeat(5));
    const run = await init(database, ["--migrations", dir, "--command-timeout", "1"]);
    expect(run.code).toBe(EXIT.ok);
    expect(await cluster.query(`select to_regclass('slow') is not null as made`, database)).toEqual([{ made: true }]);
  });

  test("an error without a position is found by running the step again statement by statement, and named at its line", async () => {
    const { run, tables } = await failing("create table a (id int primary key);\ninsert into a values (1);\ninsert into a values (1);\n");
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(events(run.stdout).find((event) => event.event === "summary")).toMatchObject({ code: "23505", where: "line 3" });
    expect(tables).toEqual([{ a: null }]);
  });
});

describe("Flyway's per-script configuration", () => {
  test("executeInTransaction=false in V1__x.sql.conf runs the migration outside a transaction; mixed=true allows mixing", () => {
    const dir = join(workDir, `flyway-conf-${++folders}`);
    mkdirSync(dir);
    writeFileSync(join(dir, "V1__a.sql"), "create table a (id int);\n");
    writeFileSync(join(dir, "V1__a.sql.conf"), "executeInTransaction=false\n");
    writeFileSync(join(dir, "V2__b.sql"), "create table b (id int);\ncreate index concurrently b_id on b (id);\n");
    writeFileSync(join(dir, "V2__b.sql.conf"), "mixed=true\n");
    expect(schemaPlan({ migrations: dir }).map((step) => [step.name, step.script.noTransaction])).toEqual([["V1__a.sql", true], ["V2__b.sql", true]]);
  });
});
