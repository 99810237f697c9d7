/**
 * A lost connection never leaves the kit idle: for every kind of schema step, and for the pool
 * connect() returns, the connection is lost for real (pg_terminate_backend, a restart, a stop and
 * a later start) at a moment seen on the server (the statement in pg_stat_activity or
 * pg_stat_progress_create_index), and the work goes on with a fresh connection at once, long
 * before --command-timeout (60 s here; "recovered in 20 s" is the generous did-not-hang bound;
 * timings are in bench/pool-restart.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { EXIT, NO_TRANSACTION_MARKER } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { cleanEnv, events, expectNoSecret, ROOT, runScript, until, useCluster, type Run } from "./helpers.ts";

const PASSWORD = "lost-Pa55-w0rd";
/** Far longer than any recovery may take: waiting for it shows up as a failed "recovered" bound. */
const COMMAND_TIMEOUT = "60";
const RECOVERED_MS = 20_000;
const LEDGER_LOCK = "hashtext('pg-startup-kit:public.schema_migrations')";

let cluster: Cluster;
let dir: string;
let admin: postgres.Sql;
useCluster({ password: PASSWORD }, (made) => ({ cluster, dir } = made));
beforeAll(() => {
  admin = postgres(cluster.url({ database: "postgres" }), { max: 3, onnotice: () => {}, fetch_types: false });
});
afterAll(async () => {
  await admin?.end({ timeout: 1 });
});

/** Run the kit with --json and a 60 s --command-timeout; the run must not print the password. */
function deploy(database: string, args: string[]): Promise<Run> {
  return runScript("init-database.ts", [...args, "--json", "--timeout", "90", "--command-timeout", COMMAND_TIMEOUT], { DATABASE_URL: cluster.url({ database }) }, { killAfterMs: 100_000 })
    .then((run) => (expectNoSecret(run, PASSWORD), run));
}

/**
 * Poll the server until `find` (a query returning the pid of the kit's session at the fault point)
 * sees it, then terminate that session and run `after`. Fails if the run ends first.
 */
async function terminateWhen(what: string, find: string, running: Promise<unknown>, after?: () => Promise<unknown>): Promise<void> {
  let ended = false;
  running.then(() => (ended = true), () => (ended = true));
  for (;;) {
    const [row] = await admin.unsafe<{ pid: number }[]>(find);
    if (row) {
      await admin`select pg_terminate_backend(${row.pid})`;
      await after?.();
      return;
    }
    if (ended) throw new Error(`the kit ended before ${what}`);
    await Bun.sleep(5); // pacing of the poll; what it waits for is the row
  }
}

/**
 * The kit's session in `database` running a statement like `pattern` (a LIKE pattern), optionally
 * waiting on a lock. Anywhere in the query text: a transactional step's statements go as one query.
 */
const kitRunning = (database: string, pattern: string, extra = "") =>
  `select pid from pg_stat_activity where datname = '${database}' and application_name = 'init-database' and query ilike '%${pattern}' ${extra} limit 1`;

/** The run recovered by reconnecting, not by waiting out a deadline, and ended well. */
function expectRecovered(run: Run, { reconnected = true } = {}): void {
  // The kit said so, or (a pool connection lost while idle) postgres.js opened another on its own.
  if (reconnected) expect(run.stderr).toContain("schema interrupted");
  if (run.code !== EXIT.ok) console.error(run.stderr);
  expect(run.code).toBe(EXIT.ok);
  expect(run.ms).toBeLessThan(RECOVERED_MS);
  expect(events(run.stdout).at(-1)).toMatchObject({ event: "summary", exit_code: 0 });
}

async function ledger(database: string): Promise<string[]> {
  return (await cluster.query<{ name: string }>(`select name from schema_migrations order by name`, database)).map((row) => row.name);
}

/** A table of `rows` rows made before the deploy: what a concurrent index build takes seconds on. */
async function accounts(database: string, rows: number): Promise<void> {
  await cluster.query(`create table accounts (id bigint primary key, balance bigint not null); insert into accounts select g, (g::bigint * 7919) % 100003 from generate_series(1, ${rows}) g`, database);
  await cluster.query(`vacuum analyze accounts`, database);
}

