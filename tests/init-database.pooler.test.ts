/**
 * Through a real PgBouncer (Debian's, started by tests/pgbouncer.ts with stock settings,
 * scram-sha-256, no ignore_startup_parameters) in transaction and in session pool mode: the
 * README's commands, ten inits at once, the connectivity suite, a pooler that does not know the
 * database, and a PostgreSQL behind it that is down, comes back, or never starts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { classifyError, closeClient, ConfigError, connect, errorCode, EXIT, hint, parseConfig } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { cleanEnv, events, expectNoSecret, ROOT, runScript, useCluster, type Run } from "./helpers.ts";
import { PgBouncer, type PoolMode } from "./pgbouncer.ts";
import { FaultProxy } from "./proxy.ts";

const PASSWORD = "bouncer-Pa55-w0rd";
const MODES: PoolMode[] = ["transaction", "session"];
/** The databases each pooler knows, one per test, so tests do not see each other's schema. */
const DATABASES = ["wait", "init", "migrations", "crowd", "suite", "service", "direct"] as const;

let cluster: Cluster;
/** Initialised and never started until the test of a late PostgreSQL starts it. */
let late: Cluster;
let workDir: string;
const bouncers = new Map<PoolMode, PgBouncer>();

async function init(args: string[], env: Record<string, string | undefined>): Promise<Run> {
  const run = await runScript("init-database.ts", args, env);
  expectNoSecret(run, PASSWORD);
  return run;
}

const name = (mode: PoolMode, database: (typeof DATABASES)[number]) => `${mode}_${database}`;

useCluster({ password: PASSWORD, start: false }, (fixture) => {
  late = fixture.cluster;
});
useCluster({ password: PASSWORD }, async (fixture) => {
  ({ cluster, dir: workDir } = fixture);
  await Promise.all(MODES.map(async (mode) => {
    const databases = DATABASES.map((database) => name(mode, database));
    await Promise.all(databases.map((database) => cluster.createDatabase(database)));
    bouncers.set(mode, await PgBouncer.start({ cluster, poolMode: mode, databases }));
  }));
});
afterAll(async () => {
  for (const bouncer of bouncers.values()) await bouncer.destroy();
});

