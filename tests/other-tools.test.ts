/**
 * Databases other tools migrated: the real dbmate and drizzle-kit (dev dependencies) and the
 * kit take turns on one folder, each seeing the other's work as applied; the histories of the
 * tools that do not run here (golang-migrate, Flyway, Prisma, Diesel, goose, Supabase), made as
 * their documentation says they make them, count as applied and are never changed; a failed
 * state stops the run naming the tool's repair command; the kit never keeps its ledger in
 * another tool's table.
 */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { EXIT, flywayChecksum } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { cleanEnv, events, ROOT, runScript, useCluster } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const FIXTURES = join(ROOT, "tests", "fixtures");
const DBMATE = join(ROOT, "node_modules", "@dbmate", "linux-x64", "bin", "dbmate");
const DRIZZLE_KIT = join(ROOT, "node_modules", ".bin", "drizzle-kit");

let cluster: Cluster;
let workDir: string;
let folders = 0;
useCluster({}, (made) => ({ cluster, dir: workDir } = made));

const init = (database: string, args: string[]) => runScript(SCRIPT, [...args, "--json"], { DATABASE_URL: cluster.url({ database }) });
const appliedSteps = (stdout: string) => events(stdout).filter((event) => event.event === "schema" && event.status === "applied").map((event) => event.step);

