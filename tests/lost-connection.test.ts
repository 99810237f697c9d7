/**
 * A lost connection never leaves the kit idle: every await on it ends at once. Each fault is
 * caused for real (a server stopped and started, a session terminated) and each test waits on
 * observable state (a query that failed, a row in pg_stat_activity), never on a fixed sleep.
 * "Did not hang" is proven against --command-timeout 60: a wait for the client-side deadline
 * would take more than 60 s, the bound here is 20 s.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { connect, errorCode, withDeadline } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { expectNoSecret, runScript, until, useCluster } from "./helpers.ts";

const PASSWORD = "lost-Pa55-w0rd";
/** Far below --command-timeout 60 plus its grace, which a hung await would wait for. */
const DID_NOT_HANG_MS = 20_000;

let cluster: Cluster;
let workDir: string;
useCluster({ password: PASSWORD }, (made) => ({ cluster, dir: workDir } = made));

describe("a lost connection ends every await on it at once", () => {
  test("a connect() pool answers again as soon as a restarted server does, after every connection was refused", async () => {
    const sql = await connect({ url: cluster.url(), commandTimeout: 60, timeout: 10 }, { max: 4 }, {});
    try {
      expect((await withDeadline(sql`select 1 as one`, 5_000))[0]).toEqual({ one: 1 });
      await cluster.stop("fast");
      // As many queries as the pool has connections, each refused while nothing listens.
      const refused = await Promise.all(Array.from({ length: 4 }, () => withDeadline(sql`select 1`, DID_NOT_HANG_MS).then(() => "answered", errorCode)));
      expect(refused).toEqual(Array(4).fill("ECONNREFUSED"));
      await cluster.start();
      const startedAt = performance.now();
      expect((await withDeadline(sql`select 2 as two`, DID_NOT_HANG_MS))[0]).toEqual({ two: 2 });
      expect(performance.now() - startedAt).toBeLessThan(DID_NOT_HANG_MS);
    } finally {
      await sql.end({ timeout: 1 });
    }
  });

  test("a no-transaction step whose session is terminated mid CREATE INDEX CONCURRENTLY reconnects at once", async () => {
    const database = await cluster.freshDatabase();
    await cluster.query("create table items (id int)", database);
    const dir = join(workDir, "cic");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "001_index.sql"), "-- init-database: no-transaction\ncreate index concurrently items_id_idx on items (id);\n");
    // An open transaction with an xid: CREATE INDEX CONCURRENTLY waits for it, so it is surely running when terminated.
    const holder = postgres(cluster.url({ database }), { max: 1, onnotice: () => {} });
    const reserved = await holder.reserve();
    try {
      await reserved`begin`;
      await reserved`select txid_current()`;
      const run = runScript("init-database.ts", ["--migrations", dir, "--command-timeout", "60", "--timeout", "60"], { DATABASE_URL: cluster.url({ database }) }, { killAfterMs: 90_000 });
      const building = `select pid from pg_stat_activity where datname = '${database}' and state = 'active' and query like 'create index concurrently%'`;
      await until("CREATE INDEX CONCURRENTLY waiting for the open transaction", async () => (await cluster.query(building, "postgres")).length > 0, 20_000);
      await cluster.query(`select pg_terminate_backend(pid) from (${building}) b`, "postgres");
      const terminatedAt = performance.now();
      await reserved`rollback`;
      const result = await run;
      expectNoSecret(result, PASSWORD);
      expect(result.stderr).toContain("schema interrupted");
      expect(performance.now() - terminatedAt).toBeLessThan(DID_NOT_HANG_MS);
    } finally {
      reserved.release();
      await holder.end({ timeout: 1 });
    }
  });
});
