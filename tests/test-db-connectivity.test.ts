import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CHECK_NAMES, formatUptime, junitXml, selectChecks } from "../test-db-connectivity.ts";
import { Cluster } from "./cluster.ts";
import { configureTls, events, expectNoSecret, runScript, useCluster } from "./helpers.ts";

const SUITE = "test-db-connectivity.ts";
const PASSWORD = "suite-Pa55:w/rd";

/** A well-formedness check: every tag closes in order, and the document has one root. */
function parseXml(xml: string): { name: string; attributes: Record<string, string> }[] {
  const body = xml.replace(/^<\?xml[^>]*\?>\s*/, "");
  const stack: string[] = [];
  const elements: { name: string; attributes: Record<string, string> }[] = [];
  let roots = 0;
  for (const [, closing, name, rest, selfClosing] of body.matchAll(/<(\/?)([\w-]+)([^>]*?)(\/?)>/g)) {
    if (closing) {
      expect(stack.pop()).toBe(name!);
      continue;
    }
    if (stack.length === 0) roots++;
    const attributes = Object.fromEntries([...rest!.matchAll(/([\w-]+)="([^"]*)"/g)].map((match) => [match[1]!, match[2]!]));
    elements.push({ name: name!, attributes });
    if (!selfClosing) stack.push(name!);
  }
  expect(stack).toEqual([]);
  expect(roots).toBe(1);
  return elements;
}

describe("pure helpers", () => {
  test("uptime reads as a person would say it, never \"0 ms\" for a young server", () => {
    expect(formatUptime(450.4)).toBe("450 ms");
    expect(formatUptime(42_000)).toBe("42.0 s");
    expect(formatUptime(7 * 60_000 + 5_000)).toBe("7 min");
    expect(formatUptime(5.2 * 3_600_000)).toBe("5.2 h");
    expect(formatUptime(3.1 * 86_400_000)).toBe("3.1 days");
  });

  test("--only matches check names loosely and rejects unknown ones", () => {
    expect(selectChecks("basic,statement-timeout")).toEqual(["Basic Connection", "Statement Timeout"]);
    expect(selectChecks("Database Health")).toEqual(["Database Health"]);
    expect(selectChecks(undefined)).toEqual([...CHECK_NAMES]);
    expect(() => selectChecks("nonsense")).toThrow(/no check named "nonsense"/);
  });

  test("JUnit XML escapes details and marks failures", () => {
    const xml = junitXml([
      { name: "Basic Connection", ok: true, ms: 12, detail: "ok <fine> & \"quoted\"" },
      { name: "Reconnect", ok: false, ms: 5, detail: "broke", hint: "fix it" },
    ], 17);
    const elements = parseXml(xml);
    expect(elements.filter((element) => element.name === "testcase")).toHaveLength(2);
    expect(elements.filter((element) => element.name === "failure")).toHaveLength(1);
    expect(elements.find((element) => element.name === "testsuite")!.attributes).toMatchObject({ tests: "2", failures: "1" });
  });
});

describe("the suite against real servers", () => {
  let cluster: Cluster;
  let workDir: string;
  useCluster({ password: PASSWORD, database: "app" }, async (made) => {
    ({ cluster, dir: workDir } = made);
    const init = await runScript("init-database.ts", [], { DATABASE_URL: cluster.url() });
    expect(init.code).toBe(0);
  });

  test("passes all seven checks on a healthy, initialised database", async () => {
    const junit = join(workDir, "junit.xml");
    const run = await runScript(SUITE, ["--junit", junit], { DATABASE_URL: cluster.url() });
    expect(run.stderr).not.toContain("error");
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split("\n");
    expect(lines.at(-1)).toBe("7 passed, 0 failed");
    expect(run.stdout).toContain("TEST SUMMARY");
    for (const name of CHECK_NAMES) expect(run.stdout).toMatch(new RegExp(`PASSED  ${name} on 127\\.0\\.0\\.1:${cluster.port} \\(\\d`));
    expect(run.stdout).toMatch(/20\/20 connections .* server allows 100/);
    const testcases = parseXml(readFileSync(junit, "utf8")).filter((element) => element.name === "testcase");
    expect(testcases.map((element) => element.attributes.name)).toEqual([...CHECK_NAMES]);
    expectNoSecret(run, PASSWORD);
    expect(readFileSync(junit, "utf8")).not.toContain(PASSWORD);
  });

  test("--json prints one object per check and a summary", async () => {
    const run = await runScript(SUITE, ["--json", "--only", "basic,health"], { DATABASE_URL: cluster.url() });
    expect(run.code).toBe(0);
    const lines = events(run.stdout);
    expect(lines.map((line) => line.name ?? line.event)).toEqual(["Basic Connection", "Database Health", "summary"]);
    expect(lines.at(-1)).toMatchObject({ ok: true, passed: 2, failed: 0 });
  });

  test("fails fast with a reason on a wrong password", async () => {
    const run = await runScript(SUITE, [], { DATABASE_URL: cluster.url({ password: "not-the-password" }) }, { killAfterMs: 30_000 });
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/FAILED  Basic Connection .*28P01/);
    expect(run.stdout.trim().split("\n").at(-1)).toBe("0 passed, 7 failed");
    expect(run.stdout.match(/hint: /g)).toHaveLength(1);
    expectNoSecret(run, "not-the-password", PASSWORD);
  });

  test("on a missing database, hints at the command that creates it, not at a flag the suite lacks", async () => {
    const run = await runScript(SUITE, ["--only", "basic"], { DATABASE_URL: cluster.url({ database: `missing_${Date.now()}` }) }, { killAfterMs: 30_000 });
    expect(run.code).toBe(1);
    expect(run.stdout).toContain("hint: database \"missing_");
    expect(run.stdout).toContain("does not exist: fix the name, or create it with: bun run init-database.ts --create-database");
    const help = await runScript(SUITE, ["--create-database"], {});
    expect(help.code).toBe(2); // the suite indeed has no such flag: the hint must not tell it to use one
  });

  test("refuses a concurrency the server cannot hold, saying how many it allows", async () => {
    const run = await runScript(SUITE, ["--only", "concurrent", "--concurrency", "500"], { DATABASE_URL: cluster.url() });
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/--concurrency 500 exceeds the \d+ free connection slots \(max_connections=100/);
  });

  test("fails on a schema that was never applied", async () => {
    const database = await cluster.freshDatabase();
    const run = await runScript(SUITE, ["--only", "schema"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(1);
    expect(run.stdout).toContain("missing tables: users, orders, payments, notifications");
  });

  test("an unknown check name is a usage error", async () => {
    const run = await runScript(SUITE, ["--only", "everything"], { DATABASE_URL: cluster.url() });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('no check named "everything"');
  });

  test("runs many times in a row without hanging or a stack trace", async () => {
    // Reconnect left postgres.js throwing from a timer on its dropped socket about 1 run in 6:
    // sixteen rounds see it with a probability of about 94% if it comes back.
    for (let round = 0; round < 16; round++) {
      const run = await runScript(SUITE, ["--only", "basic,reconnect,statement-timeout"], { DATABASE_URL: cluster.url() }, { killAfterMs: 30_000 });
      expect(run.code).toBe(0);
      expect(run.stderr).not.toMatch(/Error:|^\s+at /m);
    }
  });

  test("fails fast on a stopped server", async () => {
    const stopped = await Cluster.create({ password: PASSWORD });
    try {
      await stopped.stop();
      const run = await runScript(SUITE, ["--timeout", "1"], { DATABASE_URL: stopped.url() }, { killAfterMs: 30_000 });
      expect(run.code).toBe(1);
      expect(run.stdout).toMatch(/FAILED  Basic Connection .*ECONNREFUSED/);
      expect(run.stdout).toContain("not run: Basic Connection failed");
    } finally {
      await stopped.destroy();
    }
  });

  test("with the standby listed first and read-write, every check runs on the primary and says so", async () => {
    const standby = await cluster.createStandby();
    try {
      const hosts = `127.0.0.1:${standby.port},127.0.0.1:${cluster.port}`;
      const url = `postgres://${cluster.user}:${encodeURIComponent(PASSWORD)}@${hosts}/app?target_session_attrs=read-write`;
      const run = await runScript(SUITE, ["--json"], { DATABASE_URL: url });
      const checks = events(run.stdout).filter((event) => event.event === "check");
      expect(checks.filter((check) => !check.ok)).toEqual([]);
      expect(run.code).toBe(0);
      expect(checks.map((check) => check.name)).toEqual([...CHECK_NAMES]);
      // Concurrent Connections too: its twenty sessions went to the primary, not the first host.
      for (const check of checks) expect(check.host).toBe(`127.0.0.1:${cluster.port}`);
      expect(checks.find((check) => check.name === "Connection with Retry")!.detail).toContain("through a TCP relay");
      expectNoSecret(run, PASSWORD);
    } finally {
      await standby.destroy();
    }
  });

  test("on a Unix-socket host, the retry check's relay is a Unix socket too", async () => {
    const url = `postgres://${cluster.user}:${encodeURIComponent(PASSWORD)}@${encodeURIComponent(cluster.dir)}:${cluster.port}/app`;
    const run = await runScript(SUITE, ["--json", "--only", "basic,retry,concurrent,health"], { DATABASE_URL: url });
    const checks = events(run.stdout).filter((event) => event.event === "check");
    expect(checks.filter((check) => !check.ok)).toEqual([]);
    expect(run.code).toBe(0);
    for (const check of checks) expect(check.host).toBe(`${cluster.dir}:${cluster.port}`);
    expect(checks.find((check) => check.name === "Connection with Retry")!.detail).toMatch(/first attempt refused \(ENOENT\).*through a Unix-socket relay/);
  });

  test("fails Database Health on a read-only standby, passes it with --allow-read-only", async () => {
    const standby = await cluster.createStandby();
    try {
      const run = await runScript(SUITE, ["--only", "health"], { DATABASE_URL: standby.url() });
      expect(run.code).toBe(1);
      expect(run.stdout).toMatch(/FAILED  Database Health .*read-only: .*in recovery/);
      const allowed = await runScript(SUITE, ["--only", "health", "--allow-read-only"], { DATABASE_URL: standby.url() });
      expect(allowed.code).toBe(0);
    } finally {
      await standby.destroy();
    }
  });
});

describe("the suite under sslmode=verify-full", () => {
  let cluster: Cluster;
  let ca: string;
  useCluster({ password: PASSWORD, prepare: (stopped) => (ca = configureTls(stopped).ca) }, (made) => (cluster = made.cluster));

  test("the retry check's relay keeps the real host's name: the certificate (DNS:localhost) is checked against it and passes", async () => {
    // The relay listens on 127.0.0.1, which the certificate does not name: a client that took the relay's address for the host would fail.
    const url = `postgres://postgres:${encodeURIComponent(PASSWORD)}@localhost:${cluster.port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert=${encodeURIComponent(ca)}`;
    const run = await runScript(SUITE, ["--json", "--only", "basic,retry,concurrent"], { DATABASE_URL: url });
    const checks = events(run.stdout).filter((event) => event.event === "check");
    expect(checks.filter((check) => !check.ok)).toEqual([]);
    expect(run.code).toBe(0);
    expect(checks.find((check) => check.name === "Connection with Retry")!.detail).toMatch(/first attempt refused \(ECONNREFUSED\).*through a TCP relay/);
    const byAddress = await runScript(SUITE, ["--only", "basic"], { DATABASE_URL: url.replace("@localhost:", "@127.0.0.1:").replace("hostaddr=127.0.0.1&", "") });
    expect(byAddress.code).toBe(1); // the same server by the relay's kind of address: the certificate does not name it
    expectNoSecret(run, PASSWORD);
  });
});
