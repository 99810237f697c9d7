/** User schema files, migrations with a ledger, --create-database, and finding the primary among several hosts. */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { EXIT, FLOW_BACKEND_SCHEMA, FLOW_BACKEND_TABLES } from "../init-database.ts";
import { Cluster, freePort } from "./cluster.ts";
import { events, expectNoSecret, ROOT, runScript, uniqueName, useCluster } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "schema-Pa55#word";

let cluster: Cluster;
let workDir: string;
let folders = 0;
useCluster({ password: PASSWORD }, (made) => ({ cluster, dir: workDir } = made));

/** A migrations folder with the given files. */
function migrations(files: Record<string, string>): string {
  const dir = join(workDir, `migrations-${++folders}`);
  mkdirSync(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const tablesOf = async (database: string) =>
  (await cluster.query<{ t: string }>(`select tablename as t from pg_tables where schemaname = 'public' order by 1`, database)).map((row) => row.t);

describe("the built-in schema", () => {
  test("is refused on a database holding other tables: exit 1, nothing changed, the tables and the flags named", async () => {
    const database = await cluster.freshDatabase();
    await cluster.query(`create table users (user_id int primary key); create table accounts (id int); create view active_users as select * from users`, database);
    const run = await runScript(SCRIPT, [], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("FOREIGN_TABLES");
    expect(run.stderr).toContain("other tables (accounts, active_users)");
    expect(run.stderr).toContain("shaped otherwise (no column users.id)");
    for (const flag of ["--schema FILE", "--migrations DIR", "--wait-only"]) expect(run.stderr).toContain(flag);
    expect(await tablesOf(database)).toEqual(["accounts", "users"]);
    const dry = await runScript(SCRIPT, ["--dry-run"], { DATABASE_URL: cluster.url({ database }) });
    expect(dry.code).toBe(EXIT.schemaFailed);
    expect(dry.stderr).toContain("FOREIGN_TABLES");
    expect(dry.stderr).toContain("checking what the schema would apply");
    expect(dry.stderr).not.toContain("applying the schema");
  });

  test("is refused on a database whose only table has a built-in name but another shape", async () => {
    const database = await cluster.freshDatabase();
    await cluster.query(`create table users (user_id int primary key, email text)`, database);
    const run = await runScript(SCRIPT, [], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("FOREIGN_TABLES");
    expect(run.stderr).toContain("(no column users.id)");
    expect(run.stderr).not.toContain("42703");
    expect(await tablesOf(database)).toEqual(["users"]);
  });

  test("is applied to a database holding only its own tables (as the original scripts left them) and an extension's", async () => {
    const database = await cluster.freshDatabase();
    await cluster.query(FLOW_BACKEND_SCHEMA, database);
    await cluster.query(`create extension pg_stat_statements`, database);
    const run = await runScript(SCRIPT, [], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    expect(await tablesOf(database)).toEqual([...FLOW_BACKEND_TABLES, "schema_migrations"].sort());
  });

  test("keeps being accepted where the ledger records it, even after other tables were added", async () => {
    const database = await cluster.freshDatabase();
    const env = { DATABASE_URL: cluster.url({ database }) };
    expect((await runScript(SCRIPT, [], env)).code).toBe(EXIT.ok);
    await cluster.query(`create table audit_log (id int)`, database);
    const again = await runScript(SCRIPT, [], env);
    expect(again.code).toBe(EXIT.ok);
    expect(again.stdout).toContain("schema already up to date");
  });
});

describe("--schema FILE", () => {
  test("applies the user's file instead of the built-in schema, once", async () => {
    const database = await cluster.freshDatabase();
    const file = join(workDir, "schema.sql");
    writeFileSync(file, "create table widgets (id int primary key);\ninsert into widgets values (1);\n");
    const env = { DATABASE_URL: cluster.url({ database }) };
    expect((await runScript(SCRIPT, ["--schema", file], env)).code).toBe(EXIT.ok);
    expect(await tablesOf(database)).toEqual(["schema_migrations", "widgets"]);
    const again = await runScript(SCRIPT, ["--schema", file], env);
    expect(again.code).toBe(EXIT.ok);
    expect(again.stdout).toContain("schema already up to date");
    expect(await cluster.query(`select count(*)::int as n from widgets`, database)).toEqual([{ n: 1 }]);
  });

  test("rolls a failing file back whole and names the file, line and server message", async () => {
    const database = await cluster.freshDatabase();
    const file = join(workDir, "broken.sql");
    writeFileSync(file, "create table first_half (id int);\n\nselect * from no_such_table;\n");
    const run = await runScript(SCRIPT, ["--schema", file], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("schema failed in broken.sql: 42P01: relation \"no_such_table\" does not exist (line 3, column 15)");
    expect(await tablesOf(database)).toEqual([]);
  });

  test("a missing file is a usage error whose hint says where it was looked for", async () => {
    const run = await runScript(SCRIPT, ["--schema", "no-such-dir/nope.sql", "--json"], { DATABASE_URL: cluster.url() });
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("nope.sql cannot be read (ENOENT)");
    expect(run.stderr).toContain(`hint: ${join(ROOT, "no-such-dir", "nope.sql")} does not exist; a relative path starts at the current directory, ${ROOT}`);
    expect(events(run.stdout).at(-1)).toMatchObject({ status: "usage error", code: "EINVALIDCONFIG", message: "--schema no-such-dir/nope.sql cannot be read (ENOENT)" });
  });

  test("--json's failure summary carries the message and the file's line", async () => {
    const database = await cluster.freshDatabase();
    const file = join(workDir, "broken-json.sql");
    writeFileSync(file, "create table t (id int);\nselect * from nowhere;\n");
    const run = await runScript(SCRIPT, ["--schema", file, "--json"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    const summary = events(run.stdout).at(-1)!;
    expect(summary).toMatchObject({ status: "schema failed", code: "42P01", step: "broken-json.sql", where: "line 2, column 15" });
    expect(String(summary.message)).toContain('relation "nowhere" does not exist');
  });
});

describe("--migrations DIR", () => {
  const FILES = {
    "001_accounts.sql": "create table accounts (id int primary key, name text not null);",
    "002_email.sql": "alter table accounts add column email text;",
    "010_invoices.sql": "create table invoices (id int primary key, account_id int not null references accounts (id));",
    "README.md": "not a migration",
  };

  test("applies *.sql in name order, each once, recording name, SHA-256 and time", async () => {
    const database = await cluster.freshDatabase();
    const dir = migrations(FILES);
    const env = { DATABASE_URL: cluster.url({ database }) };
    const run = await runScript(SCRIPT, ["--migrations", dir, "--json"], env);
    expect(run.code).toBe(EXIT.ok);
    expect(events(run.stdout).filter((event) => event.event === "schema").map((event) => event.step))
      .toEqual(["001_accounts.sql", "002_email.sql", "010_invoices.sql"]);
    const ledger = await cluster.query<{ name: string; checksum: string; applied: boolean }>(
      `select name, checksum, applied_at <= now() as applied from schema_migrations order by name`, database);
    expect(ledger).toEqual(["001_accounts.sql", "002_email.sql", "010_invoices.sql"].map((name) => ({
      name, checksum: createHash("sha256").update(FILES[name as keyof typeof FILES]).digest("hex"), applied: true,
    })));
    const again = await runScript(SCRIPT, ["--migrations", dir], env);
    expect(again.stdout).toContain("schema already up to date");

    writeFileSync(join(dir, "011_paid.sql"), "alter table invoices add column paid boolean not null default false;");
    const dry = await runScript(SCRIPT, ["--migrations", dir, "--dry-run"], env);
    expect(dry.code).toBe(EXIT.ok);
    expect(dry.stdout).toContain("would apply 011_paid.sql");
    expect(await cluster.query(`select count(*)::int as n from schema_migrations`, database)).toEqual([{ n: 3 }]);
    const next = await runScript(SCRIPT, ["--migrations", dir, "--json"], env);
    expect(events(next.stdout).filter((event) => event.status === "applied").map((event) => event.step)).toEqual(["011_paid.sql"]);
  });

  test("refuses an applied migration whose file changed, naming it", async () => {
    const database = await cluster.freshDatabase();
    const dir = migrations({ "001_a.sql": "create table a (id int);" });
    const env = { DATABASE_URL: cluster.url({ database }) };
    expect((await runScript(SCRIPT, ["--migrations", dir], env)).code).toBe(EXIT.ok);
    writeFileSync(join(dir, "001_a.sql"), "create table a (id bigint);");
    const run = await runScript(SCRIPT, ["--migrations", dir], env);
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("001_a.sql was applied with checksum");
    expect(run.stderr).toContain("never edit an applied migration");
    expect(run.stderr).toContain("hint: restore the file as it was applied (e.g. git checkout -- FILE) and put the change in a new migration file");
    expect(run.stderr).not.toContain("fix the SQL");
  });

  test("stops at a failing migration, keeping the ones before and nothing of it", async () => {
    const database = await cluster.freshDatabase();
    const dir = migrations({
      "001_ok.sql": "create table ok (id int);",
      "002_bad.sql": "create table half (id int);\ninsert into half values (1);\ninsert into half values ('x');\n",
      "003_never.sql": "create table never (id int);",
    });
    const run = await runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toMatch(/schema failed in 002_bad\.sql: 22P02: .* \(line 3, column 26\)/);
    expect(await tablesOf(database)).toEqual(["ok", "schema_migrations"]);
    expect(await cluster.query(`select name from schema_migrations`, database)).toEqual([{ name: "001_ok.sql" }]);
  });

  test("keeps the ledger in the table --ledger-table names, creating its schema", async () => {
    const database = await cluster.freshDatabase();
    const dir = migrations({ "001_a.sql": "create table a (id int);" });
    const run = await runScript(SCRIPT, ["--migrations", dir, "--ledger-table", "kit.applied_migrations"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    expect(await cluster.query(`select name from kit.applied_migrations`, database)).toEqual([{ name: "001_a.sql" }]);
  });

  test("ten processes running the same migrations at once all exit 0, each file applied once", async () => {
    const database = await cluster.freshDatabase();
    const dir = migrations({
      "001_counter.sql": "create table counter (n int); insert into counter values (1);",
      "002_more.sql": "update counter set n = n + 1;",
    });
    const runs = await Promise.all(Array.from({ length: 10 }, () => runScript(SCRIPT, ["--migrations", dir], { DATABASE_URL: cluster.url({ database }) })));
    expect(runs.map((run) => run.code)).toEqual(Array(10).fill(EXIT.ok));
    expect(await cluster.query(`select n from counter`, database)).toEqual([{ n: 2 }]);
  });

  test("the connectivity suite's Schema Validation follows the migrations ledger", async () => {
    const database = await cluster.freshDatabase();
    const dir = migrations({ "001_a.sql": "create table a (id int primary key);" });
    const env = { DATABASE_URL: cluster.url({ database }) };
    expect((await runScript(SCRIPT, ["--migrations", dir], env)).code).toBe(EXIT.ok);
    const passing = await runScript("test-db-connectivity.ts", ["--only", "schema", "--migrations", dir], env);
    expect(passing.code).toBe(0);
    expect(passing.stdout).toContain("1 step recorded in schema_migrations with matching checksums");
    writeFileSync(join(dir, "002_b.sql"), "create table b (id int);");
    const failing = await runScript("test-db-connectivity.ts", ["--only", "schema", "--migrations", dir], env);
    expect(failing.code).toBe(1);
    expect(failing.stdout).toContain("not applied or changed since: 002_b.sql");
    const withoutFlags = await runScript("test-db-connectivity.ts", ["--only", "schema"], env);
    expect(withoutFlags.stdout).toContain("PASSED  Schema Validation");
    expect(withoutFlags.stdout).toContain("1 step recorded in schema_migrations (001_a.sql last by name)");
    expect(withoutFlags.code).toBe(0);
  });
});

describe("--create-database", () => {
  const exists = async (database: string) =>
    (await cluster.query<{ n: number }>(`select count(*)::int as n from pg_database where datname = '${database.replaceAll("'", "''")}'`, "postgres"))[0]!.n === 1;

  test("creates a missing database (with a name that needs quoting), then applies the schema", async () => {
    const database = uniqueName('new "odd" db');
    const run = await runScript(SCRIPT, ["--create-database"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    expect(run.stderr).toContain(`created database ${database}`);
    expect(await tablesOf(database)).toContain("users");
  });

  test("racing creators all succeed", async () => {
    const database = uniqueName("raced");
    const runs = await Promise.all(Array.from({ length: 6 }, () =>
      runScript(SCRIPT, ["--create-database"], { DATABASE_URL: cluster.url({ database }) })));
    expect(runs.map((run) => run.code)).toEqual(Array(6).fill(EXIT.ok));
    expect(await exists(database)).toBe(true);
  });

  test("with --dry-run creates nothing and says it would", async () => {
    const database = uniqueName("dry");
    const run = await runScript(SCRIPT, ["--create-database", "--dry-run", "--json"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    expect(events(run.stdout).at(-1)).toMatchObject({ status: "dry run", pending: ["flow-backend"], create_database: true });
    expect(await exists(database)).toBe(false);
    const human = await runScript(SCRIPT, ["--create-database", "--dry-run"], { DATABASE_URL: cluster.url({ database }) });
    expect(human.stdout).toContain(`would create database ${database}, then apply flow-backend`);
    expect(human.stderr).not.toContain("applying the schema");
    expect(await exists(database)).toBe(false);
  });

  test("shows its attempts while the server is not there yet", async () => {
    const port = await freePort();
    const run = await runScript(SCRIPT, ["--create-database", "--json", "--timeout", "1"], { DATABASE_URL: cluster.url({ port }) });
    expect(run.code).toBe(EXIT.notReady);
    const attempts = events(run.stdout).filter((event) => event.event === "attempt");
    expect(attempts.length).toBeGreaterThan(1);
    expect(attempts[0]).toMatchObject({ code: "ECONNREFUSED" });
    expect(events(run.stdout).at(-1)).toMatchObject({ status: "not ready", code: "ECONNREFUSED" });
    expect(String(events(run.stdout).at(-1)!.message)).toContain("ECONNREFUSED");
  });

  test("falls back to template1 without a postgres database, and names the right database when neither exists", async () => {
    const own = await Cluster.create({ password: PASSWORD, database: "app" });
    try {
      await own.query(`drop database postgres`, "app");
      const first = await runScript(SCRIPT, ["--create-database"], { DATABASE_URL: own.url({ database: "made_from_template1" }) });
      expect(first.code).toBe(EXIT.ok);
      await own.query(`alter database template1 is_template false`, "app");
      await own.query(`drop database template1`, "app");
      const run = await runScript(SCRIPT, ["--create-database"], { DATABASE_URL: own.url({ database: "wanted" }) });
      expect(run.code).toBe(EXIT.fatal);
      expect(run.stderr).toContain('cannot create database "wanted": neither maintenance database "postgres" nor "template1" exists');
      expect(run.stderr).toContain('hint: create it from a database you can reach, e.g. createdb --maintenance-db=THAT_DATABASE "wanted", then run without --create-database');
    } finally {
      await own.destroy();
    }
  });

  test("with --wait-only says the flag is ignored, and creates nothing", async () => {
    const database = uniqueName("waited");
    const run = await runScript(SCRIPT, ["--wait-only", "--create-database", "--timeout", "1"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.stderr).toContain("--create-database ignored: --wait-only only waits and changes nothing");
    expect(run.code).toBe(EXIT.fatal);
    expect(await exists(database)).toBe(false);
  });
});

describe("several hosts and target_session_attrs", () => {
  let primary: Cluster;
  let standby: Cluster;
  useCluster({ password: PASSWORD, database: "ha", standby: true }, (made) => ([primary, standby] = [made.cluster, made.standby!]));

  const hostsUrl = (...ports: number[]) =>
    `postgres://${primary.user}:${encodeURIComponent(PASSWORD)}@${ports.map((port) => `127.0.0.1:${port}`).join(",")}/ha`;

  test("with the standby listed first and read-write, the schema lands on the primary", async () => {
    const run = await runScript(SCRIPT, ["--json"], { DATABASE_URL: `${hostsUrl(standby.port, primary.port)}?target_session_attrs=read-write` });
    expect(run.code).toBe(EXIT.ok);
    expect(events(run.stdout).find((event) => event.event === "ready")).toMatchObject({ port: primary.port });
    expect(await primary.query(`select to_regclass('users') is not null as present`)).toEqual([{ present: true }]);
    expectNoSecret(run, PASSWORD);
  });

  test("the schema is never attempted on a standby alone: a clear non-zero exit at the deadline", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "1"], { DATABASE_URL: hostsUrl(standby.port) });
    expect(run.code).toBe(EXIT.notReady);
    expect(run.stderr).toContain("WRONG_SESSION_ATTRS");
    expect(run.stderr).toContain("is the primary up?");
  });

  test("--wait-only accepts the standby, which does answer queries", async () => {
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: hostsUrl(standby.port) });
    expect(run.code).toBe(EXIT.ok);
  });

  test("a dead first host is skipped", async () => {
    const run = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: hostsUrl(await freePort(), primary.port) });
    expect(run.code).toBe(EXIT.ok);
    expect(events(run.stdout).find((event) => event.event === "ready")).toMatchObject({ attempts: 1, port: primary.port });
  });
});
