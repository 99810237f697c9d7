/**
 * A no-transaction step is recorded only when the index it builds concurrently is valid. Builds
 * are cut short for real (the session terminated while pg_stat_progress_create_index shows the
 * build under way, a unique build failing on duplicate rows); the kit's own reconnect or the next
 * run recognises its leftover INVALID index, drops it and builds it again, and stops with exit 1
 * naming the index and the statements to run where the index may not be its own.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { EXIT, NO_TRANSACTION_MARKER } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { events, expectNoSecret, runScript, useCluster, type Run } from "./helpers.ts";

const PASSWORD = "index-Pa55-w0rd";
const RECOVERED_MS = 20_000;
/** A database holding `accounts` (1.5 million rows): copied for each test, so a build takes seconds. */
const TEMPLATE = "accounts_template";

let cluster: Cluster;
let dir: string;
let made = 0;
useCluster({ password: PASSWORD }, (fixture) => ({ cluster, dir } = fixture));
beforeAll(async () => {
  await cluster.createDatabase(TEMPLATE);
  await cluster.query(`create table accounts (id bigint primary key, balance bigint not null, owner bigint not null); insert into accounts select g, (g::bigint * 7919) % 100003, g from generate_series(1, 1500000) g`, TEMPLATE);
  await cluster.query(`vacuum analyze accounts`, TEMPLATE);
});

async function database(): Promise<string> {
  const name = `idx_${++made}`;
  await cluster.query(`create database ${name} template ${TEMPLATE}`, "postgres");
  return name;
}

function step(name: string, sql: string): string {
  const file = join(dir, name);
  writeFileSync(file, `${NO_TRANSACTION_MARKER}\n${sql}`);
  return file;
}

async function deploy(db: string, file: string, options: Parameters<typeof runScript>[3] = {}): Promise<Run> {
  const run = await runScript("init-database.ts", ["--schema", file, "--json", "--timeout", "90", "--command-timeout", "60"], { DATABASE_URL: cluster.url({ database: db }) }, { killAfterMs: 100_000, ...options });
  expectNoSecret(run, PASSWORD);
  return run;
}

/** Every index in the database that is not valid and ready. */
async function invalidIndexes(db: string): Promise<string[]> {
  return (await cluster.query<{ name: string }>(`select indexrelid::regclass::text as name from pg_index where not (indisvalid and indisready) order by 1`, db)).map((row) => row.name);
}

async function recorded(db: string): Promise<number> {
  return (await cluster.query<{ n: number }>(`select count(*)::int as n from schema_migrations`, db))[0]!.n;
}

/** Terminate the kit's session once its build (`command`, as pg_stat_progress_create_index names it) is under way. */
async function terminateDuringBuild(db: string, command: string, running: Promise<unknown>): Promise<void> {
  const admin = postgres(cluster.url({ database: "postgres" }), { max: 1, onnotice: () => {}, fetch_types: false });
  let ended = false;
  running.then(() => (ended = true), () => (ended = true));
  try {
    for (;;) {
      const [row] = await admin<{ pid: number }[]>`select p.pid from pg_stat_progress_create_index p join pg_stat_activity a using (pid)
        where a.datname = ${db} and a.application_name = 'init-database' and p.command = ${command} and p.phase like 'building index%'`;
      if (row) {
        await admin`select pg_terminate_backend(${row.pid})`;
        return;
      }
      if (ended) throw new Error(`the kit ended before its ${command} was seen building`);
      await Bun.sleep(5); // pacing of the poll; what it waits for is the row
    }
  } finally {
    await admin.end({ timeout: 1 });
  }
}

const rebuilds = (run: Run) => events(run.stdout).filter((event) => event.event === "index_rebuild");

