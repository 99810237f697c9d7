/**
 * Schema files as people really have them: the psql-script reader, real pg_dump output, steps
 * outside a transaction, lock timeouts with retries, and errors that point into the file.
 * Dumps come from Debian's postgresql-client-15 (tests/system-tools.sh installs it).
 */
import { describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { EXIT, NO_TRANSACTION_MARKER, readScript, SchemaError, statementLocation } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { PgBouncer } from "./pgbouncer.ts";
import { cleanEnv, events, expectNoSecret, ROOT, runScript, useCluster } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "scripts-Pa55#word";
const PG15 = "/usr/lib/postgresql/15/bin";

/** The statements' texts and lines, as the reader splits them. */
function split(text: string) {
  const script = readScript(text, "test.sql");
  const slice = (start: number, end: number) => script.bytes.toString("utf8", start, end);
  return script.statements.map((statement) => ({
    text: slice(statement.start, statement.end),
    line: statement.line,
    ...(statement.data ? { data: slice(statement.data.start, statement.data.end) } : {}),
  }));
}

function refusal(text: string): SchemaError {
  try {
    readScript(text, "test.sql");
  } catch (error) {
    if (error instanceof SchemaError) return error;
    throw error;
  }
  throw new Error("the reader accepted the file");
}

describe("the psql-script reader", () => {
  test("splits on semicolons outside every quoting form, keeping each statement's line", () => {
    const text = [
      "-- a comment; not a statement",
      "select 'a;b', 'it''s; fine';",
      "select E'back\\\\slash\\'; still';  /* outer /* nested; */ still; */ select 2;",
      'create table "we;ird" ("col;" int);',
      "create function f() returns int language plpgsql as $fn$",
      "begin",
      "  return 1; -- ;",
      "end; $fn$;",
      "select $$;$$, $a$ $$ ; $a$;",
      "create function g(x int) returns int language sql",
      "begin atomic",
      "  select case when x > 0 then 1 else 2 end;",
      "  select x;",
      "end;",
      "select (1;",
      "2) -- a semicolon in parentheses does not end it",
      ";",
      "select 'last without a semicolon'",
    ].join("\n");
    expect(split(text)).toEqual([
      { text: "select 'a;b', 'it''s; fine'", line: 2 },
      { text: "select E'back\\\\slash\\'; still'", line: 3 },
      { text: "select 2", line: 3 },
      { text: 'create table "we;ird" ("col;" int)', line: 4 },
      { text: "create function f() returns int language plpgsql as $fn$\nbegin\n  return 1; -- ;\nend; $fn$", line: 5 },
      { text: "select $$;$$, $a$ $$ ; $a$", line: 9 },
      { text: "create function g(x int) returns int language sql\nbegin atomic\n  select case when x > 0 then 1 else 2 end;\n  select x;\nend", line: 10 },
      { text: "select (1;\n2) -- a semicolon in parentheses does not end it\n", line: 15 },
      { text: "select 'last without a semicolon'", line: 18 },
    ]);
  });

  test("reads UTF-8 text as bytes: quotes, identifiers and dollar tags with non-ASCII characters", () => {
    const text = "select 'café;🐘', \"naïve;col\" from t;\nselect $é$ ; $é$, 1;\ncopy t from stdin;\nñ;\t🐘\n\\.\nselect 2;";
    expect(split(text)).toEqual([
      { text: "select 'café;🐘', \"naïve;col\" from t", line: 1 },
      { text: "select $é$ ; $é$, 1", line: 2 },
      { text: "copy t from stdin", line: 3, data: "ñ;\t🐘\n" },
      { text: "select 2", line: 6 },
    ]);
  });

  test("takes COPY data up to \\. without reading it as SQL, and skips \\restrict and \\set ON_ERROR_STOP", () => {
    const text = "\\restrict abc\n\\set ON_ERROR_STOP on\nCOPY public.t (a, b) FROM stdin;\n1\tx;y\\\\z\t\\N\n2\t'\t$$\n\\.\nselect 1;\n\\unrestrict abc\n";
    expect(split(text)).toEqual([
      { text: "COPY public.t (a, b) FROM stdin", line: 3, data: "1\tx;y\\\\z\t\\N\n2\t'\t$$\n" },
      { text: "select 1", line: 7 },
    ]);
    expect(split("copy t from stdin;\n\\.\n")).toEqual([{ text: "copy t from stdin", line: 1, data: "" }]);
  });

  test("refuses any other meta-command, naming the line and the command", () => {
    for (const command of ["\\c other", "\\connect other", "\\i x.sql", "\\ir x.sql", "\\copy t from 'f'", "\\gexec", "\\set x 1"]) {
      const error = refusal(`select 1;\n\n${command}\n`);
      expect(error.message).toStartWith(`test.sql, line 3: psql meta-command ${command.split(" ")[0]} cannot run here`);
      expect(error.fix).toContain("remove");
    }
  });

  test("refuses COPY TO STDOUT, whose output would go nowhere, in any file", () => {
    for (const prefix of ["", `${NO_TRANSACTION_MARKER}\n`]) {
      expect(refusal(`${prefix}create table z (a int);\ncopy z to stdout;\n`).message).toContain("COPY ... TO STDOUT writes to psql's output");
    }
  });

  test("refuses COPY FROM stdin without its data", () => {
    expect(refusal("create table t (a int);\ncopy t from stdin;").message).toBe("test.sql, line 2: COPY ... FROM stdin has no data after it (no line \\. before the end of the file)");
    expect(refusal("copy t from stdin;\n1\n2\n").message).toContain("line 1: COPY ... FROM stdin has no line \\. ending its data");
  });

  test("statements PostgreSQL refuses in a transaction need the marker; with it the file runs outside one", () => {
    for (const statement of ["create index concurrently i on t (a)", "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", "drop index concurrently i", "reindex (verbose) index concurrently i", "vacuum t", "create database d", "alter system set work_mem = '8MB'"]) {
      const error = refusal(`select 1;\n${statement};\n`);
      expect(error.message).toContain("line 2: ");
      expect(error.message).toContain("cannot run inside a transaction block, and the file has no marker");
      expect(error.fix).toContain(NO_TRANSACTION_MARKER);
    }
    expect(readScript("create index i on t (a); select 'concurrently';", "x.sql").noTransaction).toBe(false);
    const marked = readScript(`-- adds an index\n${NO_TRANSACTION_MARKER}\ncreate index concurrently i on t (a);\n`, "x.sql");
    expect(marked.noTransaction).toBe(true);
    expect(marked.statements).toHaveLength(1);
    expect(readScript(`select 1;\n${NO_TRANSACTION_MARKER}\n`, "x.sql").noTransaction).toBe(false);
  });

  test("a file wrapped in BEGIN ... COMMIT for psql is the step's transaction; COMMIT inside it is refused", () => {
    expect(split("BEGIN;\ncreate table t (a int);\nCOMMIT;\n").map((statement) => statement.text)).toEqual(["create table t (a int)"]);
    expect(refusal("create table t (a int);\ncommit;\ncreate table u (a int);\n").message).toContain("line 2: COMMIT inside a step");
  });

  test("a server position maps to the file's line and column, counting characters as the server does", () => {
    const text = "-- héllo 🐘\nselect 1;\n  select '🐘',\n    bad;\n";
    const script = readScript(text, "x.sql");
    const second = script.statements[1]!;
    expect(statementLocation(script, second, 1)).toBe("line 3, column 3");
    expect(statementLocation(script, second, 17)).toBe("line 4, column 5");
    expect(statementLocation(script, second)).toBe("line 3");
  });
});

describe("against a real server", () => {
  let cluster: Cluster;
  let workDir: string;
  let folders = 0;

  useCluster({ password: PASSWORD }, (made) => {
    if (!existsSync(join(PG15, "pg_dump"))) throw new Error(`${PG15}/pg_dump is missing: run bash tests/system-tools.sh (installs postgresql-client-15)`);
    ({ cluster, dir: workDir } = made);
  });

  const file = (name: string, text: string) => {
    const path = join(workDir, name);
    writeFileSync(path, text);
    return path;
  };
  const folder = (files: Record<string, string>) => {
    const dir = join(workDir, `migrations-${++folders}`);
    mkdirSync(dir);
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    return dir;
  };
  const pgEnv = () => cleanEnv({ PGPASSWORD: PASSWORD });
  const pgDump = (database: string, ...args: string[]) =>
    execFileSync(join(PG15, "pg_dump"), ["-h", cluster.host, "-p", String(cluster.port), "-U", cluster.user, ...args, database], { env: pgEnv(), encoding: "utf8" });
  /** A schema-only dump with the ledger and \restrict's random key left out: what two databases are compared by. */
  const shape = (database: string) => pgDump(database, "--schema-only", "--exclude-table=schema_migrations").replace(/^\\(un)?restrict .*$/gm, "");

  /** A database holding what dumps are made of: every quoting form, an enum, functions, COPY-hostile data. */
  async function sourceDatabase(): Promise<string> {
    const database = await cluster.freshDatabase();
    await cluster.query(`
      create type mood as enum ('sad', 'ok', 'it''s');
      create table "odd;name" (id int generated always as identity primary key, "semi;col" text, note text, m mood);
      create function plus(x int) returns int language plpgsql as $fn$ begin return x + 1; /* ; */ end; $fn$;
      create function twice(x int) returns int language sql begin atomic select x * 2; end;
      create view v as select * from "odd;name" where note <> ';';
      insert into "odd;name" ("semi;col", note, m) values
        (E'tab\\there', E'back\\\\slash', 'ok'), ('semi;colon', null, 'it''s'), ('quote''s', E'new\\nline', null), ('\\.', E'\\\\.', 'sad');
      create index odd_note on "odd;name" (note);`, database);
    return database;
  }
  const rows = (database: string) => cluster.query(`select id, "semi;col", note, m::text, plus(id), twice(id) from "odd;name" order by id`, database);

  test("a pg_dump with data applies with --schema exactly as psql -1 -f does", async () => {
    const source = await sourceDatabase();
    const dump = file("full.sql", pgDump(source));
    expect(dump).toBeTruthy();
    const [ours, theirs] = [await cluster.freshDatabase(), await cluster.freshDatabase()];
    const run = await runScript(SCRIPT, ["--schema", dump], { DATABASE_URL: cluster.url({ database: ours }) });
    expect(run.stderr).toContain("applied: full.sql");
    expect(run.code).toBe(EXIT.ok);
    execFileSync(join(PG15, "psql"), ["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-f", dump, cluster.url({ database: theirs })], { env: cleanEnv() });
    expect(await rows(ours)).toEqual(await rows(theirs));
    expect(await rows(ours)).toHaveLength(4);
    expect(shape(ours)).toBe(shape(theirs));
    expectNoSecret(run, PASSWORD);
  });

  test("a schema-only dump as the first migration, then a plain one, works on the first deploy; nothing a step sets leaks", async () => {
    const source = await sourceDatabase();
    const database = await cluster.freshDatabase();
    await cluster.query(`create role migrator_role; grant all on schema public to migrator_role`, database).catch(() => {});
    const dir = folder({
      "001_baseline.sql": pgDump(source, "--schema-only"),
      "002_settings.sql": "set statement_timeout = 0;\nset lock_timeout = 0;\nselect set_config('work_mem', '1MB', false);\nset role migrator_role;\n",
      "003_plain.sql": `insert into "odd;name" ("semi;col") values ('unqualified');
        create table seen as select current_setting('search_path') as search_path, current_setting('statement_timeout') as statement_timeout,
          current_setting('lock_timeout') as lock_timeout, current_setting('work_mem') as work_mem, current_user::text as role;`,
    });
    const run = await runScript(SCRIPT, ["--migrations", dir, "--command-timeout", "30", "--lock-timeout", "4"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.stderr).toContain("applied: 003_plain.sql");
    expect(run.code).toBe(EXIT.ok);
    expect(await cluster.query(`select * from seen`, database)).toEqual([
      { search_path: '"$user", public', statement_timeout: "30s", lock_timeout: "4s", work_mem: "4MB", role: cluster.user },
    ]);
    expect(await cluster.query(`select name from public.schema_migrations order by name`, database))
      .toEqual([{ name: "001_baseline.sql" }, { name: "002_settings.sql" }, { name: "003_plain.sql" }]);
    const again = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database }) });
    expect(again.stdout).toContain("schema already up to date");
  });

  test("a data dump as a baseline migration followed by a plain one", async () => {
    const source = await sourceDatabase();
    const database = await cluster.freshDatabase();
    const dir = folder({ "001_dump.sql": pgDump(source), "002_more.sql": `insert into "odd;name" (note) values ('after');` });
    const run = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    expect((await rows(database)).map((row) => row.note)).toEqual((await rows(source)).map((row) => row.note).concat("after"));
  });

  test("adopting an existing database: a --schema-only baseline recorded by hand there, applied for real on a new one", async () => {
    const existing = await sourceDatabase();
    const dir = folder({ "000_baseline.sql": pgDump(existing, "--schema-only", "--no-owner"), "001_next.sql": "create table next_thing (id int);" });
    const checksum = new Bun.CryptoHasher("sha256").update(await Bun.file(join(dir, "000_baseline.sql")).text()).digest("hex");
    await cluster.query(`create table if not exists public.schema_migrations (name text primary key, checksum text not null, applied_at timestamptz not null default now());
      insert into public.schema_migrations (name, checksum) values ('000_baseline.sql', '${checksum}')`, existing);
    const adopted = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database: existing }) });
    expect(adopted.code).toBe(EXIT.ok);
    expect(adopted.stdout).toContain("applied 1 of 2 schema steps");
    const fresh = await cluster.freshDatabase();
    const created = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database: fresh }) });
    expect(created.stdout).toContain("applied 2 of 2 schema steps");
    expect(shape(fresh)).toBe(shape(existing));
  });

  test("a refused meta-command is exit 1 before anything runs, naming file, line and command", async () => {
    const database = await cluster.freshDatabase();
    const run = await runScript(SCRIPT, ["--schema", file("meta.sql", "create table a (id int);\n\\connect other\n")], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("meta.sql, line 2: psql meta-command \\connect cannot run here");
    expect(run.stderr).toContain("hint: remove \\connect");
    expect(await cluster.query(`select to_regclass('a') is null as untouched`, database)).toEqual([{ untouched: true }]);
  });

  test("COPY FROM stdin with no data is exit 1 at once, never a hang or exit 3", async () => {
    const run = await runScript(SCRIPT, ["--schema", file("nodata.sql", "create table c (id int);\ncopy c from stdin;\n")], { DATABASE_URL: cluster.url() }, { killAfterMs: 20_000 });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("nodata.sql, line 2: COPY ... FROM stdin has no line \\. ending its data");
    expect(run.stderr).not.toContain("    at ");
  });

  test("COPY data that breaks a constraint names the COPY's line and the server's context", async () => {
    const database = await cluster.freshDatabase();
    const run = await runScript(SCRIPT, ["--schema", file("badcopy.sql", "create table c (id int primary key);\n\ncopy c (id) from stdin;\n1\n1\n\\.\n")], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("schema failed in badcopy.sql: 23505: duplicate key value violates unique constraint \"c_pkey\" (line 3)");
    expect(run.stderr).toContain("detail: Key (id)=(1) already exists.");
    expect(run.stderr).toContain("where: COPY c, line 2");
  });

  test("an enum value used in the file that adds it: the server's hint is shown with the file's line and column", async () => {
    const database = await cluster.freshDatabase();
    const text = "create type colour as enum ('red');\nalter type colour add value 'blue';\ncreate table paint (c colour default 'blue');\n";
    const run = await runScript(SCRIPT, ["--schema", file("enum.sql", text)], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("schema failed in enum.sql: 55P04: unsafe use of new value \"blue\" of enum type colour (line 3, column 38)");
    expect(run.stderr).toContain("hint: New enum values must be committed before they can be used. (the server's hint)");
  });

  describe("CREATE INDEX CONCURRENTLY", () => {
    test("without the marker: refused before anything runs, naming the line and the marker", async () => {
      const database = await cluster.freshDatabase();
      const dir = folder({ "001_t.sql": "create table t (v int);", "002_idx.sql": "-- speed up lookups\ncreate index concurrently t_v on t (v);\n" });
      const run = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database }) });
      expect(run.code).toBe(EXIT.schemaFailed);
      expect(run.stderr).toContain("002_idx.sql, line 2: CREATE INDEX CONCURRENTLY cannot run inside a transaction block");
      expect(run.stderr).toContain(NO_TRANSACTION_MARKER);
      expect(await cluster.query(`select to_regclass('t') is null as untouched`, database)).toEqual([{ untouched: true }]);
    });

    test("with the marker: applied in autocommit under a session lock, recorded, once across concurrent runs", async () => {
      const database = await cluster.freshDatabase();
      const dir = folder({
        "001_t.sql": "create table t (v int); insert into t select generate_series(1, 1000);",
        "002_idx.sql": `${NO_TRANSACTION_MARKER}\ncreate index concurrently t_v on t (v);\ncreate table after_index (id int);\n`,
        "003_more.sql": "insert into after_index values (1);",
      });
      const runs = await Promise.all(Array.from({ length: 4 }, () => runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database }) })));
      expect(runs.map((run) => `${run.code} ${run.code ? run.stderr : ""}`)).toEqual(["0 ", "0 ", "0 ", "0 "]);
      expect(await cluster.query(`select indisvalid as valid from pg_index where indexrelid = 't_v'::regclass`, database)).toEqual([{ valid: true }]);
      expect(await cluster.query(`select count(*)::int as n from after_index`, database)).toEqual([{ n: 1 }]);
      expect(await cluster.query(`select count(*)::int as n from schema_migrations`, database)).toEqual([{ n: 3 }]);
    });

    test("failing part-way: says what ran, names the INVALID index and the DROP INDEX; the next run retries the step", async () => {
      const database = await cluster.freshDatabase();
      const dir = folder({
        "001_t.sql": "create table t (v int); insert into t values (1), (1);",
        "002_unique.sql": `${NO_TRANSACTION_MARKER}\ncreate table if not exists side (id int);\ncreate unique index concurrently t_v_unique on t (v);\n`,
      });
      const env = { DATABASE_URL: cluster.url({ database }) };
      const run = await runScript(SCRIPT, ["--migrations", dir], env);
      expect(run.code).toBe(EXIT.schemaFailed);
      expect(run.stderr).toContain("schema failed in 002_unique.sql: 23505: could not create unique index \"t_v_unique\" (line 3)");
      expect(run.stderr).toContain("detail: Key (v)=(1) is duplicated.");
      expect(run.stderr).toContain("already ran and stay applied (autocommit): 1 statement, at line 2");
      expect(run.stderr).toContain("left behind: INVALID index t_v_unique; remove it with DROP INDEX CONCURRENTLY t_v_unique;");
      expect(await cluster.query(`select indisvalid as valid from pg_index where indexrelid = 't_v_unique'::regclass`, database)).toEqual([{ valid: false }]);
      expect(await cluster.query(`select name from schema_migrations`, database)).toEqual([{ name: "001_t.sql" }]);
      await cluster.query(`drop index concurrently t_v_unique`, database);
      await cluster.query(`delete from t where ctid = (select max(ctid) from t)`, database);
      const retry = await runScript(SCRIPT, ["--migrations", dir], env);
      expect(retry.code).toBe(EXIT.ok);
      expect(await cluster.query(`select indisvalid as valid from pg_index where indexrelid = 't_v_unique'::regclass`, database)).toEqual([{ valid: true }]);
    });
    test("behind a transaction pooler: refused without a direct URL (why, and what to set); applied through DIRECT_URL", async () => {
      const database = await cluster.freshDatabase();
      const bouncer = await PgBouncer.start({ cluster, poolMode: "transaction", databases: [database] });
      try {
        const dir = folder({ "001_t.sql": "create table t (v int);", "002_idx.sql": `${NO_TRANSACTION_MARKER}\ncreate index concurrently t_v on t (v);\n` });
        for (const url of [bouncer.url({ database, query: "pgbouncer=true" }), bouncer.url({ database })]) {
          const run = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: url });
          expect(run.code).toBe(EXIT.schemaFailed);
          expect(run.stderr).toContain("002_idx.sql runs outside a transaction");
          expect(run.stderr).toContain("a transaction pooler hands each transaction to any server session");
          expect(run.stderr).toContain("hint: set DIRECT_URL (or --direct-url) to PostgreSQL itself");
          expectNoSecret(run, PASSWORD);
        }
        expect(await cluster.query(`select to_regclass('t') is null as untouched`, database)).toEqual([{ untouched: true }]);
        const direct = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: bouncer.url({ database, query: "pgbouncer=true" }), DIRECT_URL: cluster.url({ database }) });
        expect(direct.code).toBe(EXIT.ok);
        expect(await cluster.query(`select indisvalid as valid from pg_index where indexrelid = 't_v'::regclass`, database)).toEqual([{ valid: true }]);
      } finally {
        await bouncer.destroy();
      }
    });
  });

  describe("--lock-timeout", () => {
    /** Hold an ACCESS EXCLUSIVE lock on `table` from another session until `release` is called. */
    async function holdLock(database: string, table: string) {
      const sql = postgres(cluster.url({ database }), { max: 1, connection: { application_name: "lock-holder" }, onnotice: () => {} });
      let release: () => void = () => {};
      const released = new Promise<void>((resolve) => (release = resolve));
      let locked: () => void = () => {};
      const holding = new Promise<void>((resolve) => (locked = resolve));
      const done = sql.begin(async (tx) => {
        await tx.unsafe(`lock table ${table} in access exclusive mode`);
        locked();
        await released;
      });
      await holding;
      return { release: async () => { release(); await done; await sql.end({ timeout: 1 }); } };
    }

    /** Run the init script, calling `onLine` for each line it prints on stderr as it comes. */
    async function runWatching(args: string[], env: Record<string, string>, onLine: (line: string) => void) {
      const child = Bun.spawn([process.execPath, join(ROOT, SCRIPT), ...args], { cwd: ROOT, env: cleanEnv(env), stdout: "pipe", stderr: "pipe", stdin: "ignore" });
      const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
      let stderr = "";
      const decoder = new TextDecoder();
      for await (const chunk of child.stderr) {
        const before = stderr.length;
        stderr += decoder.decode(chunk);
        for (const line of stderr.slice(stderr.lastIndexOf("\n", before) + 1).split("\n").slice(0, -1)) onLine(line);
      }
      const [stdout, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
      clearTimeout(killer);
      return { code, stdout, stderr };
    }

    test("a step blocked by another session's lock is retried, names the blocker, and applies once the lock is released", async () => {
      const database = await cluster.freshDatabase();
      await cluster.query(`create table busy (id int)`, database);
      const holder = await holdLock(database, "busy");
      let released = false;
      const run = await runWatching(["--schema", file("alter.sql", "alter table busy add column note text;\n"), "--lock-timeout", "0.2", "--json"],
        { DATABASE_URL: cluster.url({ database }) }, (line) => {
          if (!released && line.includes("blocked by pid")) {
            released = true;
            void holder.release();
          }
        });
      expect(released).toBe(true);
      expect(run.code).toBe(EXIT.ok);
      expect(run.stderr).toMatch(/alter\.sql: lock not granted within --lock-timeout \(attempt \d+\); rolled back, retrying in \d+ ms; blocked by pid \d+ \(lock-holder, idle in transaction, query started \d+ s ago: lock table busy in access exclusive mode\)/);
      const waits = events(run.stdout).filter((event) => event.event === "lock_wait");
      expect(waits.length).toBeGreaterThan(0);
      expect(await cluster.query(`select count(*)::int as n from information_schema.columns where table_name = 'busy' and column_name = 'note'`, database)).toEqual([{ n: 1 }]);
    });

    test("a lock never released: exit 3 at the deadline, naming the blocker", async () => {
      const database = await cluster.freshDatabase();
      await cluster.query(`create table busy (id int)`, database);
      const holder = await holdLock(database, "busy");
      try {
        const run = await runScript(SCRIPT, ["--schema", file("never.sql", "alter table busy add column x int;\n"), "--lock-timeout", "0.2", "--timeout", "2"], { DATABASE_URL: cluster.url({ database }) });
        expect(run.code).toBe(EXIT.notReady);
        expect(run.stderr).toContain("never.sql could not get its locks within --lock-timeout");
        expect(run.stderr).toContain("lock-holder");
        expect(run.stderr).toContain("55P03");
      } finally {
        await holder.release();
      }
      expect(await cluster.query(`select to_regclass('schema_migrations') is null as nothing, count(*)::int as columns from information_schema.columns where table_name = 'busy'`, database))
        .toEqual([{ nothing: true, columns: 1 }]);
    });
  });

  test("two spellings of the same ledger under concurrency share one lock: each step applied once", async () => {
    const database = await cluster.freshDatabase();
    const dir = folder({ "001_counter.sql": "create table counter (n int); insert into counter values (1);", "002_bump.sql": "update counter set n = n + 1;" });
    const runs = await Promise.all(Array.from({ length: 8 }, (_, index) =>
      runScript(SCRIPT, ["--migrations", dir, "--ledger-table", index % 2 ? "public.schema_migrations" : "schema_migrations"], { DATABASE_URL: cluster.url({ database }) })));
    expect(runs.map((run) => run.code)).toEqual(Array(8).fill(EXIT.ok));
    expect(await cluster.query(`select n from counter`, database)).toEqual([{ n: 2 }]);
  });
});
