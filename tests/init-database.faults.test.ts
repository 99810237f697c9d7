/**
 * The faults this kit exists for, each caused for real on loopback: a real server that starts
 * late, recovers, fills up, restarts or terminates sessions; a proxy that never answers,
 * closes, resets or crawls; real signals. Every run is checked for the passwords.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { DEFAULTS, EXIT, FLOW_BACKEND_TABLES } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { events, expectNoSecret, runScript, until, useCluster, type Run } from "./helpers.ts";
import { FaultProxy } from "./proxy.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "fault-Pa55-w0rd";
const APP_PASSWORD = "app-Pa55-w0rd";
const ODD_PASSWORD = "p@ss: w/o%rd #1";
const SECRETS = [PASSWORD, APP_PASSWORD, ODD_PASSWORD];

/** Run the init script and fail on any password in what it printed. */
async function init(args: string[], env: Record<string, string | undefined>, options: Parameters<typeof runScript>[3] = {}): Promise<Run> {
  const run = await runScript(SCRIPT, args, env, options);
  expectNoSecret(run, ...SECRETS);
  return run;
}

const attemptsOf = (run: Run) => events(run.stdout).filter((event) => event.event === "attempt");

let cluster: Cluster;
let workDir: string;
useCluster({ password: PASSWORD }, (made) => ({ cluster, dir: workDir } = made));

/** Wait until a query runs in `database`, so a fault can strike in the middle of it. */
async function waitForActivity(server: Cluster, pattern: string, database: string): Promise<void> {
  const sql = `select 1 from pg_stat_activity where datname = '${database}' and state = 'active' and query like '${pattern}'`;
  await until(`a query like ${pattern}`, async () => (await server.query(sql, "postgres")).length > 0, 10_000);
}

describe("1-3: a server that is late, recovering or full", () => {
  test("1. starts late: ready soon after the port opens", async () => {
    const late = await Cluster.create({ password: PASSWORD, start: false });
    try {
      // The server starts once the kit has reported its first refused attempt (observable state, not a sleep).
      let openedAt = 0;
      let starting: Promise<void> | undefined;
      const run = await init(["--wait-only", "--timeout", "30", "--json"], { DATABASE_URL: late.url() }, {
        onStdout: (soFar) => {
          if (soFar.includes(`"event":"attempt"`)) starting ??= late.start().then(() => void (openedAt = performance.now()));
        },
      });
      await starting;
      expect(run.code).toBe(EXIT.ok);
      expect(attemptsOf(run)[0]).toMatchObject({ code: "ECONNREFUSED", class: "not-listening" });
      expect(performance.now() - openedAt).toBeLessThan(5_000); // noticed, not waited out
    } finally {
      await late.destroy();
    }
  });

  test("2. starting or recovering (57P03): retried quickly, then ready after promotion", async () => {
    const primary = await Cluster.create({ password: PASSWORD, database: "rec" });
    const standby = await primary.createStandby({ hot_standby: "off" });
    try {
      await primary.stop();
      // Promoted once the kit has been told "starting" (57P03) at least once.
      let promoting: Promise<void> | undefined;
      const run = await init(["--timeout", "30", "--json"], { DATABASE_URL: standby.url() }, {
        onStdout: (soFar) => {
          if (soFar.includes(`"code":"57P03"`)) promoting ??= standby.promote();
        },
      });
      await promoting;
      expect(run.code).toBe(EXIT.ok);
      const attempts = attemptsOf(run);
      expect(attempts.some((attempt) => attempt.code === "57P03" && attempt.class === "starting")).toBe(true);
      expect(attempts.filter((attempt) => attempt.code === "57P03").every((attempt) => attempt.delay_ms === 50)).toBe(true);
      expect(await standby.query(`select count(*)::int as n from pg_tables where tablename = any('{${FLOW_BACKEND_TABLES}}')`)).toEqual([{ n: 4 }]);
    } finally {
      await standby.destroy();
      await primary.destroy();
    }
  });

  test("3. full (53300): backs off with jitter, ready when slots free", async () => {
    const full = await Cluster.create({ password: PASSWORD, settings: { max_connections: "6", superuser_reserved_connections: "1" } });
    const holders: postgres.Sql[] = [];
    try {
      await full.query(`create role holder login password '${APP_PASSWORD}'; create role app login password '${APP_PASSWORD}'`);
      for (let i = 0; i < 5; i++) {
        const sql = postgres({ host: full.host, port: full.port, user: "holder", password: APP_PASSWORD, database: "postgres", max: 1, idle_timeout: 0, fetch_types: false });
        await sql`select 1`;
        holders.push(sql);
      }
      // The slots are freed once the kit has been refused (53300) three times.
      let freeing: Promise<unknown> | undefined;
      const run = await init(["--wait-only", "--timeout", "30", "--json"], { DATABASE_URL: full.url({ user: "app", password: APP_PASSWORD }) }, {
        onStdout: (soFar) => {
          if (soFar.split(`"code":"53300"`).length > 3) freeing ??= Promise.all(holders.map((sql) => sql.end({ timeout: 1 })));
        },
      });
      await freeing;
      expect(run.code).toBe(EXIT.ok);
      const busy = attemptsOf(run).filter((attempt) => attempt.code === "53300");
      expect(busy.length).toBeGreaterThanOrEqual(3);
      expect(busy.every((attempt) => attempt.class === "busy")).toBe(true);
      // Backed off: each delay within the jittered exponential ceiling for its place in the run of refusals (retryDelay's schedule).
      busy.forEach((attempt, index) => {
        const ceiling = Math.min(DEFAULTS.backoffCapMs, DEFAULTS.backoffBaseMs * 2 ** index);
        expect(attempt.delay_ms as number).toBeLessThanOrEqual(Math.max(DEFAULTS.pollMs, ceiling));
      });
    } finally {
      await Promise.all(holders.map((sql) => sql.end({ timeout: 1 })));
      await full.destroy();
    }
  });
});

