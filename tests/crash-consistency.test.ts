/**
 * A deploy interrupted at any moment ends as one clean deploy. A five-step deploy (a schema; a
 * big insert; an ALTER with a backfill; a no-transaction step with two concurrent index builds
 * and an INSERT; COPY data with a function) is struck at 8 fault points spread over it:
 *
 *   1. the big insert, running                       5. the second (unique) concurrent index build
 *   2. the backfill, running                         6. the no-transaction step's INSERT
 *   3. the ledger write of a transactional step      7. the ledger write of the no-transaction step
 *   4. the first concurrent index build              8. the COPY, streaming
 *
 * by one of 4 faults: the kit's process group killed with SIGKILL, its session terminated
 * (pg_terminate_backend), the server restarted -m fast, the server restarted -m immediate (a
 * crash). Then the kit runs again. The database must equal one clean deploy on the same server
 * (row counts and sums, every index valid, each step once in the ledger), or the run stops with
 * exit 1 and a hint; no run may end with exit 0 and a different state.
 *
 * Matrix: every point on every major (13 to 18), the fault rotated over the majors (point i on
 * the j-th major gets fault (i + j) mod 4), so each of the 32 (point, fault) pairs runs on at
 * least one major: 48 tests, each named for its major, point and fault.
 *
 * Every point is set off by what the server shows, never by a sleep: a running statement in
 * pg_stat_activity (1, 2, 8: statements that take a good part of a second), or a wait the test
 * itself holds open with another session, so the kit is caught there for certain: a ledger write
 * waits on an EXCLUSIVE lock on the ledger (3, 7), the INSERT on one on its table (6), and a
 * concurrent build waits in its "waiting for old snapshots" phase for a repeatable-read
 * transaction opened before it (4, 5). Each hold is set up while the kit is caught at the point
 * before, and all are released once the fault has struck.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { EXIT, NO_TRANSACTION_MARKER } from "../init-database.ts";
import { Cluster, PG_VERSIONS } from "./cluster.ts";
import { expectNoSecret, runScript, type Run } from "./helpers.ts";

const PASSWORD = "crash-Pa55-w0rd";
/** Enough that the insert, the backfill and the COPY run long enough to be seen running; no more. */
const ROWS = 100_000;
const CODES = 100_000;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "crash-"));
  const migrations = join(dir, "migrations");
  mkdirSync(migrations);
  const write = (name: string, text: string) => writeFileSync(join(migrations, name), text);
  write("001_schema.sql", "create table accounts (id bigint primary key, balance bigint not null);\ncreate table audit (id bigint primary key, at timestamptz not null default now());\n");
  write("002_insert.sql", `insert into accounts select g, (g::bigint * 7919) % 100003 from generate_series(1, ${ROWS}) g;\n`);
  write("003_backfill.sql", "alter table accounts add column tier int;\nupdate accounts set tier = balance % 7;\nalter table accounts alter column tier set not null;\n");
  // Safe to repeat, as a no-transaction step must be: its statements commit one by one, so one cut short runs again from the top.
  write("004_indexes.sql", `${NO_TRANSACTION_MARKER}\ncreate index concurrently if not exists accounts_balance_idx on accounts (balance);\ncreate unique index concurrently if not exists accounts_tier_id_key on accounts (tier, id);\ninsert into audit (id) values (4) on conflict do nothing;\n`);
  const codes = Array.from({ length: CODES }, (_, i) => `${i + 1}\tcode ${i + 1}`).join("\n");
  write("005_codes.sql", `create table codes (code int primary key, label text not null);\ncopy codes (code, label) from stdin;\n${codes}\n\\.\ncreate function tier_of(account bigint) returns int language sql stable as $$ select tier from accounts where id = account $$;\n`);
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The whole state a deploy makes, as one comparable value. */
const FINGERPRINT = `select json_build_object(
  'accounts', (select json_build_object('n', count(*), 'balance', sum(balance), 'tier', sum(tier)) from accounts),
  'codes', (select json_build_object('n', count(*), 'sum', sum(code)) from codes),
  'audit', (select count(*) from audit),
  'indexes', (select json_agg(c.relname || ':' || (i.indisvalid and i.indisready) order by c.relname) from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public'),
  'ledger', (select json_agg(name order by name) from schema_migrations),
  'ledger_rows', (select count(*) from schema_migrations),
  'tier_of', (select tier_of(10))) as state`;