describe("a schema step whose session is terminated goes on with a fresh session at once", () => {
  test("a transactional step, mid-statement", async () => {
    const database = await cluster.freshDatabase();
    const file = join(dir, "big-insert.sql");
    writeFileSync(file, "create table big (id int primary key, v int);\ninsert into big select g, g % 100 from generate_series(1, 1000000) g;\n");
    const running = deploy(database, ["--schema", file]);
    await terminateWhen("the insert ran", kitRunning(database, "insert into big%", "and state = 'active'"), running);
    const run = await running;
    expectRecovered(run);
    expect(await cluster.query(`select count(*)::int as n, sum(v)::bigint as s from big`, database)).toEqual([{ n: 1_000_000, s: "49500000" }]);
    expect(await ledger(database)).toEqual(["big-insert.sql"]);
  });

  test("a no-transaction step, mid CREATE INDEX CONCURRENTLY: rebuilt, valid", async () => {
    const database = await cluster.freshDatabase();
    await accounts(database, 1_500_000);
    const file = join(dir, "concurrent-index.sql");
    writeFileSync(file, `${NO_TRANSACTION_MARKER}\ncreate index concurrently if not exists accounts_balance_idx on accounts (balance);\n`);
    const running = deploy(database, ["--schema", file]);
    await terminateWhen("the index build was under way", `select p.pid from pg_stat_progress_create_index p join pg_stat_activity a using (pid)
      where a.datname = '${database}' and a.application_name = 'init-database' and p.phase like 'building index%' limit 1`, running);
    const run = await running;
    expectRecovered(run);
    expect(await cluster.query(`select indisvalid, indisready from pg_index where indexrelid = 'accounts_balance_idx'::regclass`, database))
      .toEqual([{ indisvalid: true, indisready: true }]);
    expect(await ledger(database)).toEqual(["concurrent-index.sql"]);
  });

  test("a COPY, mid-stream", async () => {
    const database = await cluster.freshDatabase();
    const file = join(dir, "copy.sql");
    const rows = Array.from({ length: 1_000_000 }, (_, i) => `${i + 1}\trow ${i + 1}`).join("\n");
    writeFileSync(file, `create table copied (id int primary key, label text);\ncopy copied (id, label) from stdin;\n${rows}\n\\.\n`);
    const running = deploy(database, ["--schema", file]);
    await terminateWhen("the COPY ran", kitRunning(database, "copy copied%", "and state = 'active'"), running);
    const run = await running;
    expectRecovered(run);
    expect(await cluster.query(`select count(*)::int as n, sum(id)::bigint as s from copied`, database)).toEqual([{ n: 1_000_000, s: "500000500000" }]);
  });

  for (const noTransaction of [false, true]) {
    test(`the ledger write of a ${noTransaction ? "no-transaction" : "transactional"} step, waiting on a lock`, async () => {
      const database = await cluster.freshDatabase();
      const migrations = join(dir, `ledger-${noTransaction}`);
      mkdirSync(migrations);
      writeFileSync(join(migrations, "001_first.sql"), "create table first (id int);\n");
      expect((await deploy(database, ["--migrations", migrations])).code).toBe(EXIT.ok);
      // A no-transaction step runs again from its first statement after a lost ledger write, so its statements are safe to repeat.
      writeFileSync(join(migrations, "002_second.sql"), `${noTransaction ? NO_TRANSACTION_MARKER + "\n" : ""}create table if not exists second (id int primary key);\ninsert into second values (1) on conflict do nothing;\n`);
      // Another session holds the ledger so that the kit's INSERT into it waits, visibly; released once the kit's session is gone.
      const holder = postgres(cluster.url({ database }), { max: 1, onnotice: () => {}, fetch_types: false });
      let release = () => {};
      try {
        const released = new Promise<void>((resolve) => (release = resolve));
        let locked = () => {};
        const holding = new Promise<void>((resolve) => (locked = resolve));
        const transaction = holder.begin(async (tx) => {
          await tx`lock table schema_migrations in exclusive mode`;
          locked();
          await released;
        });
        await holding;
        const running = deploy(database, ["--migrations", migrations]);
        await terminateWhen("the ledger write waited", kitRunning(database, "insert into %schema_migrations%", "and wait_event_type = 'Lock'"), running, async () => {
          release();
          await transaction;
        });
        const run = await running;
        expectRecovered(run);
      } finally {
        release();
        await holder.end({ timeout: 1 });
      }
      expect(await ledger(database)).toEqual(["001_first.sql", "002_second.sql"]);
      expect(await cluster.query(`select count(*)::int as n from second`, database)).toEqual([{ n: 1 }]);
    });

    test(`the advisory-lock poll of a ${noTransaction ? "no-transaction" : "transactional"} step`, async () => {
      const database = await cluster.freshDatabase();
      const file = join(dir, `poll-${noTransaction}.sql`);
      writeFileSync(file, `${noTransaction ? NO_TRANSACTION_MARKER + "\n" : ""}create table polled (id int);\n`);
      // Another session holds the kit's lock, so the kit polls; released once the kit's session is gone.
      // One connection: the lock is taken and released on the same session.
      const holder = postgres(cluster.url({ database }), { max: 1, onnotice: () => {}, fetch_types: false });
      await holder.unsafe(`select pg_advisory_lock(${LEDGER_LOCK})`);
      try {
        const running = deploy(database, ["--schema", file]);
        const poll = noTransaction ? "%pg_try_advisory_lock(%" : "%pg_try_advisory_xact_lock(%";
        await terminateWhen("the kit polled for its lock", kitRunning(database, poll), running, () => holder.unsafe(`select pg_advisory_unlock(${LEDGER_LOCK})`));
        const run = await running;
        // Between two polls of a transactional step no session is reserved: the next poll takes another.
        expectRecovered(run, { reconnected: noTransaction });
      } finally {
        await holder.end({ timeout: 1 });
      }
      expect(await ledger(database)).toEqual([file.split("/").pop()!]);
    });
  }
});