describe("4: errors that retrying cannot fix exit 4 at once", () => {
  beforeAll(async () => {
    await cluster.query(`create role no_connect login password '${APP_PASSWORD}'`);
    await cluster.createDatabase("locked");
    await cluster.query(`revoke connect on database locked from public`);
  });

  const cases: [string, () => Record<string, string>, RegExp][] = [
    ["a wrong password", () => ({ DATABASE_URL: cluster.url({ password: "not-" + PASSWORD }) }), /28P01/],
    ["a missing database", () => ({ DATABASE_URL: cluster.url({ database: "missing_db" }) }), /3D000.*\n.*--create-database/],
    ["a missing role", () => ({ DATABASE_URL: cluster.url({ user: "ghost", password: APP_PASSWORD }) }), /28P01|28000/],
    ["no permission to connect", () => ({ DATABASE_URL: cluster.url({ user: "no_connect", password: APP_PASSWORD, database: "locked" }) }), /42501.*\n.*privilege/],
  ];
  for (const [what, env, message] of cases) {
    test(`4. ${what}`, async () => {
      const run = await init(["--timeout", "30", "--json"], env());
      expect(run.code).toBe(EXIT.fatal);
      expect(attemptsOf(run)).toHaveLength(0);
      expect(run.stderr).toMatch(message);
      expect(run.stderr).toMatch(/^hint: /m);
      expect(run.ms).toBeLessThan(10_000); // did not wait for the 30 s deadline
    });
  }
});

describe("5-7: a network that does not answer, drops us, or has no such host", () => {
  test("5. a port that accepts TCP and never answers: the connect timeout fires per attempt, exit 3 at the deadline", async () => {
    const proxy = await FaultProxy.start(undefined, { mode: "blackhole" });
    try {
      const run = await init(["--timeout", "2", "--connect-timeout", "0.5", "--json"], { DATABASE_URL: cluster.url({ port: proxy.port }) });
      expect(run.code).toBe(EXIT.notReady);
      const attempts = attemptsOf(run);
      expect(attempts.length).toBeGreaterThanOrEqual(2);
      expect(attempts.every((attempt) => attempt.code === "CONNECT_TIMEOUT" || attempt.code === "CLIENT_DEADLINE")).toBe(true);
      expect(run.stderr).toContain("accepts TCP but the server never answers");
      expect(run.ms).toBeLessThan(15_000);
    } finally {
      await proxy.close();
    }
  });

  for (const mode of ["close", "reset"] as const) {
    test(`6. a port that ${mode === "close" ? "closes at once" : "resets"}: bounded attempts, exit 3 at the deadline`, async () => {
      const proxy = await FaultProxy.start(undefined, { mode });
      try {
        const run = await init(["--timeout", "2", "--json"], { DATABASE_URL: cluster.url({ port: proxy.port }) });
        expect(run.code).toBe(EXIT.notReady);
        expect(attemptsOf(run).every((attempt) => attempt.class === "busy")).toBe(true);
        expect(proxy.accepted).toBeLessThanOrEqual(45); // 20 a second at most, no reconnect stampede
        expect(proxy.accepted).toBe(attemptsOf(run).length);
        expect(run.stderr).toMatch(/^hint: .*(closed|reset) the connection/m);
      } finally {
        await proxy.close();
      }
    });
  }

  test("7. a name that does not resolve: retried until the deadline, then a hint", async () => {
    const run = await init(["--timeout", "1.5", "--json"], { DATABASE_URL: cluster.url({ host: "db.not-yet-created.invalid" }) });
    expect(run.code).toBe(EXIT.notReady);
    expect(attemptsOf(run).length).toBeGreaterThanOrEqual(2);
    expect(run.stderr).toMatch(/hint: the host name does not resolve/);
  });
});

