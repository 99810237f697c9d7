/**
 * Every PostgreSQL a user runs: the same scenarios on each major from 13 to 18 (server
 * binaries pinned in package-lock.json, started by tests/cluster.ts): init, re-run, the
 * connectivity suite, a pg_dump restored as a schema file, a streaming standby listed first
 * with read-write, a late start, and a failover in the middle of a deploy: a test per scenario
 * per major, so a failure names both. The majors run side by side, each on its own servers, its
 * scenarios one after another (a later one uses the servers an earlier one made).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXIT } from "../init-database.ts";
import { CHECK_NAMES } from "../test-db-connectivity.ts";
import { Cluster, PG_VERSIONS, type PgVersion } from "./cluster.ts";
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
/** Every major's run of its scenarios, over once each has destroyed its servers. */
let matrix: Promise<unknown[]> | undefined;

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
  // Every major's scenarios, started together now the dump exists: the majors run side by side,
  // each test below waits for its own scenario's outcome.
  matrix = Promise.all(PG_VERSIONS.map(runMajor));
});
afterAll(async () => {
  await matrix;
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** What a major's scenarios share, made by the ones before: its servers and the runs to check for secrets. */
interface Major {
  version: PgVersion;
  /** Every server made, destroyed in reverse when the major's scenarios are over. */
  servers: Cluster[];
  primary?: Cluster;
  standby?: Cluster;
}

/** The primary made by the first scenario, or a failure saying why there is none. */
function primaryOf(major: Major): Cluster {
  if (!major.primary) throw new Error(`no primary: PostgreSQL ${major.version}'s init scenario did not start one`);
  return major.primary;
}

/** The scenarios of one major, in the order they run: each may use the servers the ones before it made (`needs` names them). */
const SCENARIOS: { name: string; needs?: string; run: (major: Major) => Promise<void> }[] = [
  {
    name: "init applies the schema and reports the server's version",
    run: async (major) => {
      const primary = (major.primary = await Cluster.create({ version: major.version, password: PASSWORD, database: "app" }));
      major.servers.push(primary);
      const init = await runScript(INIT, ["--json"], { DATABASE_URL: primary.url() });
      expectNoSecret(init, PASSWORD);
      expect(init.code).toBe(EXIT.ok);
      expect(String(events(init.stdout).find((event) => event.event === "ready")!.server_version)).toStartWith(`${major.version}.`);
    },
  },
  {
    name: "a re-run applies nothing",
    needs: "init applies the schema and reports the server's version",
    run: async (major) => {
      const rerun = await runScript(INIT, ["--json"], { DATABASE_URL: primaryOf(major).url() });
      expectNoSecret(rerun, PASSWORD);
      expect(rerun.code).toBe(EXIT.ok);
      expect(events(rerun.stdout).at(-1)).toMatchObject({ status: "done", applied: 0 });
    },
  },
  {
    name: "the connectivity suite passes every check",
    needs: "init applies the schema and reports the server's version",
    run: async (major) => {
      const suite = await runScript(SUITE, [], { DATABASE_URL: primaryOf(major).url() });
      expectNoSecret(suite, PASSWORD);
      expect(suite.stdout.trim().split("\n").at(-1)).toBe(`${CHECK_NAMES.length} passed, 0 failed`);
      expect(suite.code).toBe(0);
    },
  },
  {
    name: "a pg_dump of PostgreSQL 15 restores as a schema file, once",
    run: async (major) => {
      const primary = primaryOf(major);
      const restored = await primary.freshDatabase();
      const fromDump = await runScript(INIT, ["--schema", dumpFile], { DATABASE_URL: primary.url({ database: restored }) });
      expectNoSecret(fromDump, PASSWORD);
      expect(fromDump.stderr).toContain("applied: dump.sql");
      expect(fromDump.code).toBe(EXIT.ok);
      expect((await primary.query<{ name: string }>(`select name from users order by id`, restored)).map((row) => row.name)).toEqual(AWKWARD_NAMES);
      const dumpAgain = await runScript(INIT, ["--schema", dumpFile], { DATABASE_URL: primary.url({ database: restored }) });
      expect(dumpAgain.stdout).toContain("schema already up to date");
    },
  },
  {
    name: "with a standby listed first and read-write, the kit and the suite use the primary",
    run: async (major) => {
      const primary = primaryOf(major);
      const standby = (major.standby = await primary.createStandby());
      major.servers.push(standby);
      const database = await primary.freshDatabase();
      await until("the standby to replay the new database", async () =>
        (await standby.query(`select 1 from pg_database where datname = '${database}'`, "postgres")).length === 1);
      const standbyFirst = `postgres://${primary.user}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${standby.port},127.0.0.1:${primary.port}/${database}?target_session_attrs=read-write`;
      const onPrimary = await runScript(INIT, ["--json"], { DATABASE_URL: standbyFirst });
      expectNoSecret(onPrimary, PASSWORD);
      expect(onPrimary.code).toBe(EXIT.ok);
      expect(events(onPrimary.stdout).find((event) => event.event === "ready")).toMatchObject({ port: primary.port });
      const suiteOnPrimary = await runScript(SUITE, ["--json"], { DATABASE_URL: standbyFirst });
      expectNoSecret(suiteOnPrimary, PASSWORD);
      const checks = events(suiteOnPrimary.stdout).filter((event) => event.event === "check");
      expect(checks.filter((check) => !check.ok)).toEqual([]);
      expect(new Set(checks.map((check) => check.host))).toEqual(new Set([`127.0.0.1:${primary.port}`]));
      expect(suiteOnPrimary.code).toBe(0);
    },
  },
  {
    name: "a server that starts late is waited for through refused attempts",
    run: async (major) => {
      const late = await Cluster.create({ version: major.version, password: PASSWORD, start: false });
      major.servers.push(late);
      // The server starts once the kit has reported a refused attempt, so it is late however slow the machine is.
      let starting: Promise<void> | undefined;
      const lateRun = await runScript(INIT, ["--wait-only", "--timeout", "60", "--json"], { DATABASE_URL: late.url() }, {
        killAfterMs: 90_000,
        onStdout: (soFar) => {
          if (soFar.includes(`"event":"attempt"`)) starting ??= late.start();
        },
      });
      await starting;
      expectNoSecret(lateRun, PASSWORD);
      expect(lateRun.code).toBe(EXIT.ok);
      expect(events(lateRun.stdout).find((event) => event.event === "attempt")).toMatchObject({ code: "ECONNREFUSED" });
    },
  },
  {
    // Last, since the primary does not survive it.
    name: "a failover in the middle of a deploy leaves the promoted standby's ledger consistent",
    needs: "with a standby listed first and read-write, the kit and the suite use the primary",
    run: async (major) => {
      const primary = primaryOf(major);
      const standby = major.standby!;
      const deployed = await primary.freshDatabase();
      await until("the standby to replay the new database", async () =>
        (await standby.query(`select 1 from pg_database where datname = '${deployed}'`, "postgres")).length === 1);
      const deploy = await deployThroughFailover(primary, standby, PASSWORD, deployed, join(workDir, `deploy-${major.version}`));
      expectNoSecret(deploy, PASSWORD);
      expect(deploy.stderr).toContain("schema interrupted");
      expect(deploy.code).toBe(EXIT.ok);
      await expectConsistentLedger(standby, deployed);
    },
  },
];

/**
 * A scenario's outcome, settled (never rejected, so a failure is reported by its own test and
 * not as an unhandled rejection), per major and scenario name.
 */
const outcomes = new Map<PgVersion, Map<string, Promise<{ error?: unknown }>>>();

/**
 * Run one major's scenarios in order, each as soon as the one before it is over; a scenario
 * whose `needs` failed does not run, and its test says which one it waited for.
 */
function runMajor(version: PgVersion): Promise<unknown> {
  const major: Major = { version, servers: [] };
  const results = new Map<string, Promise<{ error?: unknown }>>();
  outcomes.set(version, results);
  let previous: Promise<unknown> = Promise.resolve();
  for (const scenario of SCENARIOS) {
    const outcome = previous.then(async () => {
      const needed = scenario.needs ? await results.get(scenario.needs)! : {};
      if (needed.error) return { error: new Error(`not run: it needs "${scenario.needs}", which failed on PostgreSQL ${version}`) };
      return scenario.run(major).then(() => ({}), (error: unknown) => ({ error }));
    });
    results.set(scenario.name, outcome);
    previous = outcome;
  }
  return previous.finally(async () => {
    for (const server of major.servers.reverse()) await server.destroy();
  });
}

for (const version of PG_VERSIONS) {
  describe(`PostgreSQL ${version}`, () => {
    for (const scenario of SCENARIOS) {
      test(scenario.name, async () => {
        const { error } = await outcomes.get(version)!.get(scenario.name)!;
        if (error) throw error;
      }, MATRIX_TIMEOUT_MS);
    }
  });
}