describe.each(MODES)("through PgBouncer, pool_mode = %s", (mode) => {
  const url = (database: (typeof DATABASES)[number] | string, query?: string) =>
    bouncers.get(mode)!.url({ database: (DATABASES as readonly string[]).includes(database) ? name(mode, database as (typeof DATABASES)[number]) : database, query });

  test("--wait-only: ready at once, and says a pooler answered", async () => {
    const run = await init(["--wait-only"], { DATABASE_URL: url("wait") });
    expect(run.stderr).not.toContain("unsupported startup parameter");
    expect(run.code).toBe(EXIT.ok);
    expect(run.stdout).toContain("through a pooler");
  });

  test("init, then a re-run: the schema applied once, then up to date", async () => {
    const first = await init([], { DATABASE_URL: url("init") });
    expect(first.code).toBe(EXIT.ok);
    expect(first.stdout).toContain("applied 1 of 1");
    const again = await init([], { DATABASE_URL: url("init") });
    expect(again.code).toBe(EXIT.ok);
    expect(again.stdout).toContain("already up to date");
    expect(await cluster.query("select name from schema_migrations", name(mode, "init"))).toEqual([{ name: "flow-backend" }]);
  });

  test("--migrations: each file once, and nothing a step sets reaches the next client", async () => {
    const dir = join(workDir, `migrations-${mode}`);
    mkdirSync(dir);
    writeFileSync(join(dir, "001_accounts.sql"), "create table accounts (id int primary key, email text);\n");
    writeFileSync(join(dir, "002_index.sql"), "create index accounts_email on accounts (email);\n");
    const first = await init(["--migrations", dir, "--command-timeout", "7"], { DATABASE_URL: url("migrations") });
    expect(first.code).toBe(EXIT.ok);
    expect(first.stdout).toContain("applied 2 of 2");
    const again = await init(["--migrations", dir], { DATABASE_URL: url("migrations") });
    expect(again.code).toBe(EXIT.ok);
    expect(again.stdout).toContain("already up to date");
    // The kit's SET LOCAL ended with each step: a client that gets the same server session next sees the default.
    const sql = postgres(url("migrations"), { max: 1, prepare: false, fetch_types: false, onnotice: () => {} });
    try {
      const [row] = await sql`select current_setting('statement_timeout') as timeout`;
      expect(row!.timeout).toBe("0");
    } finally {
      await sql.end({ timeout: 1 });
    }
  });

  test("ten inits at once: all exit 0 and the schema is applied exactly once", async () => {
    const runs = await Promise.all(Array.from({ length: 10 }, () => init([], { DATABASE_URL: url("crowd") })));
    expect(runs.map((run) => run.code)).toEqual(Array(10).fill(EXIT.ok));
    expect(runs.filter((run) => run.stdout.includes("applied 1 of 1"))).toHaveLength(1);
    expect(await cluster.query("select count(*)::int as n from schema_migrations", name(mode, "crowd"))).toEqual([{ n: 1 }]);
  });

  test("the connectivity suite: all seven checks pass", async () => {
    expect((await init([], { DATABASE_URL: url("suite") })).code).toBe(EXIT.ok);
    // In transaction mode 30 clients share PgBouncer's default pool of 20; in session mode each needs its own.
    const concurrency = mode === "transaction" ? "30" : "20";
    const run = await runScript("test-db-connectivity.ts", ["--concurrency", concurrency], { DATABASE_URL: url("suite") });
    expectNoSecret(run, PASSWORD);
    expect(run.stdout).toContain("7 passed, 0 failed");
    expect(run.stdout).toMatch(/PASSED  Basic Connection .*through a pooler/);
    expect(run.stdout).toContain(`${concurrency}/${concurrency} connections through the pooler`);
    expect(run.code).toBe(0);
  });

  test("a database missing from the pooler's configuration: exit 4 at once, the hint names [databases]", async () => {
    const run = await init(["--wait-only", "--timeout", "30"], { DATABASE_URL: url("not_in_pgbouncer") });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("08P01: no such database: not_in_pgbouncer");
    expect(run.stderr).toContain("[databases] section of pgbouncer.ini");
    expect(run.ms).toBeLessThan(10_000);
  });

  test("PostgreSQL refuses the pooler's own login (its password changed): exit 4 at once, PostgreSQL's message and a hint about PgBouncer's password", async () => {
    const role = `${mode}_rotated`;
    await cluster.query(`create role ${role} login password 'rotated-Pa55-old'`);
    const bouncer = await PgBouncer.start({ cluster, poolMode: mode, databases: [name(mode, "wait")], users: { [role]: "rotated-Pa55-old" } });
    try {
      await cluster.query(`alter role ${role} password 'rotated-Pa55-new'`);
      const run = await init(["--wait-only", "--timeout", "30"], { DATABASE_URL: bouncer.url({ database: name(mode, "wait"), user: role, password: "rotated-Pa55-old" }) });
      expectNoSecret(run, "rotated-Pa55-old", "rotated-Pa55-new");
      expect(run.code).toBe(EXIT.fatal);
      expect(run.stderr).toContain(`08P01: password authentication failed for user "${role}"`);
      expect(run.stderr).toContain("PostgreSQL refused the pooler's login");
      expect(run.ms).toBeLessThan(10_000);
    } finally {
      await bouncer.destroy();
    }
  });

  test("--create-database through a pooler that does not list the maintenance database: exit 4, the hint says DIRECT_URL", async () => {
    const run = await init(["--create-database", "--timeout", "30"], { DATABASE_URL: url("init") });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("no such database: postgres");
    expect(run.stderr).toContain("--create-database behind a pooler needs DIRECT_URL");
    const direct = await init(["--create-database", "--timeout", "30"], { DATABASE_URL: url("init"), DIRECT_URL: cluster.url({ database: name(mode, "init") }) });
    expect(direct.code).toBe(EXIT.ok);
  });

  test("a wrong password: exit 4 at once, the hint names PgBouncer's auth_file", async () => {
    const run = await init(["--wait-only", "--timeout", "30"], { DATABASE_URL: bouncers.get(mode)!.url({ database: name(mode, "wait"), password: "wrong-Pa55" }) });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("auth_file");
    expect(run.ms).toBeLessThan(10_000);
  });
});

