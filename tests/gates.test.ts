/**
 * The gates around the kit's run, against real servers and real child processes:
 * `-- COMMAND` (the service started in the kit's place, signals forwarded, its status passed
 * on), `--check` (read-only: what the server logged and locked is looked at) and
 * `--wait-for-schema` (another process commits the steps; a standby and PgBouncer answer too).
 * Every test synchronises on state: a line printed, a row committed, pg_stat_activity.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { EXIT } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { cleanEnv, events, expectNoSecret, ROOT, runScript, until, uniqueName, useCluster } from "./helpers.ts";
import { PgBouncer } from "./pgbouncer.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "gate-Pa55:word@x";

let primary: Cluster;
let standby: Cluster;
let dir: string;
let bouncer: PgBouncer;

useCluster({
  password: PASSWORD, database: "gates", standby: true,
  // Every statement the server receives, tagged with the session's application_name: what the
  // read-only tests read back.
  settings: { log_statement: "'all'", log_line_prefix: "'[%a] '" },
}, (made) => {
  [primary, standby, dir] = [made.cluster, made.standby!, made.dir];
});

beforeAll(async () => {
  bouncer = await PgBouncer.start({ cluster: primary, poolMode: "transaction", databases: ["gates", "pooled"] });
  await primary.createDatabase("pooled");
});
afterAll(async () => {
  await bouncer?.destroy();
});

/** A URL naming the session, so that its statements and sessions can be found on the server. */
const named = (application: string, url = primary.url()) => `${url}?application_name=${application}`;

/** A migrations folder of its own: `files` name to SQL. */
function folder(files: Record<string, string>): string {
  const path = join(dir, uniqueName("migrations"));
  mkdirSync(path);
  for (const [name, sql] of Object.entries(files)) writeFileSync(join(path, name), sql);
  return path;
}

/** What the server logged for one application_name. */
function statementsOf(application: string, server = primary): string[] {
  return readFileSync(server.logFile, "utf8").split("\n").filter((line) => line.startsWith(`[${application}] `));
}

/** A service stand-in: says it is ready, then waits; with --handle it exits 0 on each signal, saying which. */
const SERVICE = `
const handle = process.argv.includes("--handle");
for (const name of ["SIGINT", "SIGTERM", "SIGHUP"]) if (handle) process.on(name, () => { console.log("service got " + name); process.exit(0); });
console.log("service ready");
setInterval(() => {}, 1000);
`;

