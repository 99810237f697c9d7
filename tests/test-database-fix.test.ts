import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cluster } from "./cluster.ts";
import { cleanEnv, expectNoSecret, ROOT, type Run } from "./helpers.ts";

const PASSWORD = "fix-Pa55:w@rd";

/** Run the shell script with its own TMPDIR, so what it leaves behind can be seen. */
async function runFix(args: string[], env: Record<string, string> = {}, { signalAfterMs }: { signalAfterMs?: number } = {}) {
  const tmp = mkdtempSync(join(tmpdir(), "fix-test-"));
  chmodSync(tmp, 0o711); // as root the server runs as nobody, which must reach the work dir inside
  const startedAt = performance.now();
  const child = Bun.spawn([join(ROOT, "test-database-fix.sh"), ...args], {
    cwd: ROOT, env: cleanEnv({ TMPDIR: tmp, ...env }), stdout: "pipe", stderr: "pipe", stdin: "ignore",
  });
  const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const signaller = signalAfterMs === undefined ? undefined : setTimeout(() => child.kill("SIGTERM"), signalAfterMs);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(killer);
  clearTimeout(signaller);
  const run: Run & { leftovers: string[]; tmp: string } = {
    code, stdout, stderr, ms: performance.now() - startedAt, tmp,
    leftovers: readdirSync(tmp).filter((name) => name.startsWith("pg-kit-run.")),
  };
  return run;
}

/** PIDs of servers whose data directory lies under `dir`. */
function serversUnder(dir: string): string[] {
  const found = Bun.spawnSync(["pgrep", "-f", `postgres -D ${dir}`]);
  return found.stdout.toString().trim().split("\n").filter(Boolean);
}

describe("test-database-fix.sh", () => {
  let external: Cluster;
  const temps: string[] = [];

  beforeAll(async () => {
    external = await Cluster.create({ password: PASSWORD, database: "ext" });
  });
  afterAll(async () => {
    await external?.destroy();
    for (const dir of temps) rmSync(dir, { recursive: true, force: true });
  });

  test("is clean under shellcheck, as are the other shell scripts", () => {
    const lint = Bun.spawnSync(["shellcheck", "test-database-fix.sh", ".ci/run", "tests/system-tools.sh", "tests/fixtures/no-docker/docker"], { cwd: ROOT });
    expect(lint.stdout.toString() + lint.stderr.toString()).toBe("");
    expect(lint.exitCode).toBe(0);
  });

  test("--provider embedded brings a database up, initialises and proves it, and leaves nothing behind", async () => {
    const run = await runFix(["--provider", "embedded"]);
    temps.push(run.tmp);
    expect(run.stderr).not.toContain("error");
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("7 passed, 0 failed");
    for (const name of ["prepare", "database up", "ready", "init", "connectivity suite", "cleanup"]) {
      expect(run.stdout).toMatch(new RegExp(`  ${name} +\\d+ ms  ok`));
    }
    expect(run.stdout).toContain("result: PASSED");
    expect(run.leftovers).toEqual([]);
    expect(serversUnder(run.tmp)).toEqual([]);
  });

  test("--provider external uses DATABASE_URL and leaves that database running", async () => {
    const run = await runFix(["--provider", "external"], { DATABASE_URL: external.url() });
    temps.push(run.tmp);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("STEP SUMMARY (provider: external)");
    expect(await external.query("select count(*)::int as n from users")).toEqual([{ n: 0 }]);
    expectNoSecret(run, PASSWORD);
  });

  test("auto picks external when DATABASE_URL is set, and says so in its first line", async () => {
    const run = await runFix([], { DATABASE_URL: external.url() });
    temps.push(run.tmp);
    expect(run.code).toBe(0);
    expect(run.stderr.split("\n")[0]).toStartWith("==> provider: external (auto: DATABASE_URL is set, so its database is used;");
  });

  test("auto with DATABASE_URL never writes the built-in schema into a database holding other tables", async () => {
    const database = await external.freshDatabase();
    await external.query(`create table customers (id int primary key)`, database);
    const run = await runFix([], { DATABASE_URL: external.url({ database }) });
    temps.push(run.tmp);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("refusing to write the built-in Flow-Backend demo schema");
    expect(run.stdout).toContain('result: FAILED at "init"');
    expect((await external.query<{ t: string }>(`select tablename as t from pg_tables where schemaname = 'public'`, database)).map((row) => row.t)).toEqual(["customers"]);
  });

  test("fails with a clear message on a wrong password, and still cleans up", async () => {
    const run = await runFix(["--provider", "external"], { DATABASE_URL: external.url({ password: "wrong-secret" }) });
    temps.push(run.tmp);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("28P01");
    expect(run.stdout).toContain('result: FAILED at "ready"');
    expect(run.stdout).toMatch(/  cleanup +\d+ ms  ok/);
    expect(run.leftovers).toEqual([]);
    expectNoSecret(run, "wrong-secret", PASSWORD);
  });

  test("exits 143 on SIGTERM and still stops and deletes the database", async () => {
    const run = await runFix(["--provider", "embedded"], {}, { signalAfterMs: 900 });
    temps.push(run.tmp);
    expect(run.code).toBe(143);
    expect(run.leftovers).toEqual([]);
    expect(serversUnder(run.tmp)).toEqual([]);
  });

  test("--keep leaves the database running and says how to reach and stop it", async () => {
    const run = await runFix(["--provider", "embedded", "--keep"]);
    temps.push(run.tmp);
    expect(run.code).toBe(0);
    const workDir = join(run.tmp, run.leftovers[0]!);
    expect(existsSync(join(workDir, "connection.env"))).toBe(true);
    expect(serversUnder(workDir)).toHaveLength(1);
    const stop = /stop with: (\S+) (\S+) stop (\S+) && rm -rf (\S+)/.exec(run.stderr);
    expect(stop).not.toBeNull();
    expect(Bun.spawnSync([stop![1]!, stop![2]!, "stop", stop![3]!]).exitCode).toBe(0);
    expect(serversUnder(workDir)).toEqual([]);
  });

  test("rejects bad arguments with exit 2 and one line", async () => {
    for (const args of [["--provider", "kubernetes"], ["--timeout", "soon"], ["--frobnicate"]]) {
      const run = await runFix(args);
      temps.push(run.tmp);
      expect(run.code).toBe(2);
      expect(run.stderr.trim().split("\n")).toHaveLength(1);
    }
  });

  test("--provider compose without a Docker engine says what is missing", async () => {
    const run = await runFix(["--provider", "compose"], { PATH: `${join(ROOT, "tests", "fixtures", "no-docker")}:${process.env.PATH}` });
    temps.push(run.tmp);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/error: (docker is not installed|the Docker engine does not answer|Docker Compose v2 is missing)/);
  });
});