test("PgBouncer's refusals, provoked for real, are split by their message: a start-up parameter is fatal with a hint", async () => {
  const bouncer = bouncers.get("transaction")!;
  const config = parseConfig({ url: bouncer.url({ database: name("transaction", "wait") }) }, {});
  const refusal = async (options: postgres.Options<{}>) => {
    const sql = postgres({ host: bouncer.host, port: bouncer.port, user: cluster.user, password: PASSWORD, max: 1, connect_timeout: 5, fetch_types: false, ...options });
    try {
      return await sql`select 1`.then(() => undefined, (error: unknown) => error);
    } finally {
      await sql.end({ timeout: 0 });
    }
  };
  const startup = await refusal({ database: name("transaction", "wait"), connection: { statement_timeout: 1000 } });
  expect(String(startup)).toContain("unsupported startup parameter: statement_timeout");
  expect(classifyError(startup)).toBe("fatal");
  expect(hint(startup, config)).toContain("ignore_startup_parameters");
  const missing = await refusal({ database: "nowhere" });
  expect(classifyError(missing)).toBe("fatal");
});

test("each PgBouncer message prefix has its class and a hint naming what to change", () => {
  const config = parseConfig({ url: "postgres://u:p@127.0.0.1:6432/db" }, {});
  const said = (message: string) => new (postgres.PostgresError as unknown as new (fields: object) => Error)({ code: "08P01", severity: "FATAL", message });
  // As PgBouncer words them (1.18 and later); the first four provoked for real above as well.
  const cases: [string, string, string][] = [
    ["unsupported startup parameter: search_path", "fatal", "ignore_startup_parameters"],
    ["no such database: app", "fatal", "[databases]"],
    ["no such user: app", "fatal", "auth_file"],
    ["SASL authentication failed", "fatal", "auth_file"],
    ["password authentication failed", "fatal", "auth_file"],
    ['password authentication failed for user "app"', "fatal", "does not match PostgreSQL's"],
    ["server login has been failing, try again later (server_login_retry)", "busy", "server_login_retry"],
    ["server login has been failing, cached error: connect failed (server_login_retry)", "busy", "server_login_retry"],
    ["pgbouncer cannot connect to server", "busy", "server_login_retry"],
    ["no more connections allowed (max_client_conn)", "busy", "max_client_conn"],
    ["query_wait_timeout", "busy", "query_wait_timeout"],
  ];
  for (const [message, errorClass, setting] of cases) {
    expect([message, classifyError(said(message))]).toEqual([message, errorClass]);
    expect(hint(said(message), config)).toContain(setting);
  }
  // Only PgBouncer's 08P01 is read by its words: the same text under another code is not.
  const other = new (postgres.PostgresError as unknown as new (fields: object) => Error)({ code: "08006", message: "no such database: app" });
  expect(classifyError(other)).toBe("busy");
  expect(hint(other, config)).not.toContain("[databases]");
});

describe("connect() behind a transaction pooler", () => {
  const service = () => bouncers.get("transaction")!.url({ database: name("transaction", "service"), query: "pgbouncer=true" });

  test("pgbouncer=true: unnamed statements, so 200 queries on a pool of 4 all succeed; nothing reaches the server as a parameter", async () => {
    const sql = await connect({ url: service(), timeout: 10 }, { max: 4 }, {});
    try {
      // Named statements through a transaction pool fail or hang (a statement prepared on one
      // server session is missing on the next): tried while writing this test, 189 of 200 hung.
      const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? sql`select ${i}::int as n` : sql`select ${i}::int + 0 as n`)));
      expect(answers.map((rows) => rows[0]!.n)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    } finally {
      await sql.end({ timeout: 1 });
    }
    expect(() => parseConfig({ url: "postgres://u@h/db?pgbouncer=yes" }, {})).toThrow(ConfigError);
    expect(parseConfig({ url: "postgres://u@h/db?pgbouncer=true" }, {}).pooler).toBe("transaction");
  });

  test("every query is bounded: the server cancels one in a transaction, the client gives up one outside, nothing leaks", async () => {
    const sql = await connect({ url: service(), timeout: 10, commandTimeout: 0.5 }, { max: 2 }, {});
    const other = postgres(bouncers.get("transaction")!.url({ database: name("transaction", "service") }), { max: 1, prepare: false, fetch_types: false });
    try {
      const inTransaction = await sql.begin((tx) => tx`select pg_sleep(30)`).then(() => "finished", errorCode);
      expect(inTransaction).toBe("57014");
      const startedAt = performance.now();
      writeFileSync(join(workDir, "sleep.sql"), "select pg_sleep(30)");
      const outside = await Promise.all([sql`select pg_sleep(30)`, sql.file(join(workDir, "sleep.sql"))].map((query) => query.then(() => "finished", errorCode)));
      expect(outside).toEqual(["CLIENT_DEADLINE", "CLIENT_DEADLINE"]);
      expect(performance.now() - startedAt).toBeLessThan(15_000);
      expect((await sql`select 1 as one`)[0]!.one).toBe(1);
      const [{ timeout }] = await other<[{ timeout: string }]>`select current_setting('statement_timeout') as timeout`;
      expect(timeout).toBe("0");
    } finally {
      await Promise.all([sql.end({ timeout: 1 }), other.end({ timeout: 1 })]);
    }
  });
});