describe("the kit's own leftovers are dropped and built again", () => {
  test("CREATE UNIQUE INDEX CONCURRENTLY cut short by a terminated session: the reconnect drops the INVALID index and builds it, valid", async () => {
    const db = await database();
    const file = step("unique.sql", "create unique index concurrently accounts_owner_key on accounts (owner);\n");
    const running = deploy(db, file);
    await terminateDuringBuild(db, "CREATE INDEX CONCURRENTLY", running);
    const run = await running;
    expect(run.stderr).toContain("schema interrupted");
    expect(run.stderr).toMatch(/unique\.sql: dropping INVALID index public\.accounts_owner_key, left by an earlier try, to build it again \(line 2\)/);
    expect(rebuilds(run)).toEqual([{ event: "index_rebuild", step: "unique.sql", index: "public.accounts_owner_key", where: "line 2" }]);
    expect(run.code).toBe(EXIT.ok);
    expect(run.ms).toBeLessThan(RECOVERED_MS);
    expect(await invalidIndexes(db)).toEqual([]);
    expect(await cluster.query(`select indisunique from pg_index where indexrelid = 'accounts_owner_key'::regclass`, db)).toEqual([{ indisunique: true }]);
    expect(await recorded(db)).toBe(1);
  });

  test("a unique build that failed on duplicates: exit 1 naming the INVALID index; once the rows are fixed the next run rebuilds it", async () => {
    const db = await database();
    await cluster.query(`update accounts set owner = 1 where id = 2`, db);
    const file = step("unique-dup.sql", "create unique index concurrently if not exists accounts_owner_key on accounts (owner);\n");
    const first = await deploy(db, file);
    expect(first.code).toBe(EXIT.schemaFailed);
    expect(first.stderr).toContain("23505");
    expect(first.stderr).toContain("left behind: INVALID index accounts_owner_key");
    expect(await invalidIndexes(db)).toEqual(["accounts_owner_key"]);
    await cluster.query(`update accounts set owner = 2 where id = 2`, db);
    const second = await deploy(db, file);
    expect(rebuilds(second)).toHaveLength(1);
    expect(second.code).toBe(EXIT.ok);
    expect(await invalidIndexes(db)).toEqual([]);
    expect(await recorded(db)).toBe(1);
  });

  test("REINDEX INDEX CONCURRENTLY cut short: the *_ccnew leftover is dropped and the rebuild done again", async () => {
    const db = await database();
    await cluster.query(`create index accounts_balance_idx on accounts (balance)`, db);
    const file = step("reindex.sql", "reindex index concurrently accounts_balance_idx;\n");
    const running = deploy(db, file);
    await terminateDuringBuild(db, "REINDEX CONCURRENTLY", running);
    const run = await running;
    expect(run.stderr).toContain("schema interrupted");
    expect(rebuilds(run).map((event) => event.index)).toEqual(["public.accounts_balance_idx_ccnew"]);
    expect(run.code).toBe(EXIT.ok);
    expect(await invalidIndexes(db)).toEqual([]);
    expect(await cluster.query(`select count(*)::int as n from pg_indexes where tablename = 'accounts'`, db)).toEqual([{ n: 2 }]);
  });
});

describe("an index the kit cannot vouch for stops the step with exit 1 and the statements to run", () => {
  test("an INVALID index of the step's name on another table", async () => {
    const db = await database();
    // A real INVALID index on another table: a unique build that failed on its duplicate rows.
    await cluster.query(`create table other (v int); insert into other values (1), (1)`, db);
    await cluster.query(`create unique index concurrently balance_idx on other (v)`, db).catch(() => {});
    expect(await invalidIndexes(db)).toEqual(["balance_idx"]);
    const run = await deploy(db, step("clash-invalid.sql", "create index concurrently if not exists balance_idx on accounts (balance);\n"));
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("an INVALID index public.balance_idx exists on another table than accounts");
    expect(run.stderr).toContain("DROP INDEX CONCURRENTLY IF EXISTS public.balance_idx;");
    expect(await invalidIndexes(db)).toEqual(["balance_idx"]);
    expect(await cluster.query(`select to_regclass('schema_migrations') as t`, db)).toEqual([{ t: "schema_migrations" }]);
    expect(await recorded(db)).toBe(0);
  });

  test("a valid index of the step's name on another table, which IF NOT EXISTS would skip", async () => {
    const db = await database();
    await cluster.query(`create table other (v int); create index balance_idx on other (v)`, db);
    const run = await deploy(db, step("clash-valid.sql", "create index concurrently if not exists balance_idx on accounts (balance);\n"));
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("public.balance_idx already exists on another table than accounts");
    expect(run.stderr).toContain("DROP INDEX CONCURRENTLY IF EXISTS public.balance_idx;");
    expect(await recorded(db)).toBe(0);
  });

  test("a build that names no index, on a table holding an INVALID index", async () => {
    const db = await database();
    await cluster.query(`update accounts set owner = 1 where id = 2`, db);
    await cluster.query(`create unique index concurrently accounts_owner_key on accounts (owner)`, db).catch(() => {});
    const run = await deploy(db, step("unnamed.sql", "create index concurrently on accounts (balance);\n"));
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stderr).toContain("the statement names no index, so the kit cannot tell whether public.accounts_owner_key on accounts is left by an earlier try of it");
    expect(run.stderr).toContain("DROP INDEX CONCURRENTLY IF EXISTS public.accounts_owner_key;");
    expect(await recorded(db)).toBe(0);
  });
});
