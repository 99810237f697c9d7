/**
 * Every PostgreSQL a user runs: the same scenarios on each major from 13 to 18 (server
 * binaries pinned in package-lock.json, started by tests/cluster.ts): init, re-run, the
 * connectivity suite, a pg_dump restored as a schema file, a streaming standby listed first
 * with read-write, a late start, and a failover in the middle of a deploy. The majors run side
 * by side, each on its own servers.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXIT } from "../init-database.ts";
import { CHECK_NAMES } from "../test-db-connectivity.ts";
import { Cluster, PG_VERSIONS } from "./cluster.ts";
import { deployThroughFailover, expectConsistentLedger } from "./failover-scenario.ts";
import { cleanEnv, events, expectNoSecret, runScript, until } from "./helpers.ts";

const INIT = "init-database.ts";
const SUITE = "test-db-connectivity.ts";
const PASSWORD = "matrix:Pa55@word/13-18";
/** Debian's pg_dump 15 (postgresql-client-15, installed by tests/system-tools.sh): it reads servers up to 15. */
const PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump";
/** Six majors side by side on two cores, beside whatever else runs: "did not hang", generously. */
const MATRIX_TIMEOUT_MS = 300_000;
const AWKWARD_NAMES = ["tab\there; 'quoted'", "new\nline \\. backslash"];

let workDir: string;
/** A pg_dump (schema and data, less the ledger) of a database the kit initialised on PostgreSQL 15: what users restore into a new server. */
let dumpFile: string;

beforeAll(async () => {
  if (!existsSync(PG_DUMP)) throw new Error(`${PG_DUMP} is missing: run bash tests/system-tools.sh (installs postgresql-client-15)`);
  workDir = mkdtempSync(join(tmpdir(), "matrix-"));
  const source = await Cluster.create({ password: PASSWORD, database: "source" });
  try {
    expect((await runScript(INIT, [], { DATABASE_URL: source.url() })).code).toBe(EXIT.ok);
    const { default: postgres } = await import("postgres");
    const sql = postgres(source.url(), { max: 1, onnotice: () => {} });
    try {
      for (const [index, name] of AWKWARD_NAMES.entries()) await sql`insert into users (email, name) values (${`u${index}@example.com`}, ${name})`;
    } finally {
      await sql.end({ timeout: 1 });
    }
    dumpFile = join(workDir, "dump.sql");
    writeFileSync(dumpFile, execFileSync(PG_DUMP, ["-h", source.host, "-p", String(source.port), "-U", source.user, "--exclude-table=schema_migrations", "source"], { env: cleanEnv({ PGPASSWORD: PASSWORD }), encoding: "utf8" }));
  } finally {
    await source.destroy();
  }
});
afterAll(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

for (const version of PG_VERSIONS) {
  test.concurrent(`PostgreSQL ${version}: init, re-run, the suite, a pg_dump restored, a standby listed first, a late start, a failover mid-deploy`, async () => {
    const servers: Cluster[] = [];
    try {
      const primary = await Cluster.create({ version, password: PASSWORD, database: "app" });
      servers.push(primary);

      const init = await runScript(INIT, ["--json"], { DATABASE_URL: primary.url() });
      expect(init.code).toBe(EXIT.ok);
      expect(String(events(init.stdout).find((event) => event.event === "ready")!.server_version)).toStartWith(`${version}.`);
      const rerun = await runScript(INIT, ["--json"], { DATABASE_URL: primary.url() });
      expect(rerun.code).toBe(EXIT.ok);
      expect(events(rerun.stdout).at(-1)).toMatchObject({ status: "done", applied: 0 });

      const suite = await runScript(SUITE, [], { DATABASE_URL: primary.url() });
      expect(suite.stdout.trim().split("\n").at(-1)).toBe(`${CHECK_NAMES.length} passed, 0 failed`);
      expect(suite.code).toBe(0);

      const restored = await primary.freshDatabase();
      const fromDump = await runScript(INIT, ["--schema", dumpFile], { DATABASE_URL: primary.url({ database: restored }) });
      expect(fromDump.stderr).toContain("applied: dump.sql");
      expect(fromDump.code).toBe(EXIT.ok);
      expect((await primary.query<{ name: string }>(`select name from users order by id`, restored)).map((row) => row.name)).toEqual(AWKWARD_NAMES);
      const dumpAgain = await runScript(INIT, ["--schema", dumpFile], { DATABASE_URL: primary.url({ database: restored }) });
      expect(dumpAgain.stdout).toContain("schema already up to date");

      const standby = await primary.createStandby();
      servers.push(standby);
      const database = await primary.freshDatabase();
      await until("the standby to replay the new database", async () =>
        (await standby.query(`select 1 from pg_database where datname = '${database}'`, "postgres")).length === 1);
      const standbyFirst = `postgres://${primary.user}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${standby.port},127.0.0.1:${primary.port}/${database}?target_session_attrs=read-write`;
      const onPrimary = await runScript(INIT, ["--json"], { DATABASE_URL: standbyFirst });
      expect(onPrimary.code).toBe(EXIT.ok);
      expect(events(onPrimary.stdout).find((event) => event.event === "ready")).toMatchObject({ port: primary.port });
      const suiteOnPrimary = await runScript(SUITE, ["--json"], { DATABASE_URL: standbyFirst });
      const checks = events(suiteOnPrimary.stdout).filter((event) => event.event === "check");
      expect(checks.filter((check) => !check.ok)).toEqual([]);
      expect(new Set(checks.map((check) => check.host))).toEqual(new Set([`127.0.0.1:${primary.port}`]));
      expect(suiteOnPrimary.code).toBe(0);

      const late = await Cluster.create({ version, password: PASSWORD, start: false });
      servers.push(late);
      // The server starts once the kit has reported a refused attempt, so it is late however slow the machine is.
      let starting: Promise<void> | undefined;
      const lateRun = await runScript(INIT, ["--wait-only", "--timeout", "60", "--json"], { DATABASE_URL: late.url() }, {
        killAfterMs: 90_000,
        onStdout: (soFar) => {
          if (soFar.includes(`"event":"attempt"`)) starting ??= late.start();
        },
      });
      await starting;
      expect(lateRun.code).toBe(EXIT.ok);
      expect(events(lateRun.stdout).find((event) => event.event === "attempt")).toMatchObject({ code: "ECONNREFUSED" });

      // Last, since the primary does not survive it: the failover in the middle of a deploy.
      const deployed = await primary.freshDatabase();
      await until("the standby to replay the new database", async () =>
        (await standby.query(`select 1 from pg_database where datname = '${deployed}'`, "postgres")).length === 1);
      const deploy = await deployThroughFailover(primary, standby, PASSWORD, deployed, join(workDir, `deploy-${version}`));
      expect(deploy.stderr).toContain("schema interrupted");
      expect(deploy.code).toBe(EXIT.ok);
      await expectConsistentLedger(standby, deployed);

      for (const run of [init, rerun, suite, fromDump, onPrimary, suiteOnPrimary, lateRun, deploy]) expectNoSecret(run, PASSWORD);
    } finally {
      for (const server of servers.reverse()) await server.destroy();
    }
  }, MATRIX_TIMEOUT_MS);
}