describe("-- COMMAND", () => {
  let service: string;
  beforeAll(() => {
    service = join(dir, "service.ts");
    writeFileSync(service, SERVICE);
  });

  test("starts once the run succeeded, with the kit's environment, stdin and stdout, and exits with its status", async () => {
    const child = Bun.spawn([process.execPath, SCRIPT, "--wait-only", "--quiet", "--", "sh", "-c", 'echo "mark=$GATE_MARK"; read line; echo "read: $line"; exit 7'], {
      cwd: ROOT, env: cleanEnv({ DATABASE_URL: primary.url(), GATE_MARK: "from-the-kit's-environment" }), stdin: "pipe", stdout: "pipe", stderr: "pipe",
    });
    child.stdin.write("a line for the service\n");
    await child.stdin.end();
    const [stdout, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
    expect(stdout).toBe("mark=from-the-kit's-environment\nread: a line for the service\n");
    expect(code).toBe(7);
  });

  test("holds no database connection while the command runs", async () => {
    const application = uniqueName("gate_held");
    const child = Bun.spawn([process.execPath, SCRIPT, "--migrations", folder({ "001_t.sql": "create table held_t (id int);\n" }), "--", "sh", "-c", "echo service started; read line; echo done"], {
      cwd: ROOT, env: cleanEnv({ DATABASE_URL: named(application) }), stdin: "pipe", stdout: "pipe", stderr: "pipe",
    });
    const reader = child.stdout.getReader();
    let seen = "";
    while (!seen.includes("service started")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the command never started:\n${seen}`);
      seen += new TextDecoder().decode(value);
    }
    // The kit connected (it applied the step) and, the command running, holds nothing.
    expect(statementsOf(application).some((line) => line.includes("create table held_t"))).toBe(true);
    expect(await primary.query(`select pid from pg_stat_activity where application_name = '${application}'`)).toEqual([]);
    child.stdin.write("go\n");
    await child.stdin.end();
    expect(await child.exited).toBe(0);
  });

  test("never starts when the run fails, and the kit's exit code stands", async () => {
    const marker = join(dir, uniqueName("started"));
    const command = ["--", "sh", "-c", `touch ${marker}`];
    const wrongPassword = await runScript(SCRIPT, ["--wait-only", ...command], { DATABASE_URL: primary.url({ password: "not-the-password" }) });
    expect(wrongPassword.code).toBe(EXIT.fatal);
    const pending = await runScript(SCRIPT, ["--check", "--migrations", folder({ "001_never.sql": "create table never_t (id int);\n" }), ...command], { DATABASE_URL: primary.url() });
    expect(pending.code).toBe(EXIT.schemaFailed);
    const notReady = await runScript(SCRIPT, ["--wait-only", "--timeout", "0.3", ...command], { DATABASE_URL: primary.url({ port: 1 }) });
    expect(notReady.code).toBe(EXIT.notReady);
    expect(existsSync(marker)).toBe(false);
    expectNoSecret(wrongPassword, PASSWORD);
  });

  test("a command that cannot be started: one line, 127 when not found, 126 when not executable", async () => {
    const notFound = await runScript(SCRIPT, ["--wait-only", "--quiet", "--", "no-such-service-here"], { DATABASE_URL: primary.url() });
    expect(notFound.code).toBe(EXIT.commandNotFound);
    expect(notFound.stderr).toMatch(/^error: cannot start no-such-service-here: not found on PATH\nhint: .+\n$/);
    const notExecutable = join(dir, "not-executable.sh");
    writeFileSync(notExecutable, "echo never\n", { mode: 0o644 });
    const refused = await runScript(SCRIPT, ["--wait-only", "--quiet", "--", notExecutable], { DATABASE_URL: primary.url() });
    expect(refused.code).toBe(EXIT.commandNotExecutable);
    expect(refused.stderr).toMatch(/^error: cannot start .*not-executable\.sh: not executable \(EACCES\)\nhint: .+\n$/);
  });

  test("-- with nothing after it is a usage error", async () => {
    const run = await runScript(SCRIPT, ["--wait-only", "--"], { DATABASE_URL: primary.url() });
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("-- must be followed by a command");
  });

  /** The kit in its own process group, the service started by it; `signal` sent once the service says it is ready. */
  async function signalled(signal: NodeJS.Signals, { handle, toGroup }: { handle: boolean; toGroup: boolean }) {
    let sent = false;
    let kit: Bun.Subprocess | undefined;
    const run = await runScript(SCRIPT, ["--wait-only", "--quiet", "--", process.execPath, service, ...(handle ? ["--handle"] : [])], { DATABASE_URL: primary.url() }, {
      group: true, killAfterMs: 30_000,
      onStart: (child) => (kit = child),
      onStdout: (soFar) => {
        if (sent || !soFar.includes("service ready")) return;
        sent = true;
        // As a terminal sends Ctrl-C (to the group), or as a supervisor sends SIGTERM (to the kit alone).
        process.kill(toGroup ? -kit!.pid : kit!.pid, signal);
      },
    });
    expect(sent).toBe(true);
    return run;
  }

  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    test(`forwards ${signal} sent to the kit alone, and passes on the service's exit status`, async () => {
      const run = await signalled(signal, { handle: true, toGroup: false });
      expect(run.stdout).toBe(`service ready\nservice got ${signal}\n`);
      expect(run.code).toBe(0);
    });
  }

  test("a service ended by the forwarded signal: exit 128+N", async () => {
    expect((await signalled("SIGTERM", { handle: false, toGroup: false })).code).toBe(128 + 15);
    expect((await signalled("SIGHUP", { handle: false, toGroup: false })).code).toBe(128 + 1);
  });

  test("Ctrl-C in the kit's process group: the service's own status is the kit's", async () => {
    const handled = await signalled("SIGINT", { handle: true, toGroup: true });
    expect(handled.stdout).toStartWith("service ready\nservice got SIGINT\n");
    expect(handled.code).toBe(0);
    expect((await signalled("SIGINT", { handle: false, toGroup: true })).code).toBe(130);
  });
});

describe("--check", () => {
  test("exit 0 when every step is recorded with its checksum; exit 1 naming each pending and changed step on its own line", async () => {
    const migrations = folder({ "001_a.sql": "create table check_a (id int);\n", "002_b.sql": "create table check_b (id int);\n" });
    const ledger = uniqueName("ledger");
    const args = ["--migrations", migrations, "--ledger-table", ledger];
    const before = await runScript(SCRIPT, ["--check", ...args], { DATABASE_URL: primary.url() });
    expect(before.code).toBe(EXIT.schemaFailed);
    expect(before.stdout).toBe("pending: 001_a.sql\npending: 002_b.sql\n");
    expect(before.stderr).toContain("the schema is not at head; 2 of 2 steps pending: 001_a.sql, 002_b.sql");

    expect((await runScript(SCRIPT, args, { DATABASE_URL: primary.url() })).code).toBe(EXIT.ok);
    const after = await runScript(SCRIPT, ["--check", ...args], { DATABASE_URL: primary.url() });
    expect(after.code).toBe(EXIT.ok);
    expect(after.stdout).toContain("schema at head");

    writeFileSync(join(migrations, "001_a.sql"), "create table check_a (id bigint);\n");
    writeFileSync(join(migrations, "003_c.sql"), "create table check_c (id int);\n");
    const drifted = await runScript(SCRIPT, ["--check", "--json", ...args], { DATABASE_URL: primary.url() });
    expect(drifted.code).toBe(EXIT.schemaFailed);
    const summary = events(drifted.stdout).at(-1)!;
    expect(summary).toMatchObject({ event: "summary", ok: false, exit_code: 1, status: "schema changed", recorded: ["002_b.sql"], pending: ["003_c.sql"] });
    expect((summary.changed as { name: string }[]).map((step) => step.name)).toEqual(["001_a.sql"]);
    const human = await runScript(SCRIPT, ["--check", ...args], { DATABASE_URL: primary.url() });
    expect(human.stdout).toMatch(/^changed: 001_a\.sql \(recorded with checksum [0-9a-f]{12}…, the file has [0-9a-f]{12}…\)\npending: 003_c\.sql\n$/);
    expectNoSecret(human, PASSWORD);
  });

  test("a history table of another shape is a schema failure (exit 1), not a connection failure", async () => {
    const database = await primary.freshDatabase();
    // The kit's own ledger, where a golang-migrate folder expects golang-migrate's schema_migrations.
    await primary.query("create table schema_migrations (name text primary key, checksum text not null, applied_at timestamptz not null default now())", database);
    const migrations = folder({ "1_first.up.sql": "create table clash_a (id int);\n", "1_first.down.sql": "drop table clash_a;\n" });
    const run = await runScript(SCRIPT, ["--check", "--migrations", migrations, "--json"], { DATABASE_URL: primary.url({ database }) });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(events(run.stdout).at(-1)).toMatchObject({ event: "summary", exit_code: 1, code: "LEDGER_CLASH" });
    expect(run.stderr).not.toContain("cannot connect");
  });

  test("the built-in schema: pending on an empty database, at head once applied", async () => {
    const database = await primary.freshDatabase();
    const url = primary.url({ database });
    const before = await runScript(SCRIPT, ["--check"], { DATABASE_URL: url });
    expect([before.code, before.stdout]).toEqual([EXIT.schemaFailed, "pending: flow-backend\n"]);
    expect((await runScript(SCRIPT, [], { DATABASE_URL: url })).code).toBe(EXIT.ok);
    expect((await runScript(SCRIPT, ["--check"], { DATABASE_URL: url })).code).toBe(EXIT.ok);
  });

  test("is read-only: the server received no DDL, no write and no lock request, and no ledger was made", async () => {
    const database = await primary.freshDatabase();
    const application = uniqueName("gate_check");
    const run = await runScript(SCRIPT, ["--check", "--migrations", folder({ "001_x.sql": "create table ro_x (id int);\n" })], { DATABASE_URL: named(application, primary.url({ database })) });
    expect(run.code).toBe(EXIT.schemaFailed);
    const statements = statementsOf(application);
    expect(statements.some((line) => /select/i.test(line))).toBe(true); // the log does show the kit's statements
    expect(statements.filter((line) => /\b(create|alter|drop|insert|update|delete|lock|advisory)\b/i.test(line))).toEqual([]);
    expect(statements.some((line) => /begin read only/i.test(line))).toBe(true);
    expect(await primary.query("select to_regclass('schema_migrations') as ledger", database)).toEqual([{ ledger: null }]);
  });

  test("works on a standby, whose replicated ledger it reads", async () => {
    const migrations = folder({ "001_s.sql": "create table standby_s (id int);\n" });
    const ledger = uniqueName("ledger");
    const args = ["--check", "--migrations", migrations, "--ledger-table", ledger];
    expect((await runScript(SCRIPT, args, { DATABASE_URL: standby.url() })).code).toBe(EXIT.schemaFailed);
    expect((await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: primary.url() })).code).toBe(EXIT.ok);
    await until("the standby to replay the ledger", async () => (await standby.query(`select to_regclass('${ledger}') is not null as present`))[0]!.present === true);
    await until("the standby to replay the row", async () => (await standby.query(`select count(*)::int as n from ${ledger}`))[0]!.n === 1);
    const run = await runScript(SCRIPT, args, { DATABASE_URL: standby.url() });
    expect(run.code).toBe(EXIT.ok);
    expect(run.stdout).toContain("schema at head");
  });

  test("works through PgBouncer in transaction mode", async () => {
    const migrations = folder({ "001_p.sql": "create table pooled_p (id int);\n" });
    const url = bouncer.url({ database: "pooled" });
    expect((await runScript(SCRIPT, ["--check", "--migrations", migrations], { DATABASE_URL: url })).code).toBe(EXIT.schemaFailed);
    expect((await runScript(SCRIPT, ["--migrations", migrations], { DATABASE_URL: url })).code).toBe(EXIT.ok);
    const run = await runScript(SCRIPT, ["--check", "--migrations", migrations], { DATABASE_URL: url });
    expect(run.stderr).not.toContain("unsupported startup parameter");
    expect(run.code).toBe(EXIT.ok);
  });

  test("excludes --dry-run and --wait-only (exit 2), and is 3 and 4 as everywhere", async () => {
    expect((await runScript(SCRIPT, ["--check", "--dry-run"], { DATABASE_URL: primary.url() })).code).toBe(EXIT.usage);
    expect((await runScript(SCRIPT, ["--check", "--wait-only"], { DATABASE_URL: primary.url() })).code).toBe(EXIT.usage);
    expect((await runScript(SCRIPT, ["--check", "--timeout", "0.3"], { DATABASE_URL: primary.url({ port: 1 }) })).code).toBe(EXIT.notReady);
    const wrong = await runScript(SCRIPT, ["--check"], { DATABASE_URL: primary.url({ password: "wrong-one" }) });
    expect(wrong.code).toBe(EXIT.fatal);
  });
});

