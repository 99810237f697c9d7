#!/usr/bin/env bun
/**
 * test-db-connectivity.ts: prove that a PostgreSQL database is usable by a service. Runs seven
 * named, timed checks (Basic Connection, Connection with Retry, Concurrent Connections,
 * Database Health, Schema Validation, Reconnect, Statement Timeout) through the same
 * configuration, retry and deadline code as init-database.ts, and reports each honestly.
 *
 * Usage:
 *   bun run test-db-connectivity.ts [--url URL] [--concurrency N] [--only NAME[,NAME]]
 *        [--schema FILE | --migrations DIR] [--allow-read-only] [--json] [--junit FILE]
 *        [--timeout S] [--connect-timeout S] [--command-timeout S] [--quiet]
 *
 * Environment: the same as init-database.ts (DATABASE_URL, PG*, POSTGRES_*, *_FILE secrets).
 *
 * Exit codes: 0 every check passed, 1 a check failed, 2 usage or configuration error,
 *   130/143 on SIGINT/SIGTERM.
 *
 * Example: DATABASE_URL=postgres://app:secret@localhost:5432/app bun run test-db-connectivity.ts --junit junit.xml
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type postgres from "postgres";
import {
  abortOnSignals, absorbDroppedClientErrors, BUILT_IN_STEP, closeClient, COMMON_FLAGS, CONNECTION_SOURCES, ConfigError, createClient, Deadline, DEFAULTS, describeTarget, dialTarget, errorCode, EXIT as KIT_EXIT, explain,
  FLOW_BACKEND_FOREIGN_KEYS, FLOW_BACKEND_TABLES, formatMs, hint, localSettings, parseConfig, parseFlags, readLedger, recordedSteps, ledgerBesideTool, stepStanding, reportConfigError, Reporter, redact, schemaPlan,
  secretsOf, signalExit, waitUntilReady, withDeadline, type Config, type SchemaStep, type Sql, type Target,
} from "./init-database.ts";

/** init-database.ts's exit codes that the suite shares, and its own 1 for a failed check. */
const EXIT = { ok: KIT_EXIT.ok, failed: 1, usage: KIT_EXIT.usage, sigint: KIT_EXIT.sigint, sigterm: KIT_EXIT.sigterm } as const;

/** The suite's own defaults: it runs after the database is up, so it fails fast instead of waiting. */
const SUITE_DEFAULTS = {
  timeoutSeconds: 10,
  connectTimeoutSeconds: 5,
  concurrency: 20,
  latencySamples: 5,
  /** The statement timeout the enforcement probe sets locally, so the check never waits long. */
  probeStatementTimeoutMs: 200,
} as const;

export const CHECK_NAMES = [
  "Basic Connection", "Connection with Retry", "Concurrent Connections", "Database Health",
  "Schema Validation", "Reconnect", "Statement Timeout",
] as const;
export type CheckName = (typeof CHECK_NAMES)[number];

export interface CheckResult {
  name: CheckName;
  ok: boolean;
  ms: number;
  detail: string;
  hint?: string;
  /** The host the check ran against: the one target_session_attrs selects. */
  host?: string;
}

interface SuiteContext {
  config: Config;
  concurrency: number;
  allowReadOnly: boolean;
  steps: SchemaStep[] | undefined;
  signal: AbortSignal;
  /** The host target_session_attrs selects, found by Basic Connection (or by the first check run). */
  target?: Target;
}

/** A failed check: its message is the one line the report shows, with a hint. */
class CheckFailure extends Error {
  constructor(message: string, readonly fix?: string) {
    super(message);
  }
}

/** A check's every database await gets this deadline. */
function deadlineOf(config: Config): number {
  return config.connectTimeoutMs + config.commandTimeoutMs;
}

/** One connection attempt with the kit's retry code, but no waiting: the suite runs on a live database. */
async function openOnce(config: Config, signal: AbortSignal, max = 1): Promise<Sql> {
  const { sql } = await waitUntilReady({ ...config, maxRetries: 1 }, { signal, overrides: { max } });
  return sql;
}

export function hostName(target: Target): string {
  return `${target.host.includes(":") ? `[${target.host}]` : target.host}:${target.port}`;
}

