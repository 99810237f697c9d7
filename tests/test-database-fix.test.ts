import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cluster } from "./cluster.ts";
import { cleanEnv, expectNoSecret, ROOT, runScript, useCluster } from "./helpers.ts";

const PASSWORD = "fix-Pa55:w@rd";

/**
 * Run the shell script with its own TMPDIR, so what it leaves behind can be seen, in its own
 * process group (as a terminal runs a foreground job), so that a Ctrl-C can be sent to the whole
 * group. `signalOn` sends a signal when a progress line (`==> NAME`) appears: to the group for
 * SIGINT (what Ctrl-C does), to the script alone for SIGTERM (what `kill` or a CI runner does).
 */
async function runFix(
  args: string[],
  env: Record<string, string> = {},
  { signalOn, script = "test-database-fix.sh" }: { signalOn?: { line: string; signal: "SIGINT" | "SIGTERM" }; script?: string } = {},
) {
  const tmp = mkdtempSync(join(tmpdir(), "fix-test-"));
  chmodSync(tmp, 0o711); // as root the server runs as nobody, which must reach the work dir inside
  const run = await runScript(script, args, { TMPDIR: tmp, ...env }, {
    executable: true, group: true, killAfterMs: 90_000,
    signalOn: signalOn && `==> ${signalOn.line}\n`, signal: signalOn?.signal, signalGroup: signalOn?.signal === "SIGINT",
  });
  return { ...run, tmp, leftovers: readdirSync(tmp).filter((name) => name.startsWith("pg-kit-run.")) };
}

/** Run bash with the script's functions sourced (main does not run), then COMMANDS. */
function sourced(commands: string, env: Record<string, string> = {}) {
  const run = Bun.spawnSync(["bash", "-c", `source ./test-database-fix.sh; ${commands}`], { cwd: ROOT, env: cleanEnv(env) });
  return { code: run.exitCode, stdout: run.stdout.toString(), stderr: run.stderr.toString() };
}

/** PIDs of servers whose data directory lies under `dir`. */
function serversUnder(dir: string): string[] {
  const found = Bun.spawnSync(["pgrep", "-f", `postgres -D ${dir}`]);
  return found.stdout.toString().trim().split("\n").filter(Boolean);
}

