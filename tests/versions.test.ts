/**
 * Every PostgreSQL a user runs: the same scenarios on each major from 13 to 18 (server
 * binaries pinned in package-lock.json, started by tests/cluster.ts): init, re-run, the
 * connectivity suite, a streaming standby listed first with read-write, and a late start.
 * The majors run side by side, each on its own servers and ports.
 */
import { expect, test } from "bun:test";
import { EXIT } from "../init-database.ts";
import { CHECK_NAMES } from "../test-db-connectivity.ts";
import { Cluster, PG_VERSIONS } from "./cluster.ts";
import { events, expectNoSecret, runScript, until } from "./helpers.ts";

const INIT = "init-database.ts";
const SUITE = "test-db-connectivity.ts";
const PASSWORD = "matrix:Pa55@word/13-18";

for (const version of PG_VERSIONS) {
  test.concurrent(`PostgreSQL ${version}: init, re-run, the suite, a standby listed first, a late start`, async () => {
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

      for (const run of [init, rerun, suite, onPrimary, suiteOnPrimary, lateRun]) expectNoSecret(run, PASSWORD);
    } finally {
      for (const server of servers.reverse()) await server.destroy();
    }
  });
}