/** A kit run in the background: what it printed so far, a wait for a line, and its end (killed if it hangs). */
function background(args: string[], env: Record<string, string>, killAfterMs = 60_000) {
  const child = Bun.spawn([process.execPath, SCRIPT, ...args], { cwd: ROOT, env: cleanEnv(env), stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const output = { stdout: "", stderr: "" };
  const waiters: { text: string; resolve: () => void }[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>, key: "stdout" | "stderr") => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      output[key] += decoder.decode(chunk, { stream: true });
      for (const waiter of waiters.filter((candidate) => output.stderr.includes(candidate.text) || output.stdout.includes(candidate.text))) waiter.resolve();
    }
  };
  const killer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
  const ended = Promise.all([pump(child.stdout, "stdout"), pump(child.stderr, "stderr"), child.exited]).then(([, , code]) => {
    clearTimeout(killer);
    return { code, ...output };
  });
  return {
    output,
    /** Resolves once the run has printed `text`; rejects if it ends first. */
    printed: (text: string) => Promise.race([
      new Promise<void>((resolve) => (output.stdout + output.stderr).includes(text) ? resolve() : waiters.push({ text, resolve })),
      ended.then((end) => { throw new Error(`ended (exit ${end.code}) without printing "${text}":\n${end.stderr}`); }),
    ]),
    ended,
  };
}