/** Run a tool's real binary with a clean environment; fails the test if it hangs. */
async function tool(command: string[], env: Record<string, string>): Promise<{ code: number; out: string }> {
  const child = Bun.spawn(command, { cwd: ROOT, env: cleanEnv(env), stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(killer);
  return { code, out: stdout + stderr };
}

/** A copy of a fixture folder, `keep` deciding which of its files stay. */
function copyOf(fixture: string, keep: (path: string) => boolean = () => true): string {
  const to = join(workDir, `copy-${++folders}`);
  cpSync(join(FIXTURES, fixture), to, { recursive: true, filter: (path) => keep(path) });
  return to;
}

const snapshot = (database: string, table: string) => cluster.query(`select to_jsonb(t) as row from ${table} t order by 1::text`, database);

describe("with the real dbmate", () => {
  const FILES = ["20240101093000_create_accounts.sql", "20240102093000_index_email.sql", "20240103093000_sessions.sql"];
  const dbmate = (database: string, dir: string, ...args: string[]) =>
    tool([DBMATE, "--url", `${cluster.url({ database })}?sslmode=disable`, "--migrations-dir", join(dir, "db", "migrations"), "--no-dump-schema", ...args], {});
  const versions = async (database: string) => (await cluster.query<{ version: string }>(`select version from schema_migrations order by version`, database)).map((row) => row.version);

  test("dbmate applies the first migration, the kit the rest, and dbmate then finds nothing pending", async () => {
    const database = await cluster.freshDatabase();
    const first = await dbmate(database, copyOf("dbmate", (path) => !path.endsWith(".sql") || path.endsWith(FILES[0]!)), "up");
    expect(first.code).toBe(0);
    const run = await init(database, ["--migrations", join(FIXTURES, "dbmate")]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(FILES.slice(1));
    expect(await versions(database)).toEqual(FILES.map((file) => file.split("_")[0]!));
    const status = await dbmate(database, join(FIXTURES, "dbmate"), "status", "--exit-code");
    expect(status.out).toContain("Pending: 0");
    expect(status.code).toBe(0);
    const up = await dbmate(database, join(FIXTURES, "dbmate"), "up");
    expect(up.code).toBe(0);
    expect(up.out).not.toContain("Applying");
    expect(await cluster.query(`select count(*)::int as n from accounts`, database)).toEqual([{ n: 1 }]);
    // The kit kept no ledger of its own beside dbmate's.
    expect(await cluster.query(`select to_regclass('init_database_migrations') as ledger`, database)).toEqual([{ ledger: null }]);
  });

  test("the kit applies the first two migrations, dbmate only the third, and its status shows all three applied", async () => {
    const database = await cluster.freshDatabase();
    const run = await init(database, ["--migrations", copyOf("dbmate", (path) => !path.endsWith(FILES[2]!))]);
    expect(run.code).toBe(EXIT.ok);
    const up = await dbmate(database, join(FIXTURES, "dbmate"), "up");
    expect(up.code).toBe(0);
    expect(up.out.match(/Applying: \S+/g)).toEqual([`Applying: ${FILES[2]}`]);
    const status = await dbmate(database, join(FIXTURES, "dbmate"), "status", "--exit-code");
    expect(status.out).toContain("Applied: 3");
    expect(status.code).toBe(0);
    expect(await versions(database)).toEqual(FILES.map((file) => file.split("_")[0]!));
    const again = await init(database, ["--migrations", join(FIXTURES, "dbmate")]);
    expect(events(again.stdout).find((event) => event.event === "summary")).toMatchObject({ ok: true, applied: 0 });
  });

  test("the kit applies a folder in dbmate's order, files by name (10_ before 1_ and 2_)", async () => {
    const dir = join(workDir, `dbmate-order-${++folders}`, "db", "migrations");
    mkdirSync(dir, { recursive: true });
    for (const version of ["1", "10", "2"]) {
      writeFileSync(join(dir, `${version}_step.sql`), `-- migrate:up\ncreate table step_${version} (id int);\n-- migrate:down\ndrop table step_${version};\n`);
    }
    const [byDbmate, byKit] = [await cluster.freshDatabase(), await cluster.freshDatabase()];
    const up = await dbmate(byDbmate, join(dir, "..", ".."), "up");
    expect(up.code).toBe(0);
    const run = await init(byKit, ["--migrations", dir]);
    expect(appliedSteps(run.stdout)).toEqual(up.out.match(/(?<=Applying: )\S+/g)!);
  });

  test("two dbmate files with one version are refused before anything runs, as dbmate fails on them, instead of the second counted as applied", async () => {
    const dir = join(workDir, `dbmate-twins-${++folders}`, "db", "migrations");
    mkdirSync(dir, { recursive: true });
    for (const name of ["a", "b"]) writeFileSync(join(dir, `001_${name}.sql`), `-- migrate:up\ncreate table twin_${name} (id int);\n-- migrate:down\ndrop table twin_${name};\n`);
    const [byDbmate, byKit] = [await cluster.freshDatabase(), await cluster.freshDatabase()];
    expect((await dbmate(byDbmate, join(dir, "..", ".."), "up")).code).not.toBe(0);
    const run = await init(byKit, ["--migrations", dir]);
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("001_a.sql and 001_b.sql have the same version 001");
    expect(await cluster.query(`select to_regclass('twin_a') as a, to_regclass('schema_migrations') as history`, byKit)).toEqual([{ a: null, history: null }]);
  });

  test("the connectivity suite's Schema Validation counts what dbmate's history records", async () => {
    const database = await cluster.freshDatabase();
    expect((await dbmate(database, join(FIXTURES, "dbmate"), "up")).code).toBe(0);
    const env = { DATABASE_URL: cluster.url({ database }) };
    const passing = await runScript("test-db-connectivity.ts", ["--only", "schema", "--migrations", join(FIXTURES, "dbmate")], env);
    expect(passing.code).toBe(0);
    expect(passing.stdout).toContain("3 steps recorded in schema_migrations");
    await cluster.query(`delete from schema_migrations where version = '20240103093000'`, database);
    const failing = await runScript("test-db-connectivity.ts", ["--only", "schema", "--migrations", join(FIXTURES, "dbmate")], env);
    expect(failing.code).toBe(1);
    expect(failing.stdout).toContain(`not applied or changed since: ${FILES[2]}`);
  });

  test("a history dbmate keeps under another name (--migrations-table) is read and written with --history-table, and dbmate then finds nothing pending", async () => {
    const database = await cluster.freshDatabase();
    // Mixed case, as a project may name it: dbmate quotes the name, and so must the kit.
    const table = "dbmate.Schema_Migrations";
    const quoted = `"dbmate"."Schema_Migrations"`;
    const first = await dbmate(database, copyOf("dbmate", (path) => !path.endsWith(".sql") || path.endsWith(FILES[0]!)), "--migrations-table", table, "up");
    expect(first.code).toBe(0);
    // Without the flag the kit sees no history, and the first migration fails on what dbmate made: nothing else runs.
    const unnamed = await init(database, ["--migrations", join(FIXTURES, "dbmate")]);
    expect(unnamed.code).toBe(EXIT.schemaFailed);
    expect(appliedSteps(unnamed.stdout)).toEqual([]);
    const run = await init(database, ["--migrations", join(FIXTURES, "dbmate"), "--history-table", table]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(FILES.slice(1));
    expect(events(run.stdout).find((event) => event.event === "layout")).toMatchObject({ history: quoted, recorded_in: quoted });
    expect((await cluster.query<{ version: string }>(`select version from ${quoted} order by version`, database)).map((row) => row.version)).toEqual(FILES.map((file) => file.split("_")[0]!));
    const status = await dbmate(database, join(FIXTURES, "dbmate"), "--migrations-table", table, "status", "--exit-code");
    expect(status.out).toContain("Pending: 0");
    expect(status.code).toBe(0);
    expect(await cluster.query(`select to_regclass('public.schema_migrations') as unnamed`, database)).toEqual([{ unnamed: null }]);
    const suite = await runScript("test-db-connectivity.ts", ["--only", "schema", "--migrations", join(FIXTURES, "dbmate"), "--history-table", table], { DATABASE_URL: cluster.url({ database }) });
    expect(suite.code).toBe(0);
    expect(suite.stdout).toContain(`3 steps recorded in ${quoted}`);
  });

  test("on an empty database a history named in a schema of its own is made with its schema, as dbmate makes it, and dbmate then finds nothing pending", async () => {
    const database = await cluster.freshDatabase();
    const run = await init(database, ["--migrations", join(FIXTURES, "dbmate"), "--history-table", "dbmate_history.schema_migrations"]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(FILES);
    const status = await dbmate(database, join(FIXTURES, "dbmate"), "--migrations-table", "dbmate_history.schema_migrations", "status", "--exit-code");
    expect(status.out).toContain("Pending: 0");
    expect(status.code).toBe(0);
  });

  test("--history-table is refused, in one line and exit 2, without --migrations, for the kit's own layout, and for a name that is not a table's", async () => {
    const database = await cluster.freshDatabase();
    const plain = join(workDir, `plain-${++folders}`);
    mkdirSync(plain);
    writeFileSync(join(plain, "001_a.sql"), "create table a (id int);\n");
    for (const [args, message] of [
      [["--history-table", "x"], "--history-table names another tool's history, which only --migrations DIR reads"],
      [["--migrations", plain, "--history-table", "x"], "--history-table: kit's layout has no tool history to read"],
      [["--migrations", join(FIXTURES, "dbmate"), "--history-table", "a;drop table b"], `--history-table "a;drop table b" must be a plain table name, optionally schema-qualified`],
    ] as const) {
      const run = await runScript(SCRIPT, [...args], { DATABASE_URL: cluster.url({ database }) });
      expect(run.code).toBe(EXIT.usage);
      expect(run.stderr).toContain(`error: ${message}`);
      expect(run.stderr.split("\n").filter((line) => line.startsWith("error:"))).toHaveLength(1);
    }
  });

  test("a schema_migrations table dbmate made is created by the kit exactly as dbmate creates it", async () => {
    const [byDbmate, byKit] = [await cluster.freshDatabase(), await cluster.freshDatabase()];
    expect((await dbmate(byDbmate, join(FIXTURES, "dbmate"), "up")).code).toBe(0);
    expect((await init(byKit, ["--migrations", join(FIXTURES, "dbmate")])).code).toBe(EXIT.ok);
    const shape = (database: string) => cluster.query(`select a.attname, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull,
        (select array_agg(pg_get_constraintdef(c.oid)) from pg_constraint c where c.conrelid = a.attrelid) as constraints
      from pg_attribute a where a.attrelid = 'schema_migrations'::regclass and a.attnum > 0 order by a.attnum`, database);
    expect(await shape(byKit)).toEqual(await shape(byDbmate));
  });
});

describe("the kit's own ledger where the tool's history is expected", () => {
  const PSQL = "/usr/lib/postgresql/15/bin/psql";
  const KIT_LEDGER = "create table schema_migrations (name text primary key, checksum text not null, applied_at timestamptz not null default now())";
  const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");
  /** The fix's psql command, run as printed, with the real psql. */
  const runFix = async (stderr: string, database: string) => {
    const command = /psql "\$DATABASE_URL" -1 -c "([^"]+)"/.exec(stderr);
    expect(command).not.toBeNull();
    return tool([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-c", command![1]!, cluster.url({ database })], {});
  };

  test("dbmate's folder on a schema_migrations the kit wrote reading it as plain files: named, exit 1, and its statements carry it over so that dbmate finds nothing pending", async () => {
    const database = await cluster.freshDatabase();
    const dir = copyOf("dbmate");
    const first = join(dir, "db", "migrations", "20240101093000_create_accounts.sql");
    // A file with an empty down part, as a run that read the folder as plain files applied it: the file whole.
    writeFileSync(first, readFileSync(first, "utf8").replace(/-- migrate:down[^]*$/, "-- migrate:down\n"));
    await cluster.query(`${KIT_LEDGER}; ${readFileSync(first, "utf8")}; insert into schema_migrations (name, checksum) values ('20240101093000_create_accounts.sql', '${sha256(first)}')`, database);
    const before = await snapshot(database, "schema_migrations");

    const clash = await init(database, ["--migrations", dir]);
    expect(clash.code).toBe(EXIT.schemaFailed);
    expect(events(clash.stdout).find((event) => event.event === "summary")).toMatchObject({ code: "LEDGER_CLASH" });
    expect(clash.stderr).toContain("schema_migrations is the kit's own ledger (name, checksum), not dbmate's history: a run that read this folder as plain *.sql files wrote its 1 row");
    expect(clash.stderr).not.toContain("down part included");
    expect(await snapshot(database, "schema_migrations")).toEqual(before);
    expect((await init(database, ["--migrations", dir, "--check"])).code).toBe(EXIT.schemaFailed);

    const fix = await runFix(clash.stderr, database);
    expect(fix).toMatchObject({ code: 0 });
    const run = await init(database, ["--migrations", dir]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(["20240102093000_index_email.sql", "20240103093000_sessions.sql"]);
    expect(await cluster.query(`select name from init_database_plain_ledger`, database)).toEqual([{ name: "20240101093000_create_accounts.sql" }]);
    expect(await cluster.query(`select count(*)::int as n from accounts`, database)).toEqual([{ n: 1 }]);
    const dbmate = (...args: string[]) => tool([DBMATE, "--url", `${cluster.url({ database })}?sslmode=disable`, "--migrations-dir", join(dir, "db", "migrations"), "--no-dump-schema", ...args], {});
    const status = await dbmate("status", "--exit-code");
    expect(status.out).toContain("Applied: 3");
    expect(status.out).toContain("Pending: 0");
    expect(status.code).toBe(0);
  });

  test("golang-migrate's folder on the kit's ledger: the rename it gives makes that the ledger the kit keeps beside golang-migrate, and nothing runs twice", async () => {
    const database = await cluster.freshDatabase();
    const file = "1_create_accounts.up.sql";
    await cluster.query(`${KIT_LEDGER}; ${read(`golang-migrate/${file}`)}; insert into schema_migrations (name, checksum) values ('${file}', '${sha256(join(FIXTURES, "golang-migrate", file))}')`, database);
    const clash = await init(database, ["--migrations", join(FIXTURES, "golang-migrate")]);
    expect(clash.code).toBe(EXIT.schemaFailed);
    expect(clash.stderr).toContain("ALTER TABLE schema_migrations RENAME TO init_database_migrations");
    expect((await runFix(clash.stderr, database)).code).toBe(0);
    const run = await init(database, ["--migrations", join(FIXTURES, "golang-migrate")]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(["2_add_name.up.sql", "10_index_name.up.sql", "100_audit.up.sql"]);
  });

  test("a ledger whose files ran whole, down part included, or that records files the folder does not hold, is named as such and left as it was", async () => {
    const database = await cluster.freshDatabase();
    const first = join(FIXTURES, "dbmate", "db", "migrations", "20240101093000_create_accounts.sql");
    await cluster.query(`${KIT_LEDGER}; insert into schema_migrations (name, checksum) values ('20240101093000_create_accounts.sql', '${sha256(first)}')`, database);
    const downRan = await init(database, ["--migrations", join(FIXTURES, "dbmate")]);
    expect(downRan.code).toBe(EXIT.schemaFailed);
    expect(downRan.stderr).toContain("it applied 20240101093000_create_accounts.sql whole, down part included, so what that down part dropped is missing");
    expect(downRan.stderr).toContain("first rebuild what that down part dropped");
    await cluster.query(`insert into schema_migrations (name, checksum) values ('0001_other.sql', 'x')`, database);
    const before = await snapshot(database, "schema_migrations");
    const other = await init(database, ["--migrations", join(FIXTURES, "dbmate")]);
    expect(other.code).toBe(EXIT.schemaFailed);
    expect(other.stderr).toContain("1 of them matches no file of this folder as it is (first: 0001_other.sql)");
    expect(other.stderr).not.toContain("psql");
    expect(await snapshot(database, "schema_migrations")).toEqual(before);
    expect(await cluster.query(`select to_regclass('accounts') as made`, database)).toEqual([{ made: null }]);
  });
});

describe("with the real drizzle-kit", () => {
  const JOURNAL = JSON.parse(readFileSync(join(FIXTURES, "drizzle", "meta", "_journal.json"), "utf8"));
  const FILES = ["0000_init.sql", "0001_add_name.sql"];
  /** drizzle-kit migrate on `dir`, configured as a project's drizzle.config would be. */
  const drizzleKit = (database: string, dir: string, migrations?: { table: string; schema: string }) => {
    const config = join(workDir, `drizzle-${++folders}.config.mjs`);
    writeFileSync(config, `export default { dialect: "postgresql", out: ${JSON.stringify(dir)}, dbCredentials: { url: process.env.DATABASE_URL }, migrations: ${JSON.stringify(migrations ?? {})} };\n`);
    return tool([DRIZZLE_KIT, "migrate", "--config", config], { DATABASE_URL: cluster.url({ database }) });
  };
  /** The folder with a journal that lists only its first `count` entries. */
  const firstEntries = (count: number) => {
    const dir = copyOf("drizzle");
    writeFileSync(join(dir, "meta", "_journal.json"), JSON.stringify({ ...JOURNAL, entries: JOURNAL.entries.slice(0, count) }, null, 2));
    return dir;
  };
  const journalRows = (database: string) => cluster.query(`select hash, created_at::text as created_at from drizzle.__drizzle_migrations order by id`, database);
  const expectedRows = FILES.map((file, index) => ({
    hash: createHash("sha256").update(readFileSync(join(FIXTURES, "drizzle", file))).digest("hex"),
    created_at: String(JOURNAL.entries[index].when),
  }));

  test("drizzle-kit applies the first migration, the kit the second, recorded as drizzle records it; drizzle-kit then applies nothing", async () => {
    const database = await cluster.freshDatabase();
    const first = await drizzleKit(database, firstEntries(1));
    expect(first.code).toBe(0);
    const run = await init(database, ["--migrations", join(FIXTURES, "drizzle")]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual([FILES[1]]);
    expect(await journalRows(database)).toEqual(expectedRows);
    // drizzle-kit re-running anything would fail: 0001 adds a column that now exists.
    const again = await drizzleKit(database, join(FIXTURES, "drizzle"));
    expect(again.code).toBe(0);
    expect(await journalRows(database)).toEqual(expectedRows);
  });

  test("the kit applies the first migration, drizzle-kit the second, and the journal table holds both once", async () => {
    const database = await cluster.freshDatabase();
    const run = await init(database, ["--migrations", firstEntries(1)]);
    expect(run.code).toBe(EXIT.ok);
    const rest = await drizzleKit(database, join(FIXTURES, "drizzle"));
    expect(rest.code).toBe(0);
    expect(await journalRows(database)).toEqual(expectedRows);
    expect(await cluster.query(`select json_agg(attname order by attnum) as columns from pg_attribute where attrelid = 'accounts'::regclass and attnum > 0`, database))
      .toEqual([{ columns: ["id", "email", "name"] }]);
  });
  test("a journal table drizzle keeps under another name and schema (migrationsTable, migrationsSchema): the kit makes and writes it with --history-table, drizzle-kit then applies only the rest", async () => {
    const database = await cluster.freshDatabase();
    const run = await init(database, ["--migrations", firstEntries(1), "--history-table", "App_Meta.user"]);
    expect(run.code).toBe(EXIT.ok);
    const rest = await drizzleKit(database, join(FIXTURES, "drizzle"), { table: "user", schema: "App_Meta" });
    expect(rest.code).toBe(0);
    expect(await cluster.query(`select hash, created_at::text as created_at from "App_Meta"."user" order by id`, database)).toEqual(expectedRows);
    expect(await cluster.query(`select to_regnamespace('drizzle') as schema`, database)).toEqual([{ schema: null }]);
  });
});

/** A tool's history made as its documentation describes it, after the tool applied the first migration (its SQL run here). */
interface History {
  layout: string;
  dir: string;
  /** The history table and its rows, as the tool makes them; `first` is the SQL of what those rows record. */
  history: string;
  first: string;
  table: string;
  /** What the kit then applies. */
  rest: string[];
  /** The same history with a failed or dirty state, and what the error names. */
  failed?: string;
  repair?: string;
}

const read = (path: string) => readFileSync(join(FIXTURES, path), "utf8");

/** Supabase's history table as its documentation describes it (the CLI keys it by version). */
const SUPABASE_HISTORY = "create schema supabase_migrations; create table supabase_migrations.schema_migrations (version text primary key, statements text[], name text);";

const HISTORIES: History[] = [
  {
    layout: "golang-migrate", dir: "golang-migrate", table: "schema_migrations",
    history: `create table schema_migrations (version bigint not null primary key, dirty boolean not null); insert into schema_migrations values (2, false)`,
    first: read("golang-migrate/1_create_accounts.up.sql") + read("golang-migrate/2_add_name.up.sql"),
    rest: ["10_index_name.up.sql", "100_audit.up.sql"],
    failed: `update schema_migrations set dirty = true`, repair: "dirty at version 2",
  },
  {
    layout: "flyway", dir: "flyway", table: "flyway_schema_history",
    history: `create table flyway_schema_history (installed_rank integer not null primary key, version varchar(50), description varchar(200) not null,
        type varchar(20) not null, script varchar(1000) not null, checksum integer, installed_by varchar(100) not null,
        installed_on timestamp not null default now(), execution_time integer not null, success boolean not null);
      insert into flyway_schema_history values (1, '1', 'create accounts', 'SQL', 'V1__create_accounts.sql', 1, 'app', now(), 5, true),
        (2, '1.1', 'add name', 'SQL', 'V1_1__add_name.sql', 2, 'app', now(), 5, true)`,
    first: read("flyway/V1__create_accounts.sql") + read("flyway/V1_1__add_name.sql"),
    rest: ["V1_2__index_email.sql", "V1_10__rename_index.sql", "R__account_names.sql"],
    failed: `update flyway_schema_history set success = false where version = '1.1'`, repair: "`flyway repair`",
  },
  {
    layout: "prisma", dir: "prisma/migrations", table: "_prisma_migrations",
    history: `create table _prisma_migrations (id varchar(36) primary key, checksum varchar(64) not null, finished_at timestamptz,
        migration_name varchar(255) not null, logs text, rolled_back_at timestamptz, started_at timestamptz not null default now(),
        applied_steps_count integer not null default 0);
      insert into _prisma_migrations values ('0b9c6a3e-0000-4000-8000-000000000001', 'x', now(), '20240101093000_init', null, null, now(), 1)`,
    first: read("prisma/migrations/20240101093000_init/migration.sql"),
    rest: ["20240102093000_add_name/migration.sql", "20240103093000_index_email/migration.sql"],
    failed: `update _prisma_migrations set finished_at = null`, repair: "`prisma migrate resolve --rolled-back 20240101093000_init`",
  },
  {
    layout: "diesel", dir: "diesel", table: "__diesel_schema_migrations",
    history: `create table __diesel_schema_migrations (version varchar(50) primary key not null, run_on timestamp not null default current_timestamp);
      insert into __diesel_schema_migrations (version) values ('00000000000000'), ('20240101093000')`,
    first: read("diesel/migrations/00000000000000_diesel_initial_setup/up.sql") + read("diesel/migrations/2024-01-01-093000_create_accounts/up.sql"),
    rest: ["2024-01-02-093000_index_email/up.sql"],
  },
  {
    layout: "goose", dir: "goose", table: "goose_db_version",
    history: `create table goose_db_version (id serial primary key, version_id bigint not null, is_applied boolean not null, tstamp timestamp default now());
      insert into goose_db_version (version_id, is_applied) values (0, true), (1, true)`,
    first: `CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL); INSERT INTO accounts (id, email) VALUES (1, 'first@example.com');`,
    rest: ["2_add_name.sql", "10_index_name.sql"],
  },
  {
    layout: "supabase", dir: "supabase", table: "supabase_migrations.schema_migrations",
    history: `${SUPABASE_HISTORY}
      insert into supabase_migrations.schema_migrations values ('20240101093000', array['create table ...'], 'create_accounts')`,
    first: read("supabase/supabase/migrations/20240101093000_create_accounts.sql"),
    rest: ["20240102093000_row_level_security.sql", "20240103093000_add_name.sql"],
  },
];

for (const entry of HISTORIES) {
  describe(`a database ${entry.layout} migrated`, () => {
    test(`what ${entry.table} records counts as applied, the rest is applied once, and ${entry.table} is left as it was`, async () => {
      const database = await cluster.freshDatabase();
      await cluster.query(`${entry.history}; ${entry.first}`, database);
      const before = await snapshot(database, entry.table);
      const run = await init(database, ["--migrations", join(FIXTURES, entry.dir)]);
      expect(run.code).toBe(EXIT.ok);
      expect(run.stderr).toContain(`reads ${entry.table}, records in init_database_migrations`);
      expect(appliedSteps(run.stdout)).toEqual(entry.rest);
      expect(await snapshot(database, entry.table)).toEqual(before);
      expect((await cluster.query<{ name: string }>(`select name from init_database_migrations order by applied_at, name`, database)).map((row) => row.name).sort())
        .toEqual([...entry.rest].sort());
      const again = await init(database, ["--migrations", join(FIXTURES, entry.dir)]);
      expect(events(again.stdout).find((event) => event.event === "summary")).toMatchObject({ ok: true, applied: 0 });
      expect(await cluster.query(`select count(*)::int as n from ${entry.dir.startsWith("prisma") ? '"Account"' : "accounts"}`, database)).toEqual([{ n: 1 }]);
    });

    if (entry.failed) {
      test(`a failed state in ${entry.table} stops the run (exit 1) naming ${entry.layout}'s repair, before anything runs`, async () => {
        const database = await cluster.freshDatabase();
        await cluster.query(`${entry.history}; ${entry.first}; ${entry.failed}`, database);
        const before = await snapshot(database, entry.table);
        const run = await init(database, ["--migrations", join(FIXTURES, entry.dir)]);
        expect(run.code).toBe(EXIT.schemaFailed);
        expect(run.stderr).toContain(entry.repair!);
        expect(events(run.stdout).find((event) => event.event === "summary")).toMatchObject({ code: "HISTORY_FAILED" });
        expect(await snapshot(database, entry.table)).toEqual(before);
        expect(await cluster.query(`select to_regclass('init_database_migrations') as ledger`, database)).toEqual([{ ledger: null }]);
      });
    }
  });
}

describe("Flyway's checksum", () => {
  test("a repeatable that Flyway recorded with the file's checksum is not run again; one recorded with another is", async () => {
    const database = await cluster.freshDatabase();
    const all = ["V1__create_accounts.sql", "V1_1__add_name.sql", "V1_2__index_email.sql", "V1_10__rename_index.sql", "R__account_names.sql"];
    await cluster.query(`create table flyway_schema_history (installed_rank integer not null primary key, version varchar(50), description varchar(200) not null,
        type varchar(20) not null, script varchar(1000) not null, checksum integer, installed_by varchar(100) not null,
        installed_on timestamp not null default now(), execution_time integer not null, success boolean not null)`, database);
    for (const [index, script] of all.entries()) {
      await cluster.query(read(`flyway/${script}`), database);
      const version = script.startsWith("R") ? null : script.slice(1, script.indexOf("__")).replaceAll("_", ".");
      await cluster.query(`insert into flyway_schema_history values (${index + 1}, ${version === null ? "null" : `'${version}'`}, 'x', 'SQL', '${script}',
        ${flywayChecksum(readFileSync(join(FIXTURES, "flyway", script)))}, 'app', now(), 1, true)`, database);
    }
    const run = await init(database, ["--migrations", join(FIXTURES, "flyway")]);
    expect(events(run.stdout).find((event) => event.event === "summary")).toMatchObject({ ok: true, applied: 0 });
    await cluster.query(`update flyway_schema_history set checksum = checksum + 1 where script like 'R%'`, database);
    const changed = await init(database, ["--migrations", join(FIXTURES, "flyway")]);
    expect(appliedSteps(changed.stdout)).toEqual(["R__account_names.sql"]);
  });
});

test("two Supabase files with one version are refused before anything runs, instead of the second counted as applied once its history records the version", async () => {
  const dir = join(workDir, `supabase-twins-${++folders}`, "supabase", "migrations");
  mkdirSync(dir, { recursive: true });
  for (const name of ["a", "b"]) writeFileSync(join(dir, `20240101093000_${name}.sql`), `create table twin_${name} (id int);\n`);
  const database = await cluster.freshDatabase();
  // Its history records the version: the second file would never run.
  await cluster.query(`${SUPABASE_HISTORY}
    insert into supabase_migrations.schema_migrations values ('20240101093000', array['create table twin_a (id int)'], 'a'); create table twin_a (id int)`, database);
  const run = await init(database, ["--migrations", dir]);
  expect(run.code).toBe(EXIT.usage);
  expect(run.stderr).toContain("20240101093000_a.sql and 20240101093000_b.sql have the same version 20240101093000");
  expect(await cluster.query(`select to_regclass('twin_b') as b`, database)).toEqual([{ b: null }]);
});

describe("the kit's ledger is never another tool's table", () => {
  const plain = () => {
    const dir = join(workDir, `plain-${++folders}`);
    cpSync(join(FIXTURES, "supabase", "supabase", "migrations"), dir, { recursive: true });
    return dir;
  };
  const SHAPES = [
    { owner: "golang-migrate", create: "create table schema_migrations (version bigint not null primary key, dirty boolean not null); insert into schema_migrations values (3, false)", named: "the history of golang-migrate" },
    { owner: "dbmate", create: "create table schema_migrations (version varchar primary key); insert into schema_migrations values ('20240101093000')", named: "the history of dbmate (or Rails)" },
    { owner: "unknown", create: "create table schema_migrations (id integer, applied text)", named: "it has the columns id integer, applied text, a shape the kit does not know" },
  ];
  for (const shape of SHAPES) {
    test(`a schema_migrations of ${shape.owner === "unknown" ? "an unknown shape" : shape.owner} is named and left alone, and --ledger-table puts the ledger beside it`, async () => {
      const database = await cluster.freshDatabase();
      await cluster.query(shape.create, database);
      const before = await snapshot(database, "schema_migrations");
      const dir = plain();
      const run = await init(database, ["--migrations", dir]);
      expect(run.code).toBe(EXIT.schemaFailed);
      expect(run.stderr).toContain(shape.named);
      expect(run.stderr).toContain("--ledger-table init_database_migrations");
      expect(events(run.stdout).find((event) => event.event === "summary")).toMatchObject({ code: "LEDGER_CLASH" });
      expect(await cluster.query(`select to_regclass('accounts') as made`, database)).toEqual([{ made: null }]);
      const beside = await init(database, ["--migrations", dir, "--ledger-table", "init_database_migrations"]);
      expect(beside.code).toBe(EXIT.ok);
      expect(await snapshot(database, "schema_migrations")).toEqual(before);
    });
  }

  test("on an empty database golang-migrate's schema_migrations is there, empty, before the first migration, as golang-migrate makes it: a migration that alters it applies", async () => {
    const database = await cluster.freshDatabase();
    const dir = copyOf("golang-migrate");
    writeFileSync(join(dir, "200_data_version.up.sql"), "ALTER TABLE schema_migrations ADD COLUMN data_version int;\n");
    writeFileSync(join(dir, "200_data_version.down.sql"), "ALTER TABLE schema_migrations DROP COLUMN data_version;\n");
    const run = await init(database, ["--migrations", dir]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(["1_create_accounts.up.sql", "2_add_name.up.sql", "10_index_name.up.sql", "100_audit.up.sql", "200_data_version.up.sql"]);
    expect(await cluster.query(`select json_agg(attname order by attnum) as columns, (select count(*)::int from schema_migrations) as rows
      from pg_attribute where attrelid = 'schema_migrations'::regclass and attnum > 0`, database)).toEqual([{ columns: ["version", "dirty", "data_version"], rows: 0 }]);
    const again = await init(database, ["--migrations", dir]);
    expect(events(again.stdout).find((event) => event.event === "summary")).toMatchObject({ ok: true, applied: 0 });
  });

  test("a migration that changes the tool's own history table changes that table, not the kit's ledger", async () => {
    const database = await cluster.freshDatabase();
    const dir = copyOf("golang-migrate");
    writeFileSync(join(dir, "200_grant.up.sql"), "ALTER TABLE schema_migrations ADD COLUMN note text;\n");
    writeFileSync(join(dir, "200_grant.down.sql"), "ALTER TABLE schema_migrations DROP COLUMN note;\n");
    await cluster.query(`create table schema_migrations (version bigint not null primary key, dirty boolean not null); insert into schema_migrations values (100, false);
      ${read("golang-migrate/1_create_accounts.up.sql")} ${read("golang-migrate/2_add_name.up.sql")}
      create index accounts_name_idx on accounts (name); create table audit (account_id bigint not null references accounts (id), note text not null)`, database);
    const run = await init(database, ["--migrations", dir]);
    expect(run.code).toBe(EXIT.ok);
    expect(appliedSteps(run.stdout)).toEqual(["200_grant.up.sql"]);
    expect(await cluster.query(`select json_agg(attname order by attnum) as columns from pg_attribute where attrelid = 'schema_migrations'::regclass and attnum > 0`, database))
      .toEqual([{ columns: ["version", "dirty", "note"] }]);
    rmSync(dir, { recursive: true });
  });
});