/** Another session holding open a transaction that a later point of the deploy will wait on. */
class Hold {
  private constructor(private readonly sql: postgres.Sql) {}

  /** Open a transaction in `database` and run `statements` in it (a snapshot, a lock). */
  static async open(server: Cluster, database: string, statements: string[]): Promise<Hold> {
    const sql = postgres(server.url({ database }), { max: 1, onnotice: () => {}, fetch_types: false });
    for (const statement of statements) await sql.unsafe(statement);
    return new Hold(sql);
  }

  async read<T>(query: string): Promise<T[]> {
    return (await this.sql.unsafe(query)) as unknown as T[];
  }

  /** Close the session, which ends its transaction (already gone after a restart). */
  async release(): Promise<void> {
    await this.sql.end({ timeout: 1 }).catch(() => {});
  }
}

const SNAPSHOT = ["begin isolation level repeatable read", "select 1"];
const lockOf = (table: string) => ["begin", `lock table ${table} in exclusive mode`];

/** The holds of one interrupted deploy, by what they hold the kit at. */
type Holds = Map<string, Hold>;

/**
 * The deploy's fault points in order: when the kit's session is seen there (a condition on
 * pg_stat_activity `a` joined to pg_stat_progress_create_index `p`), and, going on past it, the
 * holds to set up for the next point and the ones to let go.
 */
interface Point { name: string; seen: string; onward?: (server: Cluster, database: string, holds: Holds) => Promise<void> }

/** Going on past a point: open the hold for the next point first, then let go of the one the kit waits on here. */
async function swap(holds: Holds, release: string, open?: [string, () => Promise<Hold>]): Promise<void> {
  if (open) holds.set(open[0], await open[1]());
  await holds.get(release)?.release();
  holds.delete(release);
}

async function releaseAll(holds: Holds): Promise<void> {
  for (const hold of holds.values()) await hold.release();
  holds.clear();
}

const waitsOnLock = (pattern: string) => `a.query ilike '${pattern}' and a.wait_event_type = 'Lock'`;
const waitsForSnapshots = (pattern: string) => `a.query ilike '${pattern}' and p.phase = 'waiting for old snapshots'`;

const POINTS: Point[] = [
  { name: "the big insert", seen: "a.query ilike 'insert into accounts select%' and a.state = 'active'" },
  {
    name: "the backfill",
    seen: "a.query ilike '%update accounts set tier%' and a.state = 'active'",
    onward: async (server, database, holds) => {
      const ledger = await Hold.open(server, database, lockOf("schema_migrations"));
      holds.set("ledger", ledger);
      const [row] = await ledger.read<{ recorded: boolean }>(`select exists (select 1 from schema_migrations where name = '003_backfill.sql') as recorded`);
      if (row?.recorded) throw new Error("the backfill was recorded before the ledger was locked: make the table bigger");
    },
  },
  { name: "the ledger write of a transactional step", seen: waitsOnLock("insert into%schema_migrations%"), onward: (_s, _d, holds) => swap(holds, "ledger") },
  {
    name: "the first concurrent index build",
    seen: waitsForSnapshots("create index concurrently%"),
    // Opened while the first build waits: that build does not wait for it, the second one will.
    onward: (server, database, holds) => swap(holds, "snapshot", ["second snapshot", () => Hold.open(server, database, SNAPSHOT)]),
  },
  {
    name: "the second concurrent index build",
    seen: waitsForSnapshots("create unique index concurrently%"),
    onward: (server, database, holds) => swap(holds, "second snapshot", ["audit", () => Hold.open(server, database, lockOf("audit"))]),
  },
  {
    name: "the no-transaction step's INSERT",
    seen: waitsOnLock("insert into audit%"),
    onward: (server, database, holds) => swap(holds, "audit", ["ledger", () => Hold.open(server, database, lockOf("schema_migrations"))]),
  },
  { name: "the ledger write of the no-transaction step", seen: waitsOnLock("insert into%schema_migrations%"), onward: (_s, _d, holds) => swap(holds, "ledger") },
  { name: "the COPY", seen: "a.query ilike 'copy codes%' and a.state = 'active'" },
];

const FAULTS = ["SIGKILL of the kit", "its session terminated", "a server restart -m fast", "a server restart -m immediate"] as const;
type Fault = (typeof FAULTS)[number];