test("connect(): a network that goes silent mid-transaction never hangs the service", async () => {
  const bouncer = bouncers.get("transaction")!;
  const proxy = await FaultProxy.start({ host: bouncer.host, port: bouncer.port });
  const url = bouncer.url({ database: name("transaction", "service"), query: "pgbouncer=true" }).replace(`:${bouncer.port}/`, `:${proxy.port}/`);
  const sql = await connect({ url, timeout: 10, commandTimeout: 0.5 }, { max: 1 }, {});
  try {
    const startedAt = performance.now();
    const outcome = await sql.begin(async (tx) => {
      await tx`select 1`;
      proxy.freeze();
      await tx`select 2`;
    }).then(() => "finished", errorCode);
    expect(outcome).toBe("CLIENT_DEADLINE");
    expect(performance.now() - startedAt).toBeLessThan(15_000);
  } finally {
    await closeClient(sql);
    await proxy.close();
  }
});

describe("--direct-url / DIRECT_URL: wait through the pooler, apply the schema directly", () => {
  test("the schema goes to DIRECT_URL, the wait to DATABASE_URL", async () => {
    // Two databases here, so that each can be seen to receive what it should; in use they are one.
    const pooled = bouncers.get("transaction")!.url({ database: name("transaction", "direct"), query: "pgbouncer=true" });
    const run = await init([], { DATABASE_URL: pooled, DIRECT_URL: cluster.url({ database: name("session", "direct") }) });
    expect(run.code).toBe(EXIT.ok);
    expect(run.stderr).toContain(`schema work goes directly to postgres://${cluster.user}:***@127.0.0.1:${cluster.port}/${name("session", "direct")}`);
    expect(await cluster.query("select name from schema_migrations", name("session", "direct"))).toEqual([{ name: "flow-backend" }]);
    expect(await cluster.query("select to_regclass('schema_migrations') as ledger", name("transaction", "direct"))).toEqual([{ ledger: null }]);
  });

  test("--wait-only never touches the direct URL", async () => {
    const run = await init(["--wait-only", "--direct-url", cluster.url({ port: 1 })], { DATABASE_URL: bouncers.get("session")!.url({ database: name("session", "wait") }) });
    expect(run.code).toBe(EXIT.ok);
  });

  test("a malformed direct URL is named as such", async () => {
    const run = await init(["--wait-only"], { DATABASE_URL: bouncers.get("session")!.url(), DIRECT_URL: "mysql://nope" });
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("error: DIRECT_URL: not a postgres:// or postgresql:// URL");
  });
});

test("options=-c ... in the URL, which libpq sends as a start-up parameter and PgBouncer refuses: exit 4 at once, the hint names ignore_startup_parameters", async () => {
  const url = bouncers.get("transaction")!.url({ database: name("transaction", "wait"), query: "options=-c%20search_path%3Dpublic" });
  const run = await init(["--wait-only", "--timeout", "30"], { DATABASE_URL: url });
  expect(run.code).toBe(EXIT.fatal);
  expect(run.stderr).toContain("08P01: unsupported startup parameter: options");
  expect(run.stderr).toContain("ignore_startup_parameters");
  expect(run.ms).toBeLessThan(10_000);
});