describe("test-database-fix.sh", () => {
  let external: Cluster;
  const temps: string[] = [];

  useCluster({ password: PASSWORD, database: "ext" }, (made) => (external = made.cluster));
  afterAll(() => {
    for (const dir of temps) rmSync(dir, { recursive: true, force: true });
  });

  test("is clean under shellcheck, as are the other shell scripts", () => {
    const lint = Bun.spawnSync(["shellcheck", "test-database-fix.sh", ".ci/run", "tests/system-tools.sh", "tests/fixtures/no-docker/docker", "tests/fixtures/not-gnu/timeout", "tests/fixtures/slow-npm/npm"], { cwd: ROOT });
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

  test("SIGTERM during a step: exit 143, the step shown as interrupted, the server stopped and deleted", async () => {
    const run = await runFix(["--provider", "embedded"], {}, { signalOn: { line: "ready", signal: "SIGTERM" } });
    temps.push(run.tmp);
    expect(run.code).toBe(143);
    expect(run.stdout).toMatch(/  database up +\d+ ms  ok/);
    // Sent as "ready" starts; on a loaded machine it may land a step later, never earlier.
    const interrupted = /  (ready|init|connectivity suite) +\d+ ms  interrupted \(SIGTERM\)/.exec(run.stdout);
    expect(interrupted).not.toBeNull();
    expect(run.stdout).toContain(`result: INTERRUPTED during "${interrupted![1]}" (exit 143)`);
    expect(run.stdout).not.toContain("PASSED");
    expect(run.leftovers).toEqual([]);
    expect(serversUnder(run.tmp)).toEqual([]);
  });

  test("Ctrl-C (SIGINT to the process group) while the server starts: exit 130, interrupted, nothing left", async () => {
    const run = await runFix(["--provider", "embedded"], {}, { signalOn: { line: "database up", signal: "SIGINT" } });
    temps.push(run.tmp);
    expect(run.code).toBe(130);
    expect(run.stdout).toMatch(/  database up +\d+ ms  interrupted \(SIGINT\)/);
    expect(run.stdout).toContain('result: INTERRUPTED during "database up" (exit 130)');
    expect(run.leftovers).toEqual([]);
    expect(serversUnder(run.tmp)).toEqual([]);
  });

  test("SIGTERM to the script alone while initdb's single-user server runs: stopped too, the step named, nothing left", async () => {
    const tmp = mkdtempSync(join(tmpdir(), "fix-test-"));
    chmodSync(tmp, 0o711);
    temps.push(tmp);
    // Signal once initdb's bootstrap server has written its postmaster.pid: the moment pg_ctl
    // cannot stop ("single-user server is running") and used to leave the work dir behind.
    const signalled = new Promise<void>((resolveSignal, rejectSignal) => {
      const givingUpAt = Date.now() + 60_000;
      const poll = () => {
        // A single-user server writes its pid negated.
        const found = readdirSync(tmp).some((run) => {
          const pidFile = join(tmp, run, "pg", "data", "postmaster.pid");
          return existsSync(pidFile) && readFileSync(pidFile, "utf8").startsWith("-");
        });
        if (found) return resolveSignal();
        if (Date.now() > givingUpAt) return rejectSignal(new Error("initdb never wrote postmaster.pid"));
        setTimeout(poll, 2);
      };
      poll();
    });
    const run = await runScript("test-database-fix.sh", ["--provider", "embedded"], { TMPDIR: tmp }, {
      executable: true, group: true, killAfterMs: 90_000,
      onStart: (child) => void signalled.then(() => child.kill("SIGTERM"), () => child.kill("SIGKILL")),
    });
    await signalled;
    expect(run.code).toBe(143);
    expect(run.stdout).toMatch(/  database up +\d+ ms  interrupted \(SIGTERM\)/);
    expect(run.stdout).toContain('result: INTERRUPTED during "database up" (exit 143)');
    expect(run.stdout).toMatch(/  cleanup +\d+ ms  ok/);
    expect(run.stderr).not.toContain("single-user");
    expect(readdirSync(tmp).filter((name) => name.startsWith("pg-kit-run."))).toEqual([]);
    expect(serversUnder(tmp)).toEqual([]);
  });

  test("SIGTERM during a slow dependency install ends the run at once, not when the install ends", async () => {
    // A copy of the script without node_modules beside it, so that prepare installs (with a stand-in npm).
    const copy = mkdtempSync(join(tmpdir(), "fix-fresh-"));
    temps.push(copy);
    copyFileSync(join(ROOT, "test-database-fix.sh"), join(copy, "test-database-fix.sh"));
    chmodSync(join(copy, "test-database-fix.sh"), 0o755);
    const run = await runFix(["--provider", "external"], { DATABASE_URL: external.url(), PATH: `${join(ROOT, "tests", "fixtures", "slow-npm")}:${process.env.PATH}` },
      { signalOn: { line: "installing dependencies (npm ci)", signal: "SIGTERM" }, script: join(copy, "test-database-fix.sh") });
    temps.push(run.tmp);
    expect(run.code).toBe(143);
    expect(run.ms).toBeLessThan(30_000); // the stand-in npm takes 60 s
    expect(run.stdout).toMatch(/  prepare +\d+ ms  interrupted \(SIGTERM\)/);
  });

  test("a missing prerequisite inside a step: exit 2, one error line, the step shown as failed", async () => {
    const run = await runFix(["--provider", "external"], { DATABASE_URL: external.url(), BUN: "/nonexistent/bun", PATH: "/usr/bin:/bin" });
    temps.push(run.tmp);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("error: bun was not installed by npm ci");
    expect(run.stdout).toMatch(/  prepare +\d+ ms  failed \(exit 2\)/);
    expect(run.stdout).toContain('result: FAILED at "prepare" (exit 2)');
    expect(run.leftovers).toEqual([]);
  });

  test("a failing command inside a step function stops the run there (set -e is in force in steps)", () => {
    const run = sourced(`trap 'cleanup "$?"' EXIT; work_dir="$(mktemp -d)"; provider=external
      half_done() { false; echo "ran on after a failure" >&2; }
      step "prepare" half_done; step "never" true`);
    expect(run.stderr).not.toContain("ran on after a failure");
    expect(run.stderr).not.toContain("==> never");
    expect(run.stdout).toContain('result: FAILED at "prepare" (exit 1)');
    expect(run.code).toBe(1);
  });

  test("--keep leaves the database running, with a private connection.env and how to stop it", async () => {
    const run = await runFix(["--provider", "embedded", "--keep"]);
    temps.push(run.tmp);
    const workDir = join(run.tmp, run.leftovers[0] ?? "missing");
    try {
      expect(run.code).toBe(0);
      const env = join(workDir, "connection.env");
      expect(readFileSync(env, "utf8")).toMatch(/^DATABASE_URL=postgres:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/flow_backend\n$/);
      expect(statSync(env).mode & 0o777).toBe(0o600);
      expect(serversUnder(workDir)).toHaveLength(1);
      const stop = /stop with: (\S+) (\S+) stop (\S+) && rm -rf (\S+)/.exec(run.stderr);
      expect(stop).not.toBeNull();
      expect(Bun.spawnSync([stop![1]!, stop![2]!, "stop", stop![3]!]).exitCode).toBe(0);
      expect(serversUnder(workDir)).toEqual([]);
    } finally {
      if (existsSync(join(workDir, "pg"))) Bun.spawnSync([process.execPath, join(ROOT, "tests", "cluster.ts"), "stop", join(workDir, "pg")]);
    }
  });

  test("--keep under compose writes the connection.env it points at, with the published port", () => {
    const dir = mkdtempSync(join(tmpdir(), "fix-keep-compose-"));
    temps.push(dir);
    const run = sourced(`compose() { [[ "$*" == "port postgres 5432" ]] && echo 127.0.0.1:49153; }
      provider=compose keep=1 work_dir=${JSON.stringify(dir)} compose_project=pgkit-test compose_password=pw-secret; teardown`);
    expect(run.code).toBe(0);
    const printed = /connect with 'set -a; \. (\S+); set \+a'/.exec(run.stderr);
    expect(printed?.[1]).toBe(join(dir, "connection.env"));
    expect(readFileSync(printed![1]!, "utf8")).toBe("COMPOSE_PROJECT_NAME=pgkit-test\nDATABASE_URL=postgres://flow:pw-secret@127.0.0.1:49153/flow_backend\n");
    expect(run.stderr).toContain("stop with: docker compose -p pgkit-test down -v");
  });

  test("--help explains every flag", () => {
    const help = Bun.spawnSync([join(ROOT, "test-database-fix.sh"), "--help"], { cwd: ROOT });
    expect(help.exitCode).toBe(0);
    const text = help.stdout.toString();
    for (const flag of ["--provider P", "--security", "--keep", "--timeout S", "--help"]) expect(text).toMatch(new RegExp(`^  ${flag} +\\S`, "m"));
    for (const provider of ["auto", "embedded", "compose", "external"]) expect(text).toMatch(new RegExp(`^    ${provider} +\\S`, "m"));
  });

  test("--timeout 0 is refused with exit 2 before anything starts", async () => {
    for (const value of ["0", "0.0", "00"]) {
      const run = await runFix(["--provider", "embedded", "--timeout", value]);
      temps.push(run.tmp);
      expect(run.code).toBe(2);
      expect(run.stderr).toBe(`error: --timeout '${value}' must be a positive number of seconds, e.g. --timeout 60\n`);
      expect(run.leftovers).toEqual([]);
    }
  });

  test("a bash older than 5 is named as a missing prerequisite, in one line", () => {
    const run = sourced(`check_bash 3 3.2.57; echo "ran on" >&2`);
    expect(run.code).toBe(2);
    expect(run.stderr).toBe("error: bash 5 or newer is needed (this is bash 3.2.57): install it (macOS: brew install bash) and run 'bash test-database-fix.sh'\n");
    expect(sourced(`check_bash "\${BASH_VERSINFO[0]}" "$BASH_VERSION"`).code).toBe(0);
  });

  test("a timeout that is not GNU's is named as a missing prerequisite, in one line", async () => {
    const run = await runFix(["--provider", "embedded"], { PATH: `${join(ROOT, "tests", "fixtures", "not-gnu")}:${process.env.PATH}` });
    temps.push(run.tmp);
    expect(run.code).toBe(2);
    expect(run.stderr).toStartWith("error: GNU timeout is needed: install coreutils");
    expect(run.stderr.trim().split("\n")).toHaveLength(1);
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

  test("--security without a Docker engine suggests a way out that works as written", async () => {
    const run = await runFix(["--security"], { PATH: `${join(ROOT, "tests", "fixtures", "no-docker")}:${process.env.PATH}` });
    temps.push(run.tmp);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("drop --security and use --provider embedded");
    const withUrl = await runFix(["--security"], { DATABASE_URL: external.url(), PATH: `${join(ROOT, "tests", "fixtures", "no-docker")}:${process.env.PATH}` });
    temps.push(withUrl.tmp);
    expect(withUrl.code).toBe(2);
    expect(withUrl.stderr).toStartWith("==> provider: compose (auto)\n");
    const followed = await runFix(["--provider", "embedded", "--security"]);
    temps.push(followed.tmp);
    expect(followed.stderr).toContain("error: --security hardens the Compose stack, which needs Docker: run with --provider compose --security (or drop --security)");
  });
});
