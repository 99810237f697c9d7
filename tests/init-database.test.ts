import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  classifyError, connect, DEFAULTS, EXIT, FLOW_BACKEND_TABLES, nextDelay, POSTGRES_JS_VERSION, redact, retryDelay, withDeadline,
} from "../init-database.ts";
import { Cluster, freePort } from "./cluster.ts";
import { events, expectNoSecret, ROOT, runScript, useCluster } from "./helpers.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "s3cret-Pa55/with:odd@chars%#";

describe("classifyError", () => {
  test("classifies by code alone", () => {
    const byCode = (code: string) => classifyError(Object.assign(new Error("the message is irrelevant"), { code }));
    for (const code of ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"]) expect(byCode(code)).toBe("not-listening");
    expect(byCode("57P03")).toBe("starting");
    for (const code of ["ECONNRESET", "EPIPE", "ETIMEDOUT", "CONNECT_TIMEOUT", "CONNECTION_CLOSED", "08006", "08001", "57P01", "57P02", "53300", "CLIENT_DEADLINE"]) {
      expect(byCode(code)).toBe("busy");
    }
    for (const code of ["28P01", "28000", "3D000", "42501", "ERR_TLS_CERT_ALTNAME_INVALID", "42P01"]) expect(byCode(code)).toBe("fatal");
    expect(classifyError(new Error("connection refused"))).toBe("fatal");
  });
});

describe("retryDelay", () => {
  test("polls at a fixed short interval while nothing listens or the server starts", () => {
    expect(retryDelay("not-listening", 0)).toBe(DEFAULTS.pollMs);
    expect(retryDelay("starting", 0)).toBe(DEFAULTS.pollMs);
  });

  test("backs off exponentially with full jitter, within the floor and the cap", () => {
    const ceilings = [1, 2, 3, 4, 5, 10, 30].map((n) => retryDelay("busy", n, () => 1));
    expect(ceilings).toEqual([...ceilings].sort((a, b) => a - b));
    expect(ceilings.at(-1)).toBe(DEFAULTS.backoffCapMs);
    expect(retryDelay("busy", 30, () => 0)).toBe(DEFAULTS.pollMs);
    expect(retryDelay("busy", 30, () => 0.5)).toBe(DEFAULTS.backoffCapMs / 2);
  });

  test("jitters busy delays with its random source, so replicas do not retry in step", () => {
    expect(retryDelay("busy", 5, () => 0.3)).not.toBe(retryDelay("busy", 5, () => 0.9));
  });
});

describe("nextDelay: the deadline is used whole", () => {
  test("a delay that would pass the deadline is cut to what remains, so the last attempt is made at the deadline", () => {
    expect(nextDelay("busy", 10, 1_200, () => 0.99)).toBe(1_200); // 4.95 s of backoff, 1.2 s left
    expect(nextDelay("busy", 10, 30, () => 0.99)).toBe(30); // even below the poll interval
    expect(nextDelay("not-listening", 0, 10)).toBe(10);
  });

  test("a delay within the deadline is left as it is", () => {
    expect(nextDelay("busy", 3, 10_000, () => 0.5)).toBe(retryDelay("busy", 3, () => 0.5));
    expect(nextDelay("starting", 0, 10_000)).toBe(DEFAULTS.pollMs);
  });

  test("only once the deadline is reached is there no next attempt", () => {
    expect(nextDelay("busy", 1, 1)).toBe(1);
    expect(nextDelay("busy", 1, 0)).toBeUndefined();
    expect(nextDelay("not-listening", 0, -5)).toBeUndefined();
  });
});

describe("redact", () => {
  test("hides known secrets, raw and encoded, and any URL password", () => {
    expect(redact("auth failed for p@ss and p%40ss", ["p@ss"])).toBe("auth failed for *** and ***");
    expect(redact("see postgres://app:hunter2@db:5432/app now")).toBe("see postgres://app:***@db:5432/app now");
    expect(redact("postgresql://app:a@b@db/app")).toBe("postgresql://app:***@db/app");
    expect(redact("a long-secret-x9, a.long-secret-x9z", ["long-secret-x9"])).toBe("a ***, a.***z");
    expect(redact("but b, (b) and b@", ["b"])).toBe("but ***, (***) and ***@");
  });
});

describe("withDeadline", () => {
  test("rejects a promise that never settles with CLIENT_DEADLINE", async () => {
    const never = new Promise<never>(() => {});
    await expect(withDeadline(never, 20)).rejects.toMatchObject({ code: "CLIENT_DEADLINE" });
  });
});

describe("the file's layout", () => {
  const source = readFileSync(join(ROOT, SCRIPT), "utf8");
  // Each section opens with a rule line, then "// Title: what it owns".
  const sections = source.split(/^\/\/ -{20,}\n/m).slice(1).map((text) => ({ title: /^\/\/ ([^:\n]+):/.exec(text)?.[1] ?? "(no title)", text }));
  // Code only: comments, string literals and the text of template literals say nothing about what a section uses.
  const codeOf = (text: string) => text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "").replace(/"(?:[^"\\\n]|\\.)*"/g, '""')
    .replace(/`[^`]*`/g, (template) => (template.match(/\$\{[^}]*\}/g) ?? []).join(" "));

  test("has the sections its contents list names, in that order", () => {
    const list = /Contents, in this order[^:]*:\n((?: \*.*\n)+?) \*\s*\n/.exec(source)?.[1] ?? "";
    const named = list.replace(/^ \*\s*/gm, "").replace(/\s+/g, " ").replace(/\(.*?\)/g, "").split(". ")[0]!
      .split(",").map((name) => name.trim().toLowerCase());
    expect(named.length).toBeGreaterThan(5);
    expect(sections.map((section) => section.title.toLowerCase())).toEqual(named);
  });

  test("reads top down: no section uses a name declared in a later one, exported or not", () => {
    const reaches: string[] = [];
    for (const [index, section] of sections.entries()) {
      const declared = [...section.text.matchAll(/^(?:export )?(?:async )?(?:function\*?|class|const|let|type|interface|enum) ([A-Za-z_$][\w$]*)/gm)].map((match) => match[1]!);
      for (const name of declared) {
        // A use, not an object key or a type member of the same name (`hint: ...`).
        const use = new RegExp(`(?<![\\w$.])${name.replaceAll("$", "\\$")}(?![\\w$]|\\??:)`);
        for (const earlier of sections.slice(0, index)) if (use.test(codeOf(earlier.text))) reaches.push(`${earlier.title} uses ${name} from ${section.title}`);
      }
    }
    expect(reaches).toEqual([]);
  });

  test("the driver's workarounds were read against the postgres.js that is installed", () => {
    const installed = JSON.parse(readFileSync(join(ROOT, "node_modules", "postgres", "package.json"), "utf8")).version;
    expect(installed).toBe(POSTGRES_JS_VERSION);
    expect(JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).dependencies.postgres).toBe(POSTGRES_JS_VERSION);
  });

  test("only the driver section names postgres.js's own classes and options", () => {
    const outside = sections.filter((section) => section.title !== "Driver")
      .filter((section) => /postgres\.PostgresError|\.reserve\(\)|\bssl:|\bsocket:/.test(codeOf(section.text)))
      .map((section) => section.title);
    expect(outside).toEqual([]);
  });
});

describe("init-database.ts against a real server", () => {
  let cluster: Cluster;
  let workDir: string;
  useCluster({ password: PASSWORD }, (made) => ({ cluster, dir: workDir } = made));

  test("--wait-only exits 0 once an authenticated query succeeds, and changes nothing", async () => {
    const database = await cluster.freshDatabase();
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    expect(run.stdout).toMatch(/^ready: postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/fresh_\d+ \(PostgreSQL 15\.\d+\)/);
    expect(await cluster.query(`select to_regclass('users') as t`, database)).toEqual([{ t: null }]);
    expectNoSecret(run, PASSWORD);
  });

  test("creates the four Flow-Backend tables with their keys, and a re-run changes nothing", async () => {
    const database = await cluster.freshDatabase();
    const env = { DATABASE_URL: cluster.url({ database }) };
    const first = await runScript(SCRIPT, [], env);
    expect(first.code).toBe(EXIT.ok);
    expect(first.stdout).toContain("applied 1 of 1 schema step");
    const tables = await cluster.query<{ table_name: string }>(
      `select table_name from information_schema.tables where table_schema = 'public' order by 1`, database);
    expect(tables.map((row) => row.table_name)).toEqual([...FLOW_BACKEND_TABLES, "schema_migrations"].sort());
    const foreignKeys = await cluster.query<{ count: string }>(
      `select count(*) from information_schema.table_constraints where constraint_type = 'FOREIGN KEY'`, database);
    expect(Number(foreignKeys[0]!.count)).toBe(3);

    const again = await runScript(SCRIPT, [], env);
    expect(again.code).toBe(EXIT.ok);
    expect(again.stdout).toContain("schema already up to date");
    expect(await cluster.query(`select name from schema_migrations`, database)).toEqual([{ name: "flow-backend" }]);
  });

  test("reports built-in tables dropped after the ledger recorded them, instead of silently re-creating them", async () => {
    const database = await cluster.freshDatabase();
    const env = { DATABASE_URL: cluster.url({ database }) };
    expect((await runScript(SCRIPT, [], env)).code).toBe(EXIT.ok);
    await cluster.query(`drop table notifications`, database);
    const again = await runScript(SCRIPT, [], env);
    expect(again.code).toBe(EXIT.schemaFailed);
    expect(again.stderr).toContain("tables missing after the schema ran: notifications (were they dropped? delete the ledger row to re-apply)");
    expect(await cluster.query(`select to_regclass('notifications') as t`, database)).toEqual([{ t: null }]);
  });

  test("fails fast on a wrong password with exit 4 and a hint, without retrying", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "30"], { DATABASE_URL: cluster.url({ password: "wrong-password" }) });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("28P01");
    expect(run.stderr).toContain("old volume may hold a different password");
    expect(run.ms).toBeLessThan(10_000); // did not retry until the 30 s deadline
    expectNoSecret(run, "wrong-password", PASSWORD);
  });

  test("fails fast on a missing database with exit 4 naming --create-database", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "30"], { DATABASE_URL: cluster.url({ database: "no_such_db" }) });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("3D000");
    expect(run.stderr).toContain("--create-database");
  });

  test("gives up on a closed port with exit 3 at the deadline, polling it all along at the poll pace", async () => {
    const port = await freePort();
    const windowMs = 1_000;
    const run = await runScript(SCRIPT, ["--timeout", String(windowMs / 1_000), "--json"], { DATABASE_URL: cluster.url({ port }) });
    expect(run.code).toBe(EXIT.notReady);
    const attempts = events(run.stdout).filter((event) => event.event === "attempt");
    expect(attempts.every((event) => event.code === "ECONNREFUSED")).toBe(true);
    // One attempt each pollMs over the window, and the first at once: 21 at most (20 a second)...
    expect(attempts.length).toBeLessThanOrEqual(windowMs / DEFAULTS.pollMs + 1);
    // ...and at least a quarter of them, however loaded the machine: a kit that stopped polling,
    // or slowed to a fraction of its pace, makes one or two attempts, not five.
    expect(attempts.length).toBeGreaterThanOrEqual(Math.floor(windowMs / DEFAULTS.pollMs / 4));
    expect(run.ms).toBeGreaterThanOrEqual(900);
    expect(run.ms).toBeLessThan(15_000);
  });

  test("gives up on a host name that does not resolve with exit 3 and a DNS hint", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "1"], { DATABASE_URL: cluster.url({ host: "db.does-not-exist.invalid" }) });
    expect(run.code).toBe(EXIT.notReady);
    expect(run.stderr).toMatch(/ENOTFOUND|EAI_AGAIN/);
    expect(run.stderr).toContain("does not resolve");
    expectNoSecret(run, PASSWORD);
  });

  test("stops after --max-retries attempts", async () => {
    const port = await freePort();
    const run = await runScript(SCRIPT, ["--max-retries", "3", "--json"], { DATABASE_URL: cluster.url({ port }) });
    expect(run.code).toBe(EXIT.notReady);
    expect(events(run.stdout).filter((event) => event.event === "attempt")).toHaveLength(3);
  });

  test("reads the password from PGPASSWORD_FILE", async () => {
    writeFileSync(join(workDir, "password"), PASSWORD + "\n");
    const run = await runScript(SCRIPT, ["--wait-only"], {
      PGHOST: cluster.host, PGPORT: String(cluster.port), PGUSER: cluster.user, PGPASSWORD_FILE: join(workDir, "password"),
    });
    expect(run.code).toBe(EXIT.ok);
    expectNoSecret(run, PASSWORD);
  });

  test("--json prints only NDJSON on stdout, ending in a summary", async () => {
    const database = await cluster.freshDatabase();
    const run = await runScript(SCRIPT, ["--json"], { DATABASE_URL: cluster.url({ database }) });
    expect(run.code).toBe(EXIT.ok);
    const lines = events(run.stdout);
    expect(lines.map((line) => line.event)).toEqual(["ready", "schema", "summary"]);
    expect(lines.at(-1)).toMatchObject({ ok: true, status: "done", exit_code: 0, applied: 1 });
  });

  test("a malformed URL is a usage error (exit 2) that never shows the password", async () => {
    const run = await runScript(SCRIPT, [], { DATABASE_URL: `postgres://app:${encodeURIComponent(PASSWORD)}@db:notaport/app` });
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr.trim().split("\n")[0]).toMatch(/^error: DATABASE_URL: port is not a number from 1 to 65535; if the password holds \/ \? # @ or %, percent-encode them/);
    expectNoSecret(run, PASSWORD);
    expect(run.stderr).not.toContain("    at "); // no stack trace
  });

  test("an unknown flag is a usage error (exit 2)", async () => {
    const run = await runScript(SCRIPT, ["--wait-forever"], {});
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain("--wait-forever");
  });

  test("a negative number after a space is refused by its own rule, not as an 'ambiguous' argument", async () => {
    const run = await runScript(SCRIPT, ["--timeout", "-1", "--wait-only"], {});
    expect(run.code).toBe(EXIT.usage);
    expect(run.stderr).toContain('--timeout "-1" must be a positive number of seconds');
  });

  test("ten runs at once on an empty database all exit 0 and apply the schema once", async () => {
    const database = await cluster.freshDatabase();
    const runs = await Promise.all(Array.from({ length: 10 }, () => runScript(SCRIPT, ["--json"], { DATABASE_URL: cluster.url({ database }) })));
    expect(runs.map((run) => run.code)).toEqual(Array(10).fill(EXIT.ok));
    const applied = runs.flatMap((run) => events(run.stdout)).filter((event) => event.event === "schema" && event.status === "applied");
    expect(applied).toHaveLength(1);
    expect(await cluster.query(`select count(*)::int as n from schema_migrations`, database)).toEqual([{ n: 1 }]);
  });

  test("connect() returns a ready client for library use", async () => {
    const sql = await connect({ url: cluster.url(), timeout: 5 }, {}, {});
    try {
      const [row] = await withDeadline(sql`select current_user as who`, 5_000);
      expect(row).toEqual({ who: "postgres" });
    } finally {
      await sql.end({ timeout: 1 });
    }
  });

  test("shows a live progress line on a terminal, in colour unless NO_COLOR is set", async () => {
    const port = await freePort();
    const onTerminal = async (noColor: string | undefined) => {
      // script(1) gives the process a real pseudo-terminal and copies what it wrote there.
      const command = `${process.execPath} init-database.ts --wait-only --timeout 0.5 --url '${cluster.url({ port })}'`;
      const run = await runScript("tests/fixtures/on-a-terminal.ts", [command], { NO_COLOR: noColor });
      expectNoSecret(run, PASSWORD);
      return run.stdout;
    };
    const plain = await onTerminal("1");
    expect(plain).toMatch(/\r\x1b\[2Kattempt \d+, \d+ ms: ECONNREFUSED/);
    expect(plain).not.toContain("\x1b[31m");
    expect(await onTerminal(undefined)).toContain("\x1b[31merror: \x1b[0m");
  });

  test("exits 143 promptly on SIGTERM while waiting", async () => {
    const port = await freePort();
    // Sent on the first attempt's progress line: the script is then surely waiting, its handlers installed.
    const run = await runScript(SCRIPT, ["--timeout", "60"], { DATABASE_URL: cluster.url({ port }) }, { signalOn: "attempt 1," });
    expect(run.code).toBe(EXIT.sigterm);
    expect(run.ms).toBeLessThan(10_000);
    expect(run.stderr).toContain("interrupted by SIGTERM");
  });
});