function deploy(server: Cluster, database: string, onStart?: (child: Bun.Subprocess) => void): Promise<Run> {
  // In its own process group, as CI runs it, so that SIGKILL hits the kit and only the kit.
  return runScript("init-database.ts", ["--migrations", join(dir, "migrations"), "--timeout", "90", "--command-timeout", "60"], { DATABASE_URL: server.url({ database }) }, { killAfterMs: 110_000, onStart, group: true })
    .then((run) => (expectNoSecret(run, PASSWORD), run));
}

async function strike(fault: Fault, server: Cluster, admin: postgres.Sql, kit: Bun.Subprocess, pid: number): Promise<void> {
  if (fault === "SIGKILL of the kit") process.kill(-kit.pid, "SIGKILL");
  else if (fault === "its session terminated") await admin`select pg_terminate_backend(${pid})`;
  else await server.restart(fault === "a server restart -m fast" ? "fast" : "immediate");
}

/** Run the deploy up to `target`, strike it with `fault` there, and return how that first run ended. */
async function interrupt(server: Cluster, database: string, target: Point, fault: Fault): Promise<Run> {
  const admin = postgres(server.url({ database: "postgres" }), { max: 1, onnotice: () => {}, fetch_types: false });
  // Opened before the deploy: the first concurrent build will wait for this snapshot.
  const holds: Holds = new Map([["snapshot", await Hold.open(server, database, SNAPSHOT)]]);
  let kit: Bun.Subprocess | undefined;
  const first = deploy(server, database, (started) => (kit = started));
  let ended = false;
  first.then(() => (ended = true), () => (ended = true));
  try {
    for (const point of POINTS) {
      for (;;) {
        const [row] = await admin.unsafe<{ pid: number }[]>(`select a.pid from pg_stat_activity a left join pg_stat_progress_create_index p using (pid)
          where a.datname = '${database}' and a.application_name = 'init-database' and a.backend_type = 'client backend' and ${point.seen} limit 1`);
        if (row) {
          if (point !== target) break;
          await strike(fault, server, admin, kit!, row.pid);
          // Let go at once: a kit that reconnects must not find the test's holds still in its way.
          await releaseAll(holds);
          return await first;
        }
        if (ended) throw new Error(`the deploy ended before ${point.name} was seen`);
        await Bun.sleep(5); // pacing of the poll; what it waits for is the row
      }
      await point.onward?.(server, database, holds);
    }
    throw new Error(`${target.name} is not a point of the deploy`);
  } finally {
    await releaseAll(holds);
    await admin.end({ timeout: 1 });
  }
}

PG_VERSIONS.forEach((version, majorIndex) => describe(`PostgreSQL ${version}: a deploy interrupted at any point ends as one clean deploy`, () => {
  let server: Cluster;
  let clean: unknown;
  beforeAll(async () => {
    server = await Cluster.create({ version, password: PASSWORD });
    await server.createDatabase("clean");
    expect((await deploy(server, "clean")).code).toBe(EXIT.ok);
    clean = (await server.query<{ state: unknown }>(FINGERPRINT, "clean"))[0]!.state;
    expect(JSON.stringify(clean)).toContain('"accounts_tier_id_key:true"');
  }, 120_000);
  afterAll(async () => {
    await server?.destroy();
  });

  POINTS.forEach((point, pointIndex) => {
    const fault = FAULTS[(pointIndex + majorIndex) % FAULTS.length]!;
    test(`${point.name}, struck by ${fault}: the next run ends as one clean deploy or exit 1 with a hint`, async () => {
      const database = `crash_${pointIndex}`;
      await server.createDatabase(database);
      const first = await interrupt(server, database, point, fault);
      if (fault !== "SIGKILL of the kit") expect<number[]>([EXIT.ok, EXIT.schemaFailed]).toContain(first.code);
      const state = async () => ({ point: point.name, fault, state: (await server.query<{ state: unknown }>(FINGERPRINT, database))[0]?.state });
      if (first.code === EXIT.ok) expect(await state()).toEqual({ point: point.name, fault, state: clean });
      const second = await deploy(server, database);
      if (second.code === EXIT.ok) expect(await state()).toEqual({ point: point.name, fault, state: clean });
      else {
        // Stopping is allowed only with exit 1 and a line naming what to repair.
        expect({ code: second.code, stderr: second.stderr }).toMatchObject({ code: EXIT.schemaFailed, stderr: expect.stringMatching(/^hint: /m) });
      }
    }, 120_000);
  });
}));