/**
 * The configuration narrowed to the one host target_session_attrs selects, so that every
 * check tests the server a service would use, not whichever host is listed first.
 */
async function selectedHost(context: SuiteContext): Promise<Config> {
  if (!context.target) {
    const { sql, target } = await waitUntilReady({ ...context.config, maxRetries: 1 }, { signal: context.signal, overrides: { max: 1 } });
    await closeClient(sql);
    context.target = target;
  }
  return { ...context.config, targets: [context.target] };
}

/** Forward `relay` (a loopback port, or a Unix socket in a directory) to the real server over its own transport. */
function forwarder(relay: Target, target: Target): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((client) => {
      const upstream = dialTarget(target);
      client.pipe(upstream).pipe(client);
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
    });
    server.once("error", reject);
    if (relay.socket) server.listen(relay.socket, () => resolve(server));
    else server.listen(relay.port, relay.host, () => resolve(server));
  });
}

function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no free port"))));
    });
  });
}

/** A server's uptime for people: "850 ms", "42.0 s", "7 min", "5.2 h", "3.1 days". */
export function formatUptime(ms: number): string {
  if (ms < 60_000) return formatMs(ms);
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} days`;
}

/** The one check that waits (up to --timeout): the rest run on the connection it proved. */
async function basicConnection(context: SuiteContext): Promise<string> {
  const { config, signal } = context;
  const { sql, target, pooled } = await waitUntilReady(config, { signal, overrides: { max: 1 } });
  context.target = target;
  try {
    const startedAt = performance.now();
    const [row] = await withDeadline(sql`select 1 as one, current_setting('server_version') as version`, deadlineOf(config), signal);
    return `PostgreSQL ${row!.version}${pooled ? " through a pooler" : ""}, SELECT 1 round trip ${formatMs(performance.now() - startedAt)}`;
  } finally {
    await closeClient(sql);
  }
}

/**
 * The client is told it talks to the selected host (its name, so TLS checks that host's
 * certificate) but dials a relay that refuses at first and then forwards to that host over
 * the same transport, TCP or Unix socket.
 */
async function connectionWithRetry(context: SuiteContext): Promise<string> {
  const config = await selectedHost(context);
  const real = config.targets[0]!;
  const unix = real.socket !== undefined;
  const dir = unix ? mkdtempSync(join(tmpdir(), "pg-kit-relay-")) : undefined;
  const relay: Target = dir ? { host: dir, port: real.port, socket: join(dir, `.s.PGSQL.${real.port}`) } : { host: "127.0.0.1", port: await freeLoopbackPort() };
  let server: Server | undefined;
  let opening: Promise<Server> | undefined;
  const refused: string[] = [];
  try {
    const ready = await waitUntilReady({ ...config, maxRetries: 5 }, {
      signal: context.signal,
      dial: () => dialTarget(relay),
      onAttempt: ({ error }) => {
        refused.push(errorCode(error));
        opening ??= forwarder(relay, real).then((opened) => (server = opened));
      },
    });
    await closeClient(ready.sql);
    // Nothing listening is ECONNREFUSED on TCP and ENOENT for a Unix socket that is not there yet.
    const expected = unix ? "ENOENT" : "ECONNREFUSED";
    if (refused[0] !== expected) throw new CheckFailure(`the first attempt failed with ${refused[0] ?? "nothing"}, not ${expected}`);
    return `first attempt refused (${refused[0]}), connected on attempt ${ready.attempts} after ${formatMs(ready.elapsedMs)} through a ${unix ? "Unix-socket" : "TCP"} relay`;
  } finally {
    await opening?.catch(() => undefined);
    server?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/** The cancel key's pid of the session that ran a query: the server's pid, or one a pooler made up. */
function clientKey(rows: object): number | undefined {
  return (rows as { state?: { pid?: number } }).state?.pid;
}

/**
 * Through a pooler N client connections share fewer server sessions, so sessions are counted by
 * their cancel keys (PgBouncer gives each client its own), and the server's free slots limit
 * nothing (the pooler queues).
 */
async function concurrentConnections(context: SuiteContext): Promise<string> {
  const { concurrency, signal } = context;
  const config = await selectedHost(context);
  const admin = await openOnce(config, signal);
  let capacity;
  try {
    capacity = await withDeadline(admin<{ max: number; reserved: number; used: number; pid: number }[]>`
      select current_setting('max_connections')::int as max,
             current_setting('superuser_reserved_connections')::int as reserved,
             (select count(*)::int from pg_stat_activity where backend_type = 'client backend') as used,
             pg_backend_pid() as pid`, deadlineOf(config), signal);
  } finally {
    await closeClient(admin);
  }
  const { max, reserved, used, pid } = capacity[0]!;
  const pooled = clientKey(capacity) !== pid;
  const free = max - reserved - used;
  if (!pooled && concurrency > free) {
    throw new CheckFailure(
      `--concurrency ${concurrency} exceeds the ${free} free connection slots (max_connections=${max}, reserved=${reserved}, in use=${used})`,
      `lower --concurrency to ${Math.max(1, free)} or raise max_connections`,
    );
  }
  const startedAt = performance.now();
  const clients = Array.from({ length: concurrency }, () => createClient(config, config.targets[0]!, { max: 1 }));
  try {
    const outcomes = await Promise.allSettled(
      clients.map((sql) => withDeadline(sql<{ pid: number }[]>`select pg_backend_pid() as pid`, deadlineOf(config), signal)),
    );
    const failures = outcomes.filter((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected");
    if (failures.length > 0) {
      const fix = pooled ? "in session mode the pooler's pool must hold them all: raise default_pool_size or lower --concurrency" : hint(failures[0]!.reason, config);
      throw new CheckFailure(`${failures.length} of ${concurrency} connections failed, first: ${explain(failures[0]!.reason)}`, fix);
    }
    const answers = outcomes.map((outcome) => (outcome as PromiseFulfilledResult<{ pid: number }[]>).value);
    const sessions = new Set(answers.map(clientKey)).size;
    const serverSessions = new Set(answers.map((rows) => rows[0]!.pid)).size;
    if (sessions !== concurrency || (!pooled && serverSessions !== concurrency)) {
      throw new CheckFailure(`expected ${concurrency} separate sessions, got ${pooled ? sessions : serverSessions}`);
    }
    const elapsed = formatMs(performance.now() - startedAt);
    if (pooled) {
      return `${concurrency}/${concurrency} connections through the pooler in ${elapsed}, served by ${serverSessions} server session${serverSessions === 1 ? "" : "s"}; server allows ${max} (the pooler queues beyond its pool)`;
    }
    return `${concurrency}/${concurrency} connections in ${elapsed}; server allows ${max} (${reserved} reserved, ${used} in use before)`;
  } finally {
    await Promise.all(clients.map(closeClient));
  }
}

async function databaseHealth(context: SuiteContext): Promise<string> {
  const { allowReadOnly, signal } = context;
  const config = await selectedHost(context);
  const sql = await openOnce(config, signal);
  try {
    const [health] = await withDeadline(sql<{
      version: string; uptime_ms: number; in_recovery: boolean; read_only: string; used: number; max: number; size: string;
    }[]>`
      select current_setting('server_version') as version,
             (extract(epoch from now() - pg_postmaster_start_time()) * 1000)::float8 as uptime_ms,
             pg_is_in_recovery() as in_recovery,
             current_setting('transaction_read_only') as read_only,
             (select count(*)::int from pg_stat_activity where backend_type = 'client backend') as used,
             current_setting('max_connections')::int as max,
             pg_size_pretty(pg_database_size(current_database())) as size`, deadlineOf(config), signal);
    const samples: number[] = [];
    for (let i = 0; i < SUITE_DEFAULTS.latencySamples; i++) {
      const startedAt = performance.now();
      await withDeadline(sql`select 1`, deadlineOf(config), signal);
      samples.push(performance.now() - startedAt);
    }
    const median = samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)]!;
    const { version, uptime_ms, in_recovery, read_only, used, max, size } = health!;
    const detail = `PostgreSQL ${version}, up ${formatUptime(uptime_ms)}, ${in_recovery ? "in recovery (standby)" : "primary"}, ` +
      `${used}/${max} connections, size ${size}, latency ${median.toFixed(2)} ms`;
    if ((in_recovery || read_only === "on") && !allowReadOnly) {
      throw new CheckFailure(`read-only: ${detail}`, "point the service at the primary, or pass --allow-read-only for a replica");
    }
    return detail;
  } finally {
    await closeClient(sql);
  }
}

async function schemaValidation(context: SuiteContext): Promise<string> {
  const { steps, signal } = context;
  const config = await selectedHost(context);
  const sql = await openOnce(config, signal);
  const deadline = Deadline.forRun({ timeoutMs: deadlineOf(config), answerMs: deadlineOf(config), signal });
  try {
    if (steps) {
      const recorded = await recordedSteps(sql, steps, config, deadline);
      const missing = steps.filter((step) => stepStanding(step, recorded.get(step.name)) !== "recorded").map((step) => step.name);
      if (missing.length > 0) throw new CheckFailure(`not applied or changed since: ${missing.join(", ")}`, "run init-database.ts with the same --schema/--migrations");
      const tables = [...new Set([...recorded.values()].map((record) => record.table))];
      const checksums = [...recorded.values()].some((record) => record.checksum !== undefined);
      return `${steps.length} step${steps.length === 1 ? "" : "s"} recorded in ${tables.join(" and ")}${checksums ? " with matching checksums" : ""}`;
    }
    // Without the files there are no checksums to compare, but the ledger still says what was
    // applied: a database built by migrations is not expected to hold the built-in tables.
    const recorded = Object.keys(await readLedger(sql, config, deadline));
    if (recorded.length > 0 && !recorded.includes(BUILT_IN_STEP)) {
      return `${recorded.length} step${recorded.length === 1 ? "" : "s"} recorded in ${config.ledgerTable} (${recorded.sort().at(-1)} last by name); pass the same --schema/--migrations to compare checksums`;
    }
    const tables = await withDeadline(sql<{ table: string; keys: string | null }[]>`
      select t as table,
             (select string_agg(a.attname, ',' order by a.attnum)
                from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
               where i.indrelid = to_regclass(t) and i.indisprimary) as keys
        from unnest(string_to_array(${FLOW_BACKEND_TABLES.join(",")}, ',')) t
       where to_regclass(t) is not null`, deadlineOf(config), signal);
    const missingTables = FLOW_BACKEND_TABLES.filter((name) => !tables.some((row) => row.table === name));
    if (missingTables.length > 0) throw new CheckFailure(`missing tables: ${missingTables.join(", ")}`, "run init-database.ts first");
    const keyless = tables.filter((row) => !row.keys).map((row) => row.table);
    if (keyless.length > 0) throw new CheckFailure(`tables without a primary key: ${keyless.join(", ")}`);
    const foreignKeys = await withDeadline(sql<{ fk: string }[]>`
      select c.conrelid::regclass::text || '.' || a.attname || ' -> ' || c.confrelid::regclass::text as fk
        from pg_constraint c join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1]
       where c.contype = 'f'`, deadlineOf(config), signal);
    const present = new Set(foreignKeys.map((row) => row.fk));
    const missingKeys = FLOW_BACKEND_FOREIGN_KEYS.filter((fk) => !present.has(fk));
    if (missingKeys.length > 0) throw new CheckFailure(`missing foreign keys: ${missingKeys.join("; ")}`);
    return `${tables.length} tables with primary keys, ${FLOW_BACKEND_FOREIGN_KEYS.length} foreign keys`;
  } finally {
    deadline.done();
    await closeClient(sql);
  }
}

/**
 * The victim holds its session in a transaction while another client ends it: behind a
 * transaction pooler that is the only way to know which server session is the victim's (and
 * that the other client is not on the same one).
 */
async function reconnect(context: SuiteContext): Promise<string> {
  const { signal } = context;
  const config = await selectedHost(context);
  const victim = await openOnce(config, signal);
  const admin = await openOnce(config, signal).catch(async (error) => {
    await closeClient(victim);
    throw error;
  });
  let fresh: Sql | undefined;
  try {
    let pid = 0;
    const inTransaction = await withDeadline(victim.begin(async (tx) => {
      [{ pid }] = await tx<[{ pid: number }]>`select pg_backend_pid() as pid`;
      const [{ terminated }] = await withDeadline(admin<[{ terminated: boolean }]>`select pg_terminate_backend(${pid}) as terminated`, deadlineOf(config), signal);
      if (!terminated) throw new CheckFailure(`pg_terminate_backend(${pid}) returned false`, "the user needs pg_signal_backend or to own the session");
      await tx`select 1`;
    }), deadlineOf(config), signal).then(() => "answered", (error) => {
      if (error instanceof CheckFailure) throw error;
      return errorCode(error);
    });
    if (inTransaction === "answered") throw new CheckFailure(`session ${pid} still answered after pg_terminate_backend(${pid})`);
    // The old client is dropped, not reused: postgres.js on Bun may leave its next query pending.
    await closeClient(victim);
    fresh = await openOnce(config, signal);
    const startedAt = performance.now();
    const [row] = await withDeadline(fresh`select pg_backend_pid() as pid`, deadlineOf(config), signal);
    if (row!.pid === pid) throw new CheckFailure(`the fresh client reused the terminated session ${pid}`);
    return `session ${pid} terminated mid-transaction: the client's query failed at once (${inTransaction}); a fresh client answered in ${formatMs(performance.now() - startedAt)}`;
  } finally {
    await Promise.all([closeClient(victim), closeClient(admin), closeClient(fresh)]);
  }
}