/** The backends of one application_name, and the advisory locks they hold or wait for. */
async function sessionsOf(application: string, server = primary) {
  const pids = (await server.query<{ pid: number }>(`select pid from pg_stat_activity where application_name = '${application}' order by pid`)).map((row) => row.pid);
  const advisory = await server.query(`select l.pid from pg_locks l join pg_stat_activity a using (pid) where l.locktype = 'advisory' and a.application_name = '${application}'`);
  return { pids, advisory };
}

describe("--wait-for-schema", () => {
  test("waits on one open session, with no lock, until another process has applied every step; then exit 0", async () => {
    const migrations = folder({ "001_w.sql": "create table wait_w (id int);\n", "002_w.sql": "create table wait_w2 (id int);\n" });
    const ledger = uniqueName("ledger");
    const application = uniqueName("gate_wait");
    const polls = () => statementsOf(application).filter((line) => line.includes(`from "public"."${ledger}"`) || line.includes(`to_regclass`)).length;
    const waiting = background(["--wait-for-schema", "--migrations", migrations, "--ledger-table", ledger, "--timeout", "60"], { DATABASE_URL: named(application) });
    await waiting.printed("waiting for the schema");
    const first = await sessionsOf(application);
    expect(first.pids).toHaveLength(1);
    const seen = polls();
    await until("three more polls of the ledger", async () => polls() >= seen + 3);
    // The same backend still: no connection per poll, and no advisory lock held or awaited.
    expect(await sessionsOf(application)).toEqual({ pids: first.pids, advisory: [] });

    const apply = await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: primary.url() });
    expect(apply.code).toBe(EXIT.ok);
    const end = await waiting.ended;
    expect(end.code).toBe(EXIT.ok);
    expect(end.stdout).toContain("schema at head");
    expect(end.stderr).toContain("2 of 2 steps pending (001_w.sql, 002_w.sql)");
    expect(statementsOf(application).filter((line) => /\b(create|insert|lock|advisory)\b/i.test(line))).toEqual([]);
    expectNoSecret(end, PASSWORD);
  });

  test("exit 3 at the deadline, naming what is still pending", async () => {
    const migrations = folder({ "001_late.sql": "create table late_l (id int);\n" });
    const run = await runScript(SCRIPT, ["--wait-for-schema", "--migrations", migrations, "--ledger-table", uniqueName("ledger"), "--timeout", "1", "--json"], { DATABASE_URL: primary.url() });
    expect(run.code).toBe(EXIT.notReady);
    expect(events(run.stdout).at(-1)).toMatchObject({ event: "summary", status: "not ready", exit_code: 3, pending: ["001_late.sql"], changed: [] });
    const human = await runScript(SCRIPT, ["--wait-for-schema", "--migrations", migrations, "--ledger-table", uniqueName("ledger"), "--timeout", "1"], { DATABASE_URL: primary.url() });
    expect(human.stdout).toBe("pending: 001_late.sql\n");
    expect(human.stderr).toContain("the schema is still not at head after");
  });

  test("exit 1 at once when a recorded step differs from the file, long before the deadline", async () => {
    const migrations = folder({ "001_c.sql": "create table changed_c (id int);\n" });
    const ledger = uniqueName("ledger");
    expect((await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: primary.url() })).code).toBe(EXIT.ok);
    writeFileSync(join(migrations, "001_c.sql"), "create table changed_c (id bigint);\n");
    writeFileSync(join(migrations, "002_d.sql"), "create table changed_d (id int);\n");
    // A deadline of 10 minutes: were the change not seen at once, the hang guard would end the test.
    const run = await runScript(SCRIPT, ["--wait-for-schema", "--migrations", migrations, "--ledger-table", ledger, "--timeout", "600"], { DATABASE_URL: primary.url() }, { killAfterMs: 20_000 });
    expect(run.code).toBe(EXIT.schemaFailed);
    expect(run.stdout).toMatch(/^changed: 001_c\.sql .*\npending: 002_d\.sql\n$/);
    expect(run.stderr).toContain("1 recorded step differs from its file: 001_c.sql");
  });

  test("a session ended while waiting: it reconnects and goes on waiting", async () => {
    const migrations = folder({ "001_t.sql": "create table term_t (id int);\n" });
    const ledger = uniqueName("ledger");
    const application = uniqueName("gate_term");
    const waiting = background(["--wait-for-schema", "--migrations", migrations, "--ledger-table", ledger, "--timeout", "60"], { DATABASE_URL: named(application) });
    await waiting.printed("waiting for the schema");
    const [ended] = (await sessionsOf(application)).pids;
    await primary.query(`select pg_terminate_backend(${ended})`);
    // A new backend polls in its place (the pool reconnects, or the kit does, saying so).
    await until("the kit's new session", async () => {
      const { pids } = await sessionsOf(application);
      return pids.length === 1 && pids[0] !== ended;
    });
    expect((await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: primary.url() })).code).toBe(EXIT.ok);
    const end = await waiting.ended;
    expect(end.code).toBe(EXIT.ok);
  });

  test("reads a standby's replicated ledger: the primary's commit ends the wait", async () => {
    const migrations = folder({ "001_r.sql": "create table replicated_r (id int);\n" });
    const ledger = uniqueName("ledger");
    const waiting = background(["--wait-for-schema", "--migrations", migrations, "--ledger-table", ledger, "--timeout", "60"], { DATABASE_URL: standby.url() });
    await waiting.printed("waiting for the schema");
    expect((await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: primary.url() })).code).toBe(EXIT.ok);
    const end = await waiting.ended;
    expect(end.code).toBe(EXIT.ok);
    expect(end.stdout).toContain("schema at head");
  });

  test("works through PgBouncer in transaction mode", async () => {
    const migrations = folder({ "001_b.sql": "create table bounced_b (id int);\n" });
    const ledger = uniqueName("ledger");
    const url = bouncer.url({ database: "pooled" });
    const waiting = background(["--wait-for-schema", "--migrations", migrations, "--ledger-table", ledger, "--timeout", "60"], { DATABASE_URL: url });
    await waiting.printed("waiting for the schema");
    expect((await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: url })).code).toBe(EXIT.ok);
    const end = await waiting.ended;
    expect(end.stderr).not.toContain("unsupported startup parameter");
    expect(end.code).toBe(EXIT.ok);
  });

  test("then -- COMMAND: the service starts once the schema is there", async () => {
    const migrations = folder({ "001_s.sql": "create table then_s (id int);\n" });
    const ledger = uniqueName("ledger");
    const waiting = background(["--wait-for-schema", "--migrations", migrations, "--ledger-table", ledger, "--timeout", "60", "--", "sh", "-c", "echo service up"], { DATABASE_URL: primary.url() });
    await waiting.printed("waiting for the schema");
    expect(waiting.output.stdout).not.toContain("service up");
    expect((await runScript(SCRIPT, ["--migrations", migrations, "--ledger-table", ledger], { DATABASE_URL: primary.url() })).code).toBe(EXIT.ok);
    const end = await waiting.ended;
    expect(end.code).toBe(EXIT.ok);
    expect(end.stdout).toEndWith("service up\n");
  });
});
