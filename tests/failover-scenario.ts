/**
 * A deploy through a failover, for real: `--migrations` with
 * `PRIMARY,STANDBY?target_session_attrs=read-write` while the primary is stopped with
 * `-m immediate` in the middle of a migration and the standby promoted a second later. Shared
 * by tests/failover.test.ts and the version matrix (tests/versions.test.ts).
 */
import { expect } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import type { Cluster } from "./cluster.ts";
import { type Run, runScript, until } from "./helpers.ts";

/** A deploy's migrations: the second blocks on a lock the test holds, so the test knows when it runs. */
export function migrations(dir: string, names = ["001_accounts.sql", "002_audit.sql", "003_email.sql"]): string {
  const files: Record<string, string> = {
    "001_accounts.sql": "create table accounts (id int primary key);\ninsert into accounts values (1);\n",
    "002_audit.sql": "create table audit (id int);\ninsert into audit select id from blocker;\n",
    "003_email.sql": "alter table accounts add column email text;\n",
  };
  mkdirSync(dir, { recursive: true });
  for (const name of names) writeFileSync(join(dir, name), files[name]!);
  return dir;
}

/** The primary listed first, the standby second, read-write: what an HA user's URL looks like. */
export function primaryThenStandby(primary: Cluster, standby: Cluster, password: string, database: string): string {
  return `postgres://${primary.user}:${encodeURIComponent(password)}@127.0.0.1:${primary.port},127.0.0.1:${standby.port}/${database}?target_session_attrs=read-write`;
}

/**
 * Run the deploy and fail the primary over in the middle of migration 002: it waits on a lock
 * the test holds (seen in pg_stat_activity), the standby has replayed 001, then the primary is
 * stopped with -m immediate and the standby promoted a second later. Returns the kit's run.
 */
export async function deployThroughFailover(primary: Cluster, standby: Cluster, password: string, database: string, dir: string): Promise<Run> {
  await primary.query("create table blocker (id int); insert into blocker values (7)", database);
  await until("the standby to replay the blocker table", async () => (await standby.query(`select 1 from blocker`, database)).length === 1);
  const holder = postgres({ host: primary.host, port: primary.port, user: primary.user, password, database, max: 1, onnotice: () => {} });
  const lock = await holder.reserve();
  try {
    await lock`begin`;
    await lock`lock table blocker in access exclusive mode`;
    const running = runScript("init-database.ts", ["--migrations", migrations(dir), "--timeout", "60", "--command-timeout", "20", "--json"], {
      DATABASE_URL: primaryThenStandby(primary, standby, password, database),
    }, { killAfterMs: 90_000 });
    await until("002 to wait on the lock", async () =>
      (await primary.query(`select 1 from pg_stat_activity where datname = '${database}' and application_name = 'init-database' and wait_event_type = 'Lock'`)).length === 1);
    await until("the standby to replay 001", async () =>
      (await standby.query(`select 1 from schema_migrations where name = '001_accounts.sql'`, database)).length === 1);
    await primary.stop("immediate");
    await Bun.sleep(1_000); // the failover controller's reaction time: part of the scenario, not a synchronisation
    await standby.promote();
    return await running;
  } finally {
    lock.release();
    await holder.end({ timeout: 0 }).catch(() => {});
  }
}

/** Every step in the ledger exactly once, each applied whole and once: one row copied by 002, the column added by 003. */
export async function expectConsistentLedger(server: Cluster, database: string): Promise<void> {
  expect(await server.query(`select name, count(*)::int as n from schema_migrations group by name order by name`, database)).toEqual([
    { name: "001_accounts.sql", n: 1 }, { name: "002_audit.sql", n: 1 }, { name: "003_email.sql", n: 1 },
  ]);
  expect(await server.query(`select (select count(*)::int from audit) as audit, (select count(*)::int from accounts) as accounts,
    (select count(*)::int from information_schema.columns where table_name = 'accounts' and column_name = 'email') as email`, database))
    .toEqual([{ audit: 1, accounts: 1, email: 1 }]);
}