/**
 * The kit sets --command-timeout at the start of each of its transactions (localSettings):
 * behind a pooler a start-up parameter is refused and a session SET leaks to other clients.
 * So the check proves the setting holds inside such a transaction, that the server cancels a
 * query past it (57014), and that nothing set locally outlives its transaction.
 */
async function statementTimeout(context: SuiteContext): Promise<string> {
  const { signal } = context;
  const config = await selectedHost(context);
  const sql = await openOnce(config, signal);
  const setting = async (tx: postgres.TransactionSql<{}>) => (await tx<[{ ms: number }]>`select setting::int as ms from pg_settings where name = 'statement_timeout'`)[0].ms;
  try {
    const probeMs = SUITE_DEFAULTS.probeStatementTimeoutMs;
    const startedAt = performance.now();
    const outcome = await withDeadline(
      sql.begin(async (tx) => {
        await tx.unsafe(localSettings(config));
        const ms = await setting(tx);
        if (ms !== config.commandTimeoutMs) {
          throw new CheckFailure(`statement_timeout is ${ms} ms after the kit's SET LOCAL, not --command-timeout (${config.commandTimeoutMs} ms)`);
        }
        await tx.unsafe(`set local statement_timeout = ${probeMs}`);
        await tx`select pg_sleep(${(probeMs * 10) / 1000})`;
      }).then(() => "finished", (error) => {
        if (error instanceof CheckFailure) throw error;
        return errorCode(error);
      }),
      deadlineOf(config),
      signal,
    );
    if (outcome !== "57014") {
      throw new CheckFailure(`a query past a ${probeMs} ms statement_timeout ${outcome === "finished" ? "was not cancelled" : `failed with ${outcome}, not 57014`}`);
    }
    const cancelledMs = performance.now() - startedAt;
    const after = await withDeadline(sql.begin(setting), deadlineOf(config), signal);
    if (after === probeMs || after === config.commandTimeoutMs) {
      throw new CheckFailure(`statement_timeout ${after} ms outlived the transaction that set it`, "a SET leaks to other clients of a transaction pool: set it with SET LOCAL");
    }
    return `--command-timeout ${formatMs(config.commandTimeoutMs)} holds in the kit's transactions; a query past ${probeMs} ms was cancelled by the server (57014) after ${formatMs(cancelledMs)}; nothing outlived its transaction`;
  } finally {
    await closeClient(sql);
  }
}