/** Start the init script and read its --json events as they come. */
function startInit(args: string[], env: Record<string, string>) {
  const child = Bun.spawn([process.execPath, join(ROOT, "init-database.ts"), ...args, "--json"], {
    cwd: ROOT, env: cleanEnv(env), stdout: "pipe", stderr: "pipe", stdin: "ignore",
  });
  const seen: Record<string, unknown>[] = [];
  const waiters: { predicate: (event: Record<string, unknown>) => boolean; resolve: () => void }[] = [];
  const reading = (async () => {
    let buffered = "";
    for await (const chunk of child.stdout) {
      buffered += new TextDecoder().decode(chunk);
      let newline;
      while ((newline = buffered.indexOf("\n")) !== -1) {
        const event = JSON.parse(buffered.slice(0, newline));
        buffered = buffered.slice(newline + 1);
        seen.push(event);
        for (const waiter of waiters.filter((entry) => entry.predicate(event))) waiter.resolve();
      }
    }
  })();
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  return {
    seen,
    until: (predicate: (event: Record<string, unknown>) => boolean) =>
      new Promise<void>((resolve) => (seen.some(predicate) ? resolve() : waiters.push({ predicate, resolve }))),
    finished: async () => {
      const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text(), reading]);
      clearTimeout(killer);
      return { code, stderr };
    },
  };
}

describe("PostgreSQL behind PgBouncer down, late or never there", () => {
  // server_login_retry = 1: PgBouncer tries PostgreSQL again once a second instead of every 15 s,
  // so that these tests do not wait for it; bench/readiness.ts measures the stock setting.
  const QUICK_RETRY = { server_login_retry: "1" };

  test.each(MODES)("%s mode: PostgreSQL stops, the wait shows PgBouncer's own message, exit 0 soon after it starts again", async (mode) => {
    const bouncer = await PgBouncer.start({ cluster, poolMode: mode, settings: QUICK_RETRY });
    try {
      expect((await init(["--wait-only"], { DATABASE_URL: bouncer.url() })).code).toBe(EXIT.ok);
      await cluster.stop();
      const waiting = startInit(["--wait-only", "--timeout", "40", "--connect-timeout", "0.5"], { DATABASE_URL: bouncer.url() });
      await waiting.until((event) => event.event === "attempt" && String(event.message).includes("server login has been failing"));
      await cluster.start();
      const { code, stderr } = await waiting.finished();
      expectNoSecret({ stdout: JSON.stringify(waiting.seen), stderr }, PASSWORD);
      expect(code).toBe(EXIT.ok);
      expect(waiting.seen.filter((event) => event.event === "attempt").map((event) => event.code)).not.toContain("CONNECTION_CLOSED");
      expect(waiting.seen.at(-1)).toMatchObject({ event: "summary", ok: true });
    } finally {
      await cluster.start().catch(() => {});
      await bouncer.destroy();
    }
  });

  test("PostgreSQL never starts: exit 3 at the deadline, the hint names the pooler", async () => {
    const bouncer = await PgBouncer.start({ cluster: late, poolMode: "transaction" });
    try {
      const run = await init(["--wait-only", "--timeout", "3", "--connect-timeout", "1", "--json"], { DATABASE_URL: bouncer.url() });
      expect(run.code).toBe(EXIT.notReady);
      expect(events(run.stdout).at(-1)).toMatchObject({ event: "summary", code: "POOLER_NO_SERVER" });
      expect(run.stderr).toContain("a pooler (PgBouncer) whose PostgreSQL is down");
      expect(run.stderr).toContain("server_login_retry");
      expect(run.ms).toBeLessThan(15_000);
    } finally {
      await bouncer.destroy();
    }
  });

  test("PostgreSQL not started yet: the pooler waits for it, the schema applied once it is up", async () => {
    const bouncer = await PgBouncer.start({ cluster: late, poolMode: "transaction", settings: QUICK_RETRY });
    try {
      const waiting = startInit(["--timeout", "40", "--connect-timeout", "0.5"], { DATABASE_URL: bouncer.url() });
      await waiting.until((event) => event.event === "attempt" && event.code === "POOLER_NO_SERVER");
      await late.start();
      const { code } = await waiting.finished();
      expect(code).toBe(EXIT.ok);
      expect(waiting.seen.at(-1)).toMatchObject({ event: "summary", ok: true, applied: 1 });
    } finally {
      await bouncer.destroy();
    }
  });
});
