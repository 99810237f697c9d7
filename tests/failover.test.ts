/**
 * What users of highly available PostgreSQL live through (Patroni, CloudNativePG, RDS
 * Multi-AZ): a standby where a primary was expected, a primary that dies in the middle of a
 * deploy, a standby promoted in its place. Real primaries and streaming standbys on loopback.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, errorCode, EXIT, withDeadline } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { deployThroughFailover, expectConsistentLedger, migrations, primaryThenStandby } from "./failover-scenario.ts";
import { FaultProxy } from "./proxy.ts";
import { events, expectNoSecret, runScript, until, useCluster } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "fail-over:Pa55@word";

describe("the deadline, used whole", () => {
  let primary: Cluster;
  let standby: Cluster;
  useCluster({ password: PASSWORD, database: "ha", standby: true }, (made) => ([primary, standby] = [made.cluster, made.standby!]));

  test("backing off from a host that hangs up, the last attempt is made at the deadline, then exit 3", async () => {
    const proxy = await FaultProxy.start(undefined, { mode: "close" });
    try {
      const run = await runScript(SCRIPT, ["--wait-only", "--timeout", "2", "--json"], { DATABASE_URL: primary.url({ port: proxy.port }) });
      expect(run.code).toBe(EXIT.notReady);
      const attempts = events(run.stdout).filter((event) => event.event === "attempt");
      expect(attempts.every((attempt) => attempt.class === "busy")).toBe(true);
      // Jittered backoff (up to 1.6 s by the sixth attempt) used to give up whenever the next delay passed the deadline.
      expect(attempts.at(-1)!.elapsed_ms as number).toBeGreaterThanOrEqual(1_990);
      expect(attempts.slice(0, -1).every((attempt) => (attempt.delay_ms as number) > 0)).toBe(true);
    } finally {
      await proxy.close();
    }
  });

  test("a lone standby is polled for a promotion until the deadline, then exit 3", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "2", "--json"], { DATABASE_URL: standby.url() });
    expect(run.code).toBe(EXIT.notReady);
    const attempts = events(run.stdout).filter((event) => event.event === "attempt");
    expect(attempts.every((attempt) => attempt.code === "WRONG_SESSION_ATTRS" && attempt.class === "starting")).toBe(true);
    expect(attempts.at(-1)!.elapsed_ms as number).toBeGreaterThanOrEqual(1_990);
    expect(attempts.length).toBeLessThanOrEqual(41); // polled, 20 a second at most
    expect(run.stderr).toContain("is the primary up?");
    expectNoSecret(run, PASSWORD);
  });
});

describe("a failover in the middle of a deploy", () => {
  let primary: Cluster;
  let standby: Cluster;
  let workDir: string;

  beforeEach(async () => {
    workDir = mkdtempSync(join(tmpdir(), "failover-"));
    primary = await Cluster.create({ password: PASSWORD, database: "ha" });
    standby = await primary.createStandby();
  });
  afterEach(async () => {
    await standby?.destroy();
    await primary?.destroy();
    rmSync(workDir, { recursive: true, force: true });
  });

  const bothHosts = () => primaryThenStandby(primary, standby, PASSWORD, "ha");

  test("the primary dies in the middle of a migration and the standby is promoted: exit 0, each step once", async () => {
    const run = await deployThroughFailover(primary, standby, PASSWORD, "ha", workDir);
    expect(run.stderr).toContain("schema interrupted");
    expect(run.code).toBe(EXIT.ok);
    const ready = events(run.stdout).filter((event) => event.event === "ready");
    expect(ready.at(0)).toMatchObject({ port: primary.port });
    expect(ready.at(-1)).toMatchObject({ port: standby.port });
    await expectConsistentLedger(standby, "ha");
    expectNoSecret(run, PASSWORD);
  });

  test("connect() follows a failover: a service querying every 10 ms sees errors only until the promotion", async () => {
    await primary.query("create table ticks (at timestamptz not null default clock_timestamp())");
    const sql = await connect({ url: bothHosts(), timeout: 10, connectTimeout: 3 }, { max: 4 }, {});
    const outcomes: { startedAt: number; ok: boolean; port?: number; code?: string }[] = [];
    let running = true;
    const service = (async () => {
      while (running) {
        const startedAt = performance.now();
        // A write: it would fail on a standby, so a success proves the pool found the primary.
        await withDeadline(sql<{ port: number }[]>`insert into ticks default values returning inet_server_port() as port`, 10_000)
          .then(([row]) => outcomes.push({ startedAt, ok: true, port: row!.port }), (error) => outcomes.push({ startedAt, ok: false, code: errorCode(error) }));
        await Bun.sleep(10);
      }
    })();
    try {
      await until("the service to write to the primary", async () => outcomes.filter((outcome) => outcome.ok).length >= 20);
      const killedAt = performance.now();
      await primary.stop("immediate");
      await Bun.sleep(1_000); // the failover controller's reaction time: part of the scenario
      await standby.promote();
      const promotedAt = performance.now();
      await until("the service to write to the promoted standby", async () =>
        outcomes.filter((outcome) => outcome.startedAt > promotedAt && outcome.ok).length >= 50);
      running = false;
      await service;
      expect(outcomes.filter((outcome) => !outcome.ok && outcome.startedAt < killedAt)).toEqual([]);
      expect(outcomes.filter((outcome) => !outcome.ok && outcome.startedAt >= promotedAt)).toEqual([]);
      expect(new Set(outcomes.filter((outcome) => outcome.startedAt >= promotedAt).map((outcome) => outcome.port))).toEqual(new Set([standby.port]));
    } finally {
      running = false;
      await service;
      await sql.end({ timeout: 1 }).catch(() => {});
    }
  });

  test("the standby was promoted before the deploy: exit 0, the steps applied before kept, the rest applied once", async () => {
    await primary.query("create table blocker (id int); insert into blocker values (7)");
    const first = await runScript(SCRIPT, ["--migrations", migrations(join(workDir, "v1"), ["001_accounts.sql"])], { DATABASE_URL: bothHosts() });
    expect(first.code).toBe(EXIT.ok);
    await until("the standby to replay 001", async () =>
      (await standby.query(`select 1 from schema_migrations where name = '001_accounts.sql'`)).length === 1);
    await primary.stop("immediate");
    await standby.promote();
    const run = await runScript(SCRIPT, ["--migrations", migrations(join(workDir, "v2")), "--timeout", "30", "--json"], { DATABASE_URL: bothHosts() });
    expect(run.code).toBe(EXIT.ok);
    // 001 is not reported: it was already in the promoted server's ledger.
    expect(events(run.stdout).filter((event) => event.event === "schema").map((event) => [event.step, event.status])).toEqual([
      ["002_audit.sql", "applied"], ["003_email.sql", "applied"],
    ]);
    await expectConsistentLedger(standby, "ha");
  });
});