describe("8-12: faults while the schema is being applied", () => {
  test("8. sessions terminated repeatedly under the init: it retries and succeeds once they stop", async () => {
    for (let round = 0; round < 3; round++) {
      const database = await cluster.freshDatabase();
      // Terminate the init's sessions until three have been killed for real, then let it finish.
      let terminated = 0;
      const running = init(["--timeout", "30"], { DATABASE_URL: cluster.url({ database }) }, { killAfterMs: 40_000 });
      const admin = postgres({ host: cluster.host, port: cluster.port, user: cluster.user, password: PASSWORD, database: "postgres", max: 1, fetch_types: false });
      try {
        const givingUpAt = Date.now() + 20_000;
        while (terminated < 3 && Date.now() < givingUpAt) {
          const [row] = await admin<{ n: number }[]>`select count(*) filter (where pg_terminate_backend(pid))::int as n from pg_stat_activity where application_name = 'init-database'`;
          terminated += row!.n;
          await Bun.sleep(5); // pace the terminating loop; the test waits on the count, not on time
        }
      } finally {
        await admin.end({ timeout: 1 });
      }
      const run = await running;
      expect(terminated).toBeGreaterThanOrEqual(3);
      expect(run.code).toBe(EXIT.ok);
      expect(await cluster.query(`select count(*)::int as n from schema_migrations`, database)).toEqual([{ n: 1 }]);
    }
  });

  test("9. the server restarts in the middle of the schema: the schema still completes, nothing half-applied", async () => {
    const server = await Cluster.create({ password: PASSWORD, database: "restart" });
    try {
      const file = join(workDir, "slow.sql");
      writeFileSync(file, "create table before_sleep (id int);\nselect pg_sleep(1);\ncreate table after_sleep (id int);\n");
      const running = init(["--schema", file, "--timeout", "30", "--json"], { DATABASE_URL: server.url() });
      await waitForActivity(server, "%pg_sleep%", server.database);
      await server.restart();
      const run = await running;
      expect(run.code).toBe(EXIT.ok);
      expect(run.stderr).toContain("schema interrupted");
      expect(await server.query(`select tablename as t from pg_tables where schemaname = 'public' order by 1`))
        .toEqual([{ t: "after_sleep" }, { t: "before_sleep" }, { t: "schema_migrations" }]);
      expect(await server.query(`select count(*)::int as n from schema_migrations`)).toEqual([{ n: 1 }]);
    } finally {
      await server.destroy();
    }
  });

  test("10. a lock held by another session: --command-timeout fires with a clear message", async () => {
    const database = await cluster.freshDatabase();
    const holder = postgres({ host: cluster.host, port: cluster.port, user: cluster.user, password: PASSWORD, database, max: 1, fetch_types: false });
    try {
      await holder`select pg_advisory_lock(hashtext('pg-startup-kit:public.schema_migrations'))`;
      const run = await init(["--command-timeout", "1", "--timeout", "30"], { DATABASE_URL: cluster.url({ database }) });
      expect(run.code).toBe(EXIT.schemaFailed);
      expect(run.stderr).toContain("LOCK_WAIT");
      expect(run.stderr).toMatch(/held by pid \d+ \(postgres\.js, idle, /);
      expect(run.stderr).toContain("is another session holding a lock?");
      expect(await cluster.query(`select to_regclass('users') as t`, database)).toEqual([{ t: null }]);
    } finally {
      await holder.end({ timeout: 1 });
    }
  });

  test("11. a slow, fragmented network: still correct", async () => {
    const database = await cluster.freshDatabase();
    const proxy = await FaultProxy.start({ host: cluster.host, port: cluster.port }, { latencyMs: 20, fragment: true });
    try {
      const run = await init(["--timeout", "60", "--connect-timeout", "20"], { DATABASE_URL: cluster.url({ database, port: proxy.port }) }, { killAfterMs: 90_000 });
      expect(run.code).toBe(EXIT.ok);
      expect(await cluster.query(`select count(*)::int as n from pg_tables where schemaname = 'public'`, database)).toEqual([{ n: 5 }]);
    } finally {
      await proxy.close();
    }
  });

  for (const [signal, code] of [["SIGINT", EXIT.sigint], ["SIGTERM", EXIT.sigterm]] as const) {
    test(`12. ${signal} while applying the schema: exits ${code} promptly, rolled back, connections closed`, async () => {
      const database = await cluster.freshDatabase();
      const file = join(workDir, `interrupted-${signal}.sql`);
      writeFileSync(file, "create table half_done (id int);\nselect pg_sleep(20);\n");
      let child: Bun.Subprocess | undefined;
      const running = init(["--schema", file, "--json"], { DATABASE_URL: cluster.url({ database }) }, { onStart: (started) => (child = started) });
      await waitForActivity(cluster, "%pg_sleep(20)%", database);
      const signalledAt = performance.now();
      child!.kill(signal);
      const run = await running;
      expect(run.code).toBe(code);
      expect(performance.now() - signalledAt).toBeLessThan(5_000);
      expect(events(run.stdout).at(-1)).toMatchObject({ event: "summary", status: "interrupted", exit_code: code });
      const sessions = `select pid from pg_stat_activity where datname = '${database}' and application_name = 'init-database'`;
      await until("the init's sessions to be gone", async () => (await cluster.query(sessions)).length === 0, 2_000);
      expect(await cluster.query(`select to_regclass('half_done') as t`, database)).toEqual([{ t: null }]);
    });
  }
});

describe("13-15: crowds, bad input, awkward passwords", () => {
  test("13. twenty init processes at once on an empty database: all exit 0, the schema applied exactly once", async () => {
    const database = await cluster.freshDatabase();
    const runs = await Promise.all(Array.from({ length: 20 }, () => init(["--json"], { DATABASE_URL: cluster.url({ database }) })));
    expect(runs.map((run) => run.code)).toEqual(Array(20).fill(EXIT.ok));
    expect(runs.flatMap((run) => events(run.stdout)).filter((event) => event.status === "applied")).toHaveLength(1);
  });

  describe("14. bad input exits 2 with a one-line message", () => {
    const secretDir = () => {
      const dir = join(workDir, "secret-dir");
      mkdirSync(dir, { recursive: true });
      return dir;
    };
    const cases: [string, string[], () => Record<string, string>, RegExp][] = [
      ["a malformed URL", [], () => ({ DATABASE_URL: `postgres://app:${PASSWORD}@db:5432:5433/app` }), /DATABASE_URL: port/],
      ["an unknown flag", ["--retry-forever"], () => ({}), /--retry-forever/],
      ["a negative timeout", ["--timeout=-5"], () => ({}), /--timeout "-5" must be a positive number/],
      ["a non-numeric connect timeout", ["--connect-timeout", "ten"], () => ({}), /--connect-timeout "ten"/],
      ["a missing password file", [], () => ({ PGPASSWORD_FILE: join(workDir, "absent") }), /PGPASSWORD_FILE=.* cannot be read \(ENOENT\)/],
      ["an unreadable password file", [], () => ({ POSTGRES_PASSWORD_FILE: secretDir() }), /POSTGRES_PASSWORD_FILE=.* cannot be read \(EISDIR\)/],
      ["both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE", [], () => ({ POSTGRES_PASSWORD: PASSWORD, POSTGRES_PASSWORD_FILE: "/run/secrets/pg" }), /both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set/],
    ];
    for (const [what, args, env, message] of cases) {
      test(what, async () => {
        const run = await init(args, env());
        expect(run.code).toBe(EXIT.usage);
        const [first, second] = run.stderr.trim().split("\n");
        expect(first).toMatch(/^error: /);
        expect(first).toMatch(message);
        expect(second).toBe("hint: see --help");
      });
    }
  });

  describe("15. a password with @ : / % # and spaces", () => {
    let odd: Cluster;
    useCluster({ password: ODD_PASSWORD }, (made) => (odd = made.cluster));

    test("works percent-encoded in the URL", async () => {
      expect((await init(["--wait-only"], { DATABASE_URL: odd.url() })).code).toBe(EXIT.ok);
    });
    test("works in PGPASSWORD", async () => {
      const run = await init(["--wait-only"], { PGHOST: odd.host, PGPORT: String(odd.port), PGUSER: odd.user, PGPASSWORD: ODD_PASSWORD });
      expect(run.code).toBe(EXIT.ok);
    });
    test("works in a password file", async () => {
      const file = join(workDir, "odd-password");
      writeFileSync(file, ODD_PASSWORD + "\n");
      chmodSync(file, 0o600);
      const run = await init(["--wait-only"], { POSTGRES_HOST: odd.host, POSTGRES_PORT: String(odd.port), POSTGRES_USER: odd.user, POSTGRES_PASSWORD_FILE: file });
      expect(run.code).toBe(EXIT.ok);
    });
  });
});
