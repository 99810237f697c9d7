/**
 * What users of highly available PostgreSQL live through (Patroni, CloudNativePG, RDS
 * Multi-AZ): a standby where a primary was expected, a primary that dies in the middle of a
 * deploy, a standby promoted in its place. Real primaries and streaming standbys on loopback.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { EXIT } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { events, expectNoSecret, runScript } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "fail-over:Pa55@word";

describe("a lone standby", () => {
  let primary: Cluster;
  let standby: Cluster;

  beforeAll(async () => {
    primary = await Cluster.create({ password: PASSWORD, database: "ha" });
    standby = await primary.createStandby();
  });
  afterAll(async () => {
    await standby?.destroy();
    await primary?.destroy();
  });

  test("the deadline is used whole: the last attempt is made at the deadline, then exit 3", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "2", "--json"], { DATABASE_URL: standby.url() });
    expect(run.code).toBe(EXIT.notReady);
    const attempts = events(run.stdout).filter((event) => event.event === "attempt");
    expect(attempts.every((attempt) => attempt.code === "WRONG_SESSION_ATTRS")).toBe(true);
    // Backoff with jitter would often have given up 0.5 to 1.5 s early.
    expect(attempts.at(-1)!.elapsed_ms as number).toBeGreaterThanOrEqual(1_990);
    expect(attempts.slice(0, -1).every((attempt) => (attempt.delay_ms as number) > 0)).toBe(true);
    expect(run.stderr).toContain("is the primary up?");
    expectNoSecret(run, PASSWORD);
  });
});