/** What the service's pool saw: when each query ended (Date.now()), how long it took, and how. */
interface Outcome { at: number; ms: number; code?: string }

/** Start tests/pool-service.ts (a connect() pool running `select 1` every 10 ms) and collect what it reports. */
function serviceLoop(inTransaction: boolean) {
  const outcomes: Outcome[] = [];
  const child = Bun.spawn([process.execPath, join(ROOT, "tests", "pool-service.ts"), ...(inTransaction ? ["--in-transaction"] : [])], {
    cwd: ROOT, env: cleanEnv({ DATABASE_URL: cluster.url() }), stdout: "pipe", stderr: "inherit", stdin: "ignore",
  });
  const read = (async () => {
    let rest = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      const lines = (rest + decoder.decode(chunk, { stream: true })).split("\n");
      rest = lines.pop()!;
      for (const line of lines) if (line) outcomes.push(JSON.parse(line) as Outcome);
    }
  })();
  return {
    outcomes,
    answeredSince: (since: number) => outcomes.some((outcome) => outcome.at > since && !outcome.code),
    lastAnswerAt: () => outcomes.findLast((outcome) => !outcome.code)?.at ?? 0,
    stop: async () => {
      child.kill("SIGTERM");
      // A guard, not a wait: a service that does not end on SIGTERM is killed.
      const guard = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await child.exited;
      clearTimeout(guard);
      await read;
    },
  };
}

describe("a connect() pool answers again as soon as the server does", () => {
  const faults: [string, (server: Cluster, loop: ReturnType<typeof serviceLoop>) => Promise<void>][] = [
    ["a restart (-m fast)", (server) => server.restart("fast")],
    ["a restart (-m immediate)", (server) => server.restart("immediate")],
    ["a stop, and a start once the pool has had no answer for 2 s", async (server, loop) => {
      await server.stop("fast");
      try {
        // The outage's length is the fault here, measured on what the pool saw (queries wait or fail meanwhile).
        await until("2 s without an answer", async () => Date.now() - loop.lastAnswerAt() >= 2_000, RECOVERED_MS);
      } finally {
        await server.start();
      }
    }],
    ["its sessions terminated", async (server) => {
      await server.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pool-under-test'`);
    }],
  ];
  for (const [fault, cause] of faults) {
    for (const inTransaction of [false, true]) {
      test(`${fault}, queries ${inTransaction ? "in transactions" : "outside transactions"}`, async () => {
        const loop = serviceLoop(inTransaction);
        try {
          await until("the pool answering", async () => loop.answeredSince(0), RECOVERED_MS);
          // The pool's sessions exist before the fault strikes them.
          await until("the pool's sessions on the server", async () => (await cluster.query(`select 1 from pg_stat_activity where application_name = 'pool-under-test'`)).length > 0);
          await cause(cluster, loop);
          const backAt = Date.now();
          await until("an answer after the server is back", async () => loop.answeredSince(backAt), RECOVERED_MS);
          await loop.stop();
          // No query waited anywhere near its deadline (--command-timeout plus a grace).
          expect(Math.max(...loop.outcomes.map((outcome) => outcome.ms))).toBeLessThan(RECOVERED_MS);
        } finally {
          await loop.stop();
        }
      }, 60_000);
    }
  }
});