const CHECKS: Record<CheckName, (context: SuiteContext) => Promise<string>> = {
  "Basic Connection": basicConnection,
  "Connection with Retry": connectionWithRetry,
  "Concurrent Connections": concurrentConnections,
  "Database Health": databaseHealth,
  "Schema Validation": schemaValidation,
  Reconnect: reconnect,
  "Statement Timeout": statementTimeout,
};

/** `--only basic,statement-timeout`: a whole name or a run of its words, case and dashes aside. */
export function selectChecks(only: string | undefined): CheckName[] {
  if (!only) return [...CHECK_NAMES];
  const slug = (text: string) => `-${text.trim().toLowerCase().replace(/[\s_-]+/g, "-")}-`;
  return only.split(",").map((wanted) => {
    const matches = CHECK_NAMES.filter((name) => slug(name).includes(slug(wanted)));
    const exact = CHECK_NAMES.find((name) => slug(name) === slug(wanted));
    if (exact || matches.length === 1) return exact ?? matches[0]!;
    throw new ConfigError(`--only: ${matches.length ? `"${wanted}" could be ${matches.join(" or ")}` : `no check named "${wanted}"`}; the checks are: ${CHECK_NAMES.join(", ")}`);
  });
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

/** JUnit XML as CI systems read it: one testcase per check. */
export function junitXml(results: CheckResult[], totalMs: number): string {
  const failures = results.filter((result) => !result.ok).length;
  const cases = results.map((result) => {
    const open = `    <testcase classname="db-connectivity" name="${escapeXml(result.name)}" time="${(result.ms / 1000).toFixed(3)}"`;
    if (result.ok) return `${open}>\n      <system-out>${escapeXml((result.host ? `on ${result.host}: ` : "") + result.detail)}</system-out>\n    </testcase>`;
    const message = escapeXml(result.detail + (result.hint ? ` (hint: ${result.hint})` : ""));
    return `${open}>\n      <failure message="${message}">${message}</failure>\n    </testcase>`;
  });
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites tests="${results.length}" failures="${failures}" time="${(totalMs / 1000).toFixed(3)}">\n` +
    `  <testsuite name="db-connectivity" tests="${results.length}" failures="${failures}" errors="0" skipped="0" time="${(totalMs / 1000).toFixed(3)}">\n` +
    `${cases.join("\n")}\n  </testsuite>\n</testsuites>\n`;
}

/** Run the checks in order; once Basic Connection fails, the rest fail at once instead of each timing out. */
export async function runChecks(names: CheckName[], context: SuiteContext, onResult: (result: CheckResult) => void): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  let unreachable: CheckResult | undefined;
  for (const name of names) {
    const startedAt = performance.now();
    let result: CheckResult;
    if (unreachable) {
      // The hint was printed with the check that failed: once is enough.
      result = { name, ok: false, ms: 0, detail: `not run: ${unreachable.name} failed` };
    } else {
      try {
        result = { name, ok: true, ms: 0, detail: await CHECKS[name](context) };
      } catch (error) {
        if (context.signal.aborted) throw context.signal.reason;
        result = error instanceof CheckFailure
          ? { name, ok: false, ms: 0, detail: error.message, hint: error.fix }
          : { name, ok: false, ms: 0, detail: explain(error), hint: hint(error, context.config) || undefined };
        if (name === "Basic Connection") unreachable = result;
      }
      result.ms = Math.round(performance.now() - startedAt);
      if (context.target) result.host = hostName(context.target);
    }
    results.push(result);
    onResult(result);
  }
  return results;
}

const FLAGS = {
  ...COMMON_FLAGS,
  concurrency: { type: "string" },
  only: { type: "string" },
  "allow-read-only": { type: "boolean" },
  junit: { type: "string" },
} as const;

export async function main(argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  const startedAt = performance.now();
  const parsed = parseFlags(argv, FLAGS, USAGE);
  if (!parsed.values) return parsed.exitCode;
  const { values } = parsed;
  const reporter = new Reporter({ json: Boolean(values.json), quiet: Boolean(values.quiet), tty: false, color: Boolean(process.stderr.isTTY) && !env.NO_COLOR });
  let context: Omit<SuiteContext, "signal">;
  let names: CheckName[];
  try {
    const config = parseConfig({
      url: values.url,
      timeout: values.timeout ?? SUITE_DEFAULTS.timeoutSeconds,
      connectTimeout: values["connect-timeout"] ?? SUITE_DEFAULTS.connectTimeoutSeconds,
      commandTimeout: values["command-timeout"],
      ledgerTable: values["ledger-table"],
      applicationName: "test-db-connectivity",
    }, env);
    const concurrency = Number(values.concurrency ?? SUITE_DEFAULTS.concurrency);
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new ConfigError(`--concurrency "${values.concurrency}" must be a whole number, 1 or more`);
    const custom = values.schema || values.migrations || values["history-table"] !== undefined;
    const steps = custom ? schemaPlan({ schema: values.schema, migrations: values.migrations, format: values["migrations-format"], historyTable: values["history-table"] }) : undefined;
    if (steps) ledgerBesideTool(config, steps, values["ledger-table"]);
    context = { config, concurrency, allowReadOnly: Boolean(values["allow-read-only"]), steps };
    names = selectChecks(values.only);
  } catch (error) {
    reportConfigError(reporter, error, [values.url, env.DATABASE_URL]);
    return EXIT.usage;
  }
  const { config } = context;
  secretsOf(config).forEach((secret) => reporter.addSecret(secret));

  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  const restoreErrorHandling = absorbDroppedClientErrors();
  try {
    reporter.info(`testing ${describeTarget(config)}`);
    const results = await runChecks(names, { ...context, signal: controller.signal }, (result) => {
      reporter.event({ event: "check", name: result.name, ok: result.ok, ms: result.ms, host: result.host, detail: result.detail, hint: result.hint });
      reporter.result(`${result.ok ? "PASSED" : "FAILED"}  ${result.name}${result.host ? ` on ${result.host}` : ""} (${formatMs(result.ms)}): ${result.detail}${result.hint ? `\n        hint: ${result.hint}` : ""}`);
    });
    const totalMs = Math.round(performance.now() - startedAt);
    const passed = results.filter((result) => result.ok).length;
    const failed = results.length - passed;
    if (values.junit) writeFileSync(values.junit, redact(junitXml(results, totalMs), secretsOf(config)));
    reporter.event({ event: "summary", ok: failed === 0, passed, failed, ms: totalMs, target: describeTarget(config) });
    const rule = "=".repeat(60);
    reporter.result([
      `\n${rule}\nTEST SUMMARY\n${rule}`,
      ...results.map((result) => `${result.name.padEnd(26)} ${result.ok ? "PASSED" : "FAILED"}  ${formatMs(result.ms).padStart(8)}`),
      `${rule}\nTarget: ${describeTarget(config)}\nTotal: ${results.length} check${results.length === 1 ? "" : "s"} in ${formatMs(totalMs)}\n${rule}`,
      `${passed} passed, ${failed} failed`,
    ].join("\n"));
    return failed === 0 ? EXIT.ok : EXIT.failed;
  } catch (error) {
    if (controller.signal.aborted) {
      reporter.error(`${explain(controller.signal.reason)}; connections closed`);
      return signalExit(controller.signal.reason);
    }
    reporter.error(`the suite itself failed: ${explain(error)}`);
    return EXIT.failed;
  } finally {
    removeSignalHandlers();
    restoreErrorHandling();
  }
}

const USAGE = `Prove that a PostgreSQL database is usable: seven named, timed checks.

Usage: bun run test-db-connectivity.ts [options]

Connection (first found wins, as init-database.ts reads it): ${CONNECTION_SOURCES}
  --url URL               postgres://user:pass@host:port/db
  --timeout S             how long Basic Connection may wait (default ${SUITE_DEFAULTS.timeoutSeconds})
  --connect-timeout S     per connection attempt (default ${SUITE_DEFAULTS.connectTimeoutSeconds})
  --command-timeout S     the statement_timeout the kit's transactions carry (default ${DEFAULTS.commandTimeoutMs / 1000})

Checks: ${CHECK_NAMES.join(", ")}
  --only NAME[,NAME]      run only these (e.g. --only basic,statement-timeout)
  --concurrency N         connections opened at once (default ${SUITE_DEFAULTS.concurrency})
  --allow-read-only       accept a standby in Database Health
  --schema FILE           validate this schema file's ledger entry instead of the built-in schema
  --migrations DIR        validate that every migration of DIR is recorded (in the ledger, or
                          in the history of the tool whose layout DIR is in)
  --migrations-format NAME  DIR's layout, as init-database.ts takes it
  --history-table NAME    the tool's history table where the project renamed it, as init-database.ts takes it
  --ledger-table NAME     the ledger table (default ${DEFAULTS.ledgerTable})

Output:
  --json                  NDJSON: one object per check, then a summary
  --junit FILE            also write JUnit XML
  -q, --quiet             no report, only the exit code (and --json/--junit)
  -h, --help              this text

Exit codes: 0 all passed, 1 a check failed, 2 usage error, 130/143 interrupted.
`;

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
