#!/usr/bin/env bun
/**
 * init-database.ts: wait until PostgreSQL really accepts queries, then create the schema
 * exactly once. Made for service start-up in Docker Compose, Kubernetes and CI, where the
 * database is often not up yet ("connection refused", "the database system is starting up").
 *
 * Usage: bun run init-database.ts [options] [-- COMMAND [ARGS...]]; --help (USAGE, at the end)
 * lists the options, where the connection settings come from (libpq's precedence: --url,
 * DATABASE_URL, PG* variables, POSTGRES_* variables, ~/.pgpass; KEYWORDS lists every keyword)
 * and the exit codes (EXIT). --direct-url (DIRECT_URL) sends schema work past a pooler; NO_COLOR
 * turns colour off.
 *
 * Schema files are read as psql reads a script (readScript); --migrations DIR also reads the
 * folders of other migration tools (MIGRATION_LAYOUTS), applies what that tool would apply
 * (never a down or undo part), and counts what its history records as applied.
 *
 * Library use: `import { connect } from "./init-database.ts"` returns a ready postgres.js
 * client made with the same configuration, timeouts and retries:
 *   const sql = await connect({ timeout: 30 });
 *
 * Contents, in this order, each section opening with a comment that says what it owns:
 *   errors and retries, configuration, driver, waiting, SQL scripts, migration layouts, schema
 *   steps, reporting, CLI (main and its phases). The file reads top down: a section uses only itself and the ones above it.
 *
 * Example: DATABASE_URL=postgres://app:secret@db:5432/app bun run init-database.ts --timeout 60
 */
import { createHash } from "node:crypto";
import { once } from "node:events";
import { type Dirent, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { createConnection, isIP, Socket } from "node:net";
import { constants as osConstants, homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import { Stream, type Writable } from "node:stream";
import { finished } from "node:stream/promises";
import { checkServerIdentity, connect as tlsConnect, rootCertificates, type ConnectionOptions, type SecureVersion } from "node:tls";
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import postgres from "postgres";

export type Sql = postgres.Sql<{}>;

/** Every exit code the kit uses, in one place. */
export const EXIT = {
  ok: 0,
  schemaFailed: 1,
  usage: 2,
  notReady: 3,
  fatal: 4,
  /** `-- COMMAND` could not be started: not executable (126) or not found (127), as shells say. */
  commandNotExecutable: 126,
  commandNotFound: 127,
  sigint: 130,
  sigterm: 143,
} as const;

/** Every default, in one place. Times in milliseconds. */
export const DEFAULTS = {
  /** What a password file line names a connection through the default socket directory. */
  host: "localhost",
  /** Where the server's socket is when no host is given: the first that exists (libpq's DEFAULT_PGSOCKET_DIR). */
  socketDirs: ["/var/run/postgresql", "/tmp"],
  port: 5432,
  user: "postgres",
  sslmode: "prefer" as SslMode,
  applicationName: "init-database",
  targetSessionAttrs: "any" as TargetSessionAttrs,
  timeoutMs: 120_000,
  connectTimeoutMs: 10_000,
  commandTimeoutMs: 60_000,
  /** lock_timeout of every schema step: DDL waiting longer for a lock is rolled back and retried. */
  lockTimeoutMs: 5_000,
  /** How often a running step looks at who blocks it, at the least often. */
  blockerPollMs: 2_500,
  /** The longest pause between two tries at the kit's advisory lock while a replica holds it. */
  lockPollCapMs: 250,
  ledgerTable: "schema_migrations",
  poolMax: 10,
  keepAliveSeconds: 30,
  /** Poll interval while nothing listens or the server is starting: 20 attempts a second at most. */
  pollMs: 50,
  /** How often a parked standby session is asked again between attempts (one query, no new connection). */
  recheckMs: 5,
  /** Exponential backoff (full jitter, never below pollMs) while the server is busy. */
  backoffBaseMs: 50,
  backoffCapMs: 5_000,
  /** The least time an attempt gets to connect, even the one made at the deadline. */
  lastAttemptMs: 1_000,
  /** How long past a server-side timeout the client waits before it gives a query up. */
  graceMs: 2_000,
} as const;

/** Secrets shorter than this are redacted only where they stand alone (see redact). */
const SHORT_SECRET = 8;
export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";
export type TargetSessionAttrs = "any" | "read-write" | "primary" | "read-only" | "standby" | "prefer-standby";

// The built-in Flow-Backend schema; `--schema FILE` or `--migrations DIR` replace it.
/** The step name the built-in schema is recorded under in the ledger, and recognised by. */
export const BUILT_IN_STEP = "flow-backend";
export const FLOW_BACKEND_TABLES = ["users", "orders", "payments", "notifications"] as const;
/** Its foreign keys as "table.column -> table": what the connectivity suite checks. */
export const FLOW_BACKEND_FOREIGN_KEYS = ["orders.user_id -> users", "payments.order_id -> orders", "notifications.user_id -> users"] as const;
export const FLOW_BACKEND_SCHEMA = `
create table if not exists users (
  id            bigint generated always as identity primary key,
  email         text not null unique,
  name          text not null,
  password_hash text,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now()
);
create table if not exists orders (
  id          bigint generated always as identity primary key,
  user_id     bigint not null references users (id) on delete cascade,
  status      text not null default 'pending'
              check (status in ('pending', 'paid', 'shipped', 'cancelled', 'refunded')),
  total_cents bigint not null check (total_cents >= 0),
  currency    char(3) not null default 'USD',
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now()
);
create index if not exists orders_user_id_idx on orders (user_id);
create index if not exists orders_status_created_at_idx on orders (status, created_at);
create table if not exists payments (
  id           bigint generated always as identity primary key,
  order_id     bigint not null references orders (id) on delete cascade,
  amount_cents bigint not null check (amount_cents > 0),
  currency     char(3) not null,
  status       text not null default 'pending'
               check (status in ('pending', 'succeeded', 'failed', 'refunded')),
  provider     text not null,
  provider_ref text,
  created_at   timestamptz not null default now(),
  unique (provider, provider_ref)
);
create index if not exists payments_order_id_idx on payments (order_id);
create table if not exists notifications (
  id         bigint generated always as identity primary key,
  user_id    bigint not null references users (id) on delete cascade,
  channel    text not null check (channel in ('email', 'sms', 'push')),
  subject    text,
  body       text not null,
  sent_at    timestamptz,
  read_at    timestamptz,
  created_at timestamptz not null default now()
);
create index if not exists notifications_unread_idx on notifications (user_id) where read_at is null;
`;

// ---------------------------------------------------------------------------------------
// Errors and retries: the kit's own error codes (KIT_ERRORS, made by kitError) and error
// classes, every error classified by its code (classifyError), the retry schedule, redaction.

/** Every error code the kit makes itself (made only by `kitError` and the classes below), each with what it means. */
const KIT_ERRORS = {
  EINVALIDCONFIG: "a usage or configuration error (exit 2)",
  NOT_READY: "no host became ready before the deadline or the retry cap (exit 3)",
  SCHEMA_FAILED: "a schema step cannot be applied as it stands (exit 1)",
  MIGRATION_CHANGED: "an applied step's file changed since it was recorded (exit 1)",
  FOREIGN_TABLES: "the built-in schema was refused: the database holds other tables (exit 1)",
  LEDGER_CLASH: "the ledger's table (or a tool's history table) is of another shape: another tool's, or unknown (exit 1)",
  HISTORY_FAILED: "another tool's history records a failed or half-applied migration: repair it with that tool (exit 1)",
  CLIENT_DEADLINE: "the client gave up waiting for an answer; the client is dropped, not reused",
  LOCK_WAIT: "another session held the kit's advisory lock for longer than --command-timeout (exit 1)",
  CONNECTION_CLOSED: "the server closed the connection during start-up",
  POOLER_NO_SERVER: "the login was accepted but no session followed before the connect timeout: a pooler waiting for its PostgreSQL",
  CONNECT_TIMEOUT: "no connection or no answer to the TLS request within the connect timeout (postgres.js uses the same code for its own)",
  WRONG_SESSION_ATTRS: "the session does not match target_session_attrs",
  NO_MAINTENANCE_DATABASE: "--create-database found no maintenance database to create the target from (exit 4)",
  TLS_REFUSED: "sslmode requires TLS and the server does not offer it (exit 4)",
  SCHEMA_PENDING: "--wait-for-schema read the ledger and a step is not recorded yet: read again (exit 3 at the deadline)",
  SIGINT: "interrupted by SIGINT (exit 130)",
  SIGTERM: "interrupted by SIGTERM (exit 143)",
  UNKNOWN: "what errorCode reports for an error that carries no code",
} as const;

export type KitErrorCode = keyof typeof KIT_ERRORS;

/** An error with one of the kit's own codes. */
function kitError(code: KitErrorCode, message: string): Error & { code: KitErrorCode } {
  return Object.assign(new Error(message), { code });
}

/**
 * not-listening: nothing answers yet (poll fast, it costs the server nothing);
 * starting: the server answers "starting up", or is a standby where a primary is wanted (poll
 *   fast, it will be ready soon: a failover promotes a standby within seconds);
 * busy: the server is there but overloaded, restarting or dropping us (back off);
 * fatal: retrying cannot help (exit 4).
 */
export type ErrorClass = "not-listening" | "starting" | "busy" | "fatal";

const NOT_LISTENING = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ENOENT"]);

const BUSY = new Set([
  "ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED",
  "CONNECT_TIMEOUT", "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED",
  "CLIENT_DEADLINE", "POOLER_NO_SERVER",
  "57P01", "57P02", "53300",
]);

/**
 * PgBouncer answers very different situations with one SQLSTATE, 08P01, and fixed message
 * texts, so behind it the code alone cannot tell "fix your configuration" from "wait": these
 * prefixes split them. The one place the kit reads a message (taken from PgBouncer's source and
 * provoked for real against PgBouncer 1.18, see tests/init-database.pooler.test.ts).
 */
const POOLER_MESSAGES: readonly { prefix: string; errorClass: ErrorClass; hint: string }[] = [
  { prefix: "unsupported startup parameter", errorClass: "fatal", hint: "the pooler refuses a start-up parameter the client sent: add it to PgBouncer's ignore_startup_parameters, or stop sending it" },
  { prefix: "no such database", errorClass: "fatal", hint: "the pooler has no such database: add it to the [databases] section of pgbouncer.ini (or a \"*\" fallback entry), or fix the name" },
  { prefix: "no such user", errorClass: "fatal", hint: "the pooler does not know this user: add it to PgBouncer's auth_file (userlist.txt) or fix auth_query" },
  { prefix: "SASL authentication failed", errorClass: "fatal", hint: "the pooler refused the password: check it, and the user's entry in PgBouncer's auth_file (userlist.txt) or auth_query" },
  // PostgreSQL's own refusal of the pooler's login, passed on by PgBouncer under 08P01.
  { prefix: "password authentication failed for user", errorClass: "fatal", hint: "PostgreSQL refused the pooler's login: the password PgBouncer uses for this user (its auth_file entry, or password= in [databases]) does not match PostgreSQL's" },
  { prefix: "password authentication failed", errorClass: "fatal", hint: "the pooler refused the password: check it, and the user's entry in PgBouncer's auth_file (userlist.txt) or auth_query" },
  { prefix: "server login has been failing", errorClass: "busy", hint: "the pooler cannot log in to PostgreSQL: is PostgreSQL up, and the password PgBouncer uses right? PgBouncer retries only every server_login_retry (default 15 s)" },
  { prefix: "pgbouncer cannot connect to server", errorClass: "busy", hint: "the pooler cannot reach PostgreSQL: is it up? PgBouncer retries only every server_login_retry (default 15 s)" },
  { prefix: "no more connections allowed", errorClass: "busy", hint: "the pooler is full: raise PgBouncer's max_client_conn (or max_db_connections / max_user_connections)" },
  { prefix: "query_wait_timeout", errorClass: "busy", hint: "no server connection became free in the pooler in time: raise PgBouncer's default_pool_size or query_wait_timeout" },
  { prefix: "server conn crashed", errorClass: "busy", hint: "PostgreSQL ended the pooler's server connection mid-query: a restart or a terminated session" },
  { prefix: "database does not allow connections", errorClass: "busy", hint: "the database is disabled in the pooler (PgBouncer's DISABLE): ENABLE it" },
];

/** The POOLER_MESSAGES entry for an 08P01 error, if it is one of PgBouncer's. */
function poolerMessage(error: unknown): (typeof POOLER_MESSAGES)[number] | undefined {
  if (errorCode(error) !== "08P01") return undefined;
  const message = error instanceof Error ? error.message : "";
  return POOLER_MESSAGES.find((entry) => message.startsWith(entry.prefix));
}

/** Classify an error by its `.code` alone, save PgBouncer's 08P01 (POOLER_MESSAGES). */
export function classifyError(error: unknown): ErrorClass {
  const pooler = poolerMessage(error);
  if (pooler) return pooler.errorClass;
  const code = errorCode(error);
  if (NOT_LISTENING.has(code)) return "not-listening";
  if (code === "57P03" || code === "WRONG_SESSION_ATTRS") return "starting";
  if (BUSY.has(code) || code.startsWith("08")) return "busy";
  return "fatal";
}

/** An error's code as text: a SQLSTATE, an errno name, or one of KIT_ERRORS (UNKNOWN when it has none). */
export function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" || typeof code === "number" ? String(code) : ("UNKNOWN" satisfies KitErrorCode);
}

/**
 * The pause before the next attempt, or undefined when the attempt just made was the last:
 * a delay that would pass the deadline is cut to what remains, so the last attempt is made at
 * the deadline instead of being given up early.
 */
export function nextDelay(errorClass: ErrorClass, busyInARow: number, remainingMs: number, random: () => number = Math.random): number | undefined {
  if (remainingMs <= 0) return undefined;
  return Math.min(retryDelay(errorClass, busyInARow, random), remainingMs);
}

/** Milliseconds to wait before the next attempt, given the last failure and how many busy ones ran in a row. */
export function retryDelay(errorClass: ErrorClass, busyInARow: number, random: () => number = Math.random): number {
  if (errorClass !== "busy") return DEFAULTS.pollMs;
  const ceiling = Math.min(DEFAULTS.backoffCapMs, DEFAULTS.backoffBaseMs * 2 ** Math.max(0, busyInARow - 1));
  return Math.max(DEFAULTS.pollMs, Math.round(random() * ceiling));
}

/**
 * Hide passwords: each known secret (raw and percent-encoded) and any URL's password part.
 * A short secret is hidden where it stands alone, so that a password "b" does not turn
 * "but" into "***ut"; a long one wherever it appears.
 */
export function redact(text: string, secrets: (string | undefined)[] = []): string {
  let result = text;
  for (const secret of secrets) {
    if (!secret) continue;
    for (const form of new Set([secret, encodeURIComponent(secret)])) {
      const escaped = form.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      const pattern = form.length >= SHORT_SECRET ? escaped : `(?<![A-Za-z0-9])${escaped}(?![A-Za-z0-9])`;
      result = result.replace(new RegExp(pattern, "g"), "***");
    }
  }
  return result.replace(/(postgres(?:ql)?:\/\/[^:@/\s]*:)[^\s]*@/gi, "$1***@");
}

/** A usage or configuration error: exit 2, one line, never the password. */
export class ConfigError extends Error {
  readonly code: KitErrorCode = "EINVALIDCONFIG";
  /** `fix`: the hint line, when there is something more precise to say than "see --help". */
  constructor(message: string, readonly fix = "see --help") {
    super(message);
  }
}

/** The deadline or the retry cap passed before a host was ready (exit 3). */
export class NotReadyError extends Error {
  readonly code: KitErrorCode = "NOT_READY";
  constructor(readonly lastError: unknown, readonly attempts: number, readonly elapsedMs: number, reason: string) {
    super(reason);
  }
}

/** A schema step cannot be applied as it stands (exit 1), with the fix when one is known. */
export class SchemaError extends Error {
  constructor(message: string, readonly code: KitErrorCode = "SCHEMA_FAILED", readonly fix?: string) {
    super(message);
  }
}

/**
 * The schema work failed (exit 1): the server's (or the client's) error, with the step, the
 * place in the file and the sessions that blocked it when a statement of a step failed. It keeps
 * its cause's code and message, so it is classified, retried and explained as the cause would be.
 */
class StepFailure extends Error {
  readonly code: string;
  /** What a failed no-transaction step left behind (statements that ran, INVALID indexes), one line each. */
  notes: string[] = [];
  /** The kit's advice when the case needs more than the code's own hint. */
  fix?: string;
  constructor(cause: unknown, readonly step?: string, readonly location?: string, readonly blockers: string[] = []) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.code = errorCode(cause);
    if (cause instanceof SchemaError) this.fix = cause.fix;
  }
}

/** Milliseconds as a person reads them: "850 ms", "2.5 s". */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** One failed attempt, as retry reports it: what failed, how it was classified, the pause before the next (0: none follows). */
export interface Attempt {
  attempt: number;
  elapsedMs: number;
  error: unknown;
  errorClass: ErrorClass;
  delayMs: number;
}

/** How long the kit waits for one answer when --command-timeout is 0 (no server-side limit). */
const NO_LIMIT_MS = 24 * 3600_000;

/**
 * The run's one deadline. `at` is when retrying stops: no attempt starts after it (the one made
 * at it still gets DEFAULTS.lastAttemptMs to connect), while work already under way is not cut.
 * `signal` ends every await under it at once: it aborts with the run's interruption (SIGINT,
 * SIGTERM), with a lost connection a bound was tied to, and, for a bound on answers (`bound`,
 * `answer`), with CLIENT_DEADLINE once an answer is overdue. Made once per run (`Deadline.forRun`)
 * and passed down; every part of the run derives what it needs from it. A derived deadline
 * listens to its parent until `done()`.
 *
 * @example
 *   const deadline = Deadline.forRun({ timeoutMs: 30_000, commandTimeoutMs: 5_000, signal: controller.signal });
 *   const rows = await deadline.answer(sql`select 1`); // CLIENT_DEADLINE after 5 s plus a grace
 *   const step = deadline.bound();                      // one for many answers:
 *   await step.race(first); step.renew(); await step.race(second); step.done();
 */
export class Deadline {
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #unlink: (() => void)[] = [];
  #at: number;
  #timer: ReturnType<typeof setTimeout> | undefined;

  private constructor(
    at: number,
    /** How long one answer may take: --command-timeout plus DEFAULTS.graceMs (a day when it is 0). */
    readonly answerMs: number,
    /** When the run started, for elapsed times. */
    readonly startedAt: number,
    parents: (AbortSignal | undefined)[],
    readonly boundMs?: number,
    private readonly message?: string,
  ) {
    this.#at = at;
    this.signal = this.#controller.signal;
    for (const parent of parents) {
      if (!parent) continue;
      if (parent.aborted) {
        this.#end(parent.reason);
        break;
      }
      const onAbort = () => this.#end(parent.reason);
      parent.addEventListener("abort", onAbort, { once: true });
      this.#unlink.push(() => parent.removeEventListener("abort", onAbort));
    }
    this.renew();
  }

  /** The run's deadline, `timeoutMs` after `startedAt`; one answer may take `answerMs` (default --command-timeout plus a grace). */
  static forRun({ timeoutMs, commandTimeoutMs = 0, answerMs, signal, startedAt = Date.now() }: {
    timeoutMs: number; commandTimeoutMs?: number; answerMs?: number; signal?: AbortSignal; startedAt?: number;
  }): Deadline {
    return new Deadline(startedAt + timeoutMs, answerMs ?? (commandTimeoutMs === 0 ? NO_LIMIT_MS : commandTimeoutMs + DEFAULTS.graceMs), startedAt, [signal]);
  }

  remainingMs(): number {
    return this.#at - Date.now();
  }

  elapsedMs(): number {
    return Date.now() - this.startedAt;
  }

  /** A bound on its own, `ms` from now: for an answer that no run's deadline covers. */
  static within(ms: number, { message, signal }: { message?: string; signal?: AbortSignal } = {}): Deadline {
    return new Deadline(Date.now() + ms, NO_LIMIT_MS, Date.now(), [signal], ms, message);
  }

  /** The same signal, but retrying stops `ms` from now (a poll with a limit of its own). */
  horizon(ms: number): Deadline {
    return new Deadline(Date.now() + ms, this.answerMs, this.startedAt, [this.signal]);
  }

  /**
   * A bound on answers: its signal also aborts answerMs from now with CLIENT_DEADLINE, and when
   * `tiedTo` aborts (a connection lost). `renew` restarts the count (a step that made progress).
   */
  bound({ tiedTo }: { tiedTo?: AbortSignal } = {}): Deadline {
    return new Deadline(Date.now() + this.answerMs, this.answerMs, this.startedAt, [this.signal, tiedTo], this.answerMs);
  }

  /** A bound made anew: `ms` more from now. */
  renew(): void {
    if (this.boundMs === undefined || this.signal.aborted) return;
    clearTimeout(this.#timer);
    this.#at = Date.now() + this.boundMs;
    this.#timer = setTimeout(() => this.#end(kitError("CLIENT_DEADLINE", this.message ?? `no answer within ${this.boundMs} ms`)), this.boundMs);
  }

  /**
   * `work`, or the abort reason once the signal aborts, whichever comes first; `onAbort` runs
   * (awaited) before the rejection, to cancel a statement on the server, say.
   */
  race<T>(work: PromiseLike<T>, onAbort?: (reason: unknown) => unknown): Promise<T> {
    const { signal } = this;
    let listener = () => {};
    const aborted = new Promise<never>((_, reject) => {
      listener = () => void Promise.resolve(onAbort?.(signal.reason)).catch(() => {}).finally(() => reject(signal.reason));
      if (signal.aborted) listener();
      else signal.addEventListener("abort", listener, { once: true });
    });
    return Promise.race([work, aborted]).finally(() => signal.removeEventListener("abort", listener));
  }

  /** One answer: `work` bounded by `ms` (default answerMs) and by this deadline's signal. */
  answer<T>(work: PromiseLike<T>, ms = this.answerMs): Promise<T> {
    return withDeadline(work, ms, this.signal);
  }

  /** Stop listening and counting (a derived deadline no longer needed). */
  done(): void {
    clearTimeout(this.#timer);
    this.#unlink.splice(0).forEach((unlink) => unlink());
  }

  #end(reason: unknown): void {
    this.done();
    this.#controller.abort(reason);
  }
}

/** `work` bounded by `ms` (CLIENT_DEADLINE) and ended by `signal`: a one-off Deadline.answer. */
export function withDeadline<T>(work: PromiseLike<T>, ms: number, signal?: AbortSignal): Promise<T> {
  const bound = Deadline.within(ms, { signal });
  return bound.race(work).finally(() => bound.done());
}

/** How retry is driven; only `deadline` is required. */
export interface RetryOptions<T> {
  /** When to stop (its `at`), and what ends a pause at once (its `signal`). */
  deadline: Deadline;
  /** What a failure means (default classifyError): "fatal" is thrown at once, the rest are retried. */
  classify?: (error: unknown) => ErrorClass;
  /** The pause before the next attempt, or undefined to stop (default nextDelay, the kit's retry policy). */
  delay?: (errorClass: ErrorClass, busyInARow: number, remainingMs: number) => number | undefined;
  /** Stop after this many attempts (--max-retries). Default: only the deadline. */
  maxAttempts?: number;
  /** Told of every failed attempt, with the pause that follows it (0 when none follows). */
  onRetry?: (attempt: Attempt) => void;
  /** Spends the pause after attempt `attempt` (default: sleeps); what it returns, if anything, ends the retry with that value. */
  pause?: (ms: number, attempt: number) => Promise<T | undefined>;
  /** The NotReadyError's reason when the deadline or the cap passes. Default "not ready after 2.1 s" / "not ready after 3 attempts". */
  gaveUp?: (attempts: number, elapsedMs: number, capped: boolean, lastError: unknown) => string;
}

/**
 * The one retry loop every wait of the kit goes through: run `attempt` until it succeeds,
 * pausing between attempts as the retry policy says (nextDelay: fast polls while nothing
 * listens or a server starts, jittered exponential backoff while it is busy), never past the
 * deadline. A failure classified "fatal" is thrown as it is; the deadline or `maxAttempts`
 * passing throws NotReadyError carrying the last failure; the deadline's signal ends a pause at
 * once, with its reason. To poll until a condition holds, throw a retryable error while it does
 * not (as --wait-for-schema does, schemaCheckPhase): the one place the kit sleeps between attempts is here.
 */
export async function retry<T>(attempt: (attempt: number) => Promise<T>, options: RetryOptions<T>): Promise<T> {
  const { deadline, classify = classifyError, delay = nextDelay, maxAttempts, onRetry, pause } = options;
  const gaveUp = options.gaveUp ?? ((attempts, elapsedMs, capped) => `not ready after ${capped ? `${attempts} attempts` : formatMs(elapsedMs)}`);
  let busyInARow = 0;
  for (let n = 1; ; n++) {
    try {
      return await attempt(n);
    } catch (error) {
      if (deadline.signal.aborted) throw deadline.signal.reason;
      const errorClass = classify(error);
      if (errorClass === "fatal") throw error;
      busyInARow = errorClass === "busy" ? busyInARow + 1 : 0;
      const delayMs = delay(errorClass, busyInARow, deadline.remainingMs());
      const elapsedMs = deadline.elapsedMs();
      onRetry?.({ attempt: n, elapsedMs, error, errorClass, delayMs: delayMs ?? 0 });
      const capped = maxAttempts !== undefined && n >= maxAttempts;
      if (delayMs === undefined || capped) throw new NotReadyError(error, n, elapsedMs, gaveUp(n, elapsedMs, capped && delayMs !== undefined, error));
      const early = pause ? await pause(delayMs, n) : await sleep(delayMs, deadline.signal);
      if (early !== undefined) return early;
    }
  }
}

/** Sleep, but wake at once (with its reason) when `signal` fires. Only retry pauses. */
async function sleep(ms: number, signal: AbortSignal): Promise<undefined> {
  await withDeadline(new Promise<never>(() => {}), ms, signal).catch(() => {
    if (signal.aborted) throw signal.reason;
  });
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Configuration: what a caller sets (Options) resolved once, as libpq would, into a Config
// (parseConfig): URLs and keyword strings, PG* and POSTGRES_* variables, the password file, TLS
// files. It reads files and the environment and never connects.

/** What a caller may set; the CLI's flags map onto it one to one. Times in seconds. */
export interface Options {
  /** Connection URL or libpq keyword=value string (--url). Default: DATABASE_URL, then the PG* and POSTGRES_* variables. */
  url?: string;
  /** Overall deadline for becoming ready, in seconds (--timeout). Default 120. */
  timeout?: string | number;
  /** Per-attempt connect limit, in seconds (--connect-timeout). Default: connect_timeout / PGCONNECT_TIMEOUT, else 10. */
  connectTimeout?: string | number;
  /** statement_timeout of the kit's statements, in seconds; 0 = none (--command-timeout). Default 60. */
  commandTimeout?: string | number;
  /** lock_timeout of every schema step, in seconds; 0 = none (--lock-timeout). Default 5. */
  lockTimeout?: string | number;
  /** Give up after this many attempts, 1 or more (--max-retries). Default: no cap, only the deadline. */
  maxRetries?: string | number;
  /** The program's name, used when neither application_name nor PGAPPNAME is set (libpq's fallback_application_name). Default "init-database". */
  applicationName?: string;
  /** Create the target database when it does not exist (--create-database). Default false. */
  createDatabase?: boolean;
  /** The ledger table, optionally schema-qualified (--ledger-table). Default "schema_migrations". */
  ledgerTable?: string;
  /** Where schema work goes past a pooler (--direct-url). Default: DIRECT_URL, else none. */
  directUrl?: string;
  /**
   * The run writes (applies a schema), so it needs a writable primary: target_session_attrs
   * "any" and "prefer-standby" become "read-write", and asking for a standby is refused. Default false.
   */
  writable?: boolean;
}

/** One server to try: one of libpq's hosts. */
export interface Target {
  /** A name, an address, a socket directory (`/...`) or an abstract socket (`@...`). */
  host: string;
  /** Default 5432. */
  port: number;
  /** Where TCP goes instead of resolving `host` (libpq's hostaddr). Default none. */
  hostaddr?: string;
  /** The socket file, when `host` is a socket directory. */
  socket?: string;
  /** From the password file, when neither the URL nor the environment gave a password. */
  password?: string;
}

/** TLS as libpq would do it; file contents are read once, when the configuration is resolved. */
export interface Tls {
  /** sslmode. Default "prefer". */
  mode: SslMode;
  /** sslnegotiation: "direct" starts TLS at once (PostgreSQL 17+). Default "postgres". */
  negotiation: "postgres" | "direct";
  /** Check the server's certificate chain (verify-ca, verify-full, or require with a root certificate). */
  verifyChain: boolean;
  /** Check the certificate names the host (verify-full). */
  verifyHost: boolean;
  /** Root certificates (PEM, or the system's roots). Default: ~/.postgresql/root.crt when there. */
  ca?: string | string[];
  /** Client certificate and key (PEM). Default: ~/.postgresql/postgresql.crt and .key when there. */
  cert?: string;
  key?: string;
  /** sslpassword: the client key's passphrase. */
  passphrase?: string;
  /** Certificate revocation lists (PEM), checked with the chain. */
  crl?: string[];
  /** sslsni: send the host name. Default true. */
  sni: boolean;
  /** ssl_min_protocol_version (default TLSv1.2) and ssl_max_protocol_version (default none). */
  minVersion?: SecureVersion;
  maxVersion?: SecureVersion;
}

/** How to reach the server, resolved as libpq resolves its keywords (parseConnection); like pgx's pgconn.Config, nothing about what the run does. */
export interface ConnectionConfig {
  /** The servers to try, in order (libpq's host/hostaddr/port lists). Default: localhost:5432; a connection string without a host: the local Unix socket. */
  targets: Target[];
  /** Default "postgres". */
  user: string;
  /** Default: none, then the password file per target (Target.password). */
  password: string | undefined;
  /** Default: the user name. */
  database: string;
  /** Default "prefer" ("verify-full" with sslrootcert=system). */
  sslmode: SslMode;
  tls: Tls;
  /** application_name, else fallback_application_name, else Options.applicationName. Default "init-database". */
  applicationName: string;
  /** Which server of `targets` will do. Default "any" ("read-write" when the run writes: Options.writable). */
  targetSessionAttrs: TargetSessionAttrs;
  /** "random": the targets in a new random order at every attempt. Default "disable". */
  loadBalanceHosts: "disable" | "random";
  /** libpq's `options`: command-line switches (`-c name=value`) the server applies to the session. Default none. */
  options: string | undefined;
  /** TCP keepalive idle time in seconds; 0 turns keepalives off. Default 30. */
  keepAliveSeconds: number;
  /** Per-attempt connect limit. Default 10,000 (libpq's connect_timeout when set; 0 there: the overall deadline). */
  connectTimeoutMs: number;
  /** "transaction" when the URL says pgbouncer=true: a transaction pooler is in front. Default undefined. */
  pooler: "transaction" | undefined;
  /** Warnings met while resolving (a password file with loose permissions), for the caller to print. */
  notices: string[];
}

/**
 * A resolved configuration (parseConfig): the connection and the run's options around it, as pgx's
 * ConnConfig embeds pgconn.Config. The run's options are Options' (documented there), times in milliseconds.
 */
export interface Config extends ConnectionConfig {
  timeoutMs: number;
  commandTimeoutMs: number;
  lockTimeoutMs: number;
  maxRetries: number | undefined;
  createDatabase: boolean;
  ledgerTable: string;
  /** Where schema work goes, past the pooler (--direct-url / DIRECT_URL); waiting and checking do not. Default undefined: the connection above. */
  direct: ConnectionConfig | undefined;
}

type Env = Record<string, string | undefined>;

type ReadFile = (path: string) => string;

const NO_GSSAPI = "GSSAPI/Kerberos is not supported by the client (postgres.js)";

/**
 * libpq's connection keywords (PostgreSQL 18's list, and the kit's own pgbouncer): the PG* variable, the postgres image's
 * POSTGRES_* one (read after it), the values it accepts, and why the kit refuses it (or a value) when it cannot honour it.
 * A keyword not here is refused, as libpq does.
 */
export const KEYWORDS: Record<string, { env?: string; image?: string; values?: readonly string[]; refused?: string; refusedValues?: Record<string, string> }> = {
  host: { env: "PGHOST", image: "POSTGRES_HOST" },
  hostaddr: { env: "PGHOSTADDR" },
  port: { env: "PGPORT", image: "POSTGRES_PORT" },
  dbname: { env: "PGDATABASE", image: "POSTGRES_DB" },
  user: { env: "PGUSER", image: "POSTGRES_USER" },
  password: { env: "PGPASSWORD" },
  passfile: { env: "PGPASSFILE" },
  options: { env: "PGOPTIONS" },
  application_name: { env: "PGAPPNAME" },
  fallback_application_name: {},
  connect_timeout: { env: "PGCONNECT_TIMEOUT" },
  client_encoding: { env: "PGCLIENTENCODING", values: ["UTF8", "UTF-8", "unicode", "auto"], refused: "postgres.js reads and writes text as UTF-8 only; use UTF8 (or leave it unset)" },
  target_session_attrs: { env: "PGTARGETSESSIONATTRS", values: ["any", "read-write", "primary", "read-only", "standby", "prefer-standby"] },
  load_balance_hosts: { env: "PGLOADBALANCEHOSTS", values: ["disable", "random"] },
  keepalives: {},
  keepalives_idle: {},
  keepalives_interval: { refusedValues: { "*": "the runtime cannot set TCP_KEEPINTVL; leave it unset (the system default applies)" } },
  keepalives_count: { refusedValues: { "*": "the runtime cannot set TCP_KEEPCNT; leave it unset (the system default applies)" } },
  tcp_user_timeout: { refusedValues: { "*": "the runtime cannot set TCP_USER_TIMEOUT; leave it unset or 0" } },
  sslmode: { env: "PGSSLMODE", values: ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] },
  sslnegotiation: { env: "PGSSLNEGOTIATION", values: ["postgres", "direct"] },
  sslrootcert: { env: "PGSSLROOTCERT" },
  sslcert: { env: "PGSSLCERT" },
  sslkey: { env: "PGSSLKEY" },
  sslpassword: {},
  sslsni: { env: "PGSSLSNI", values: ["0", "1"] },
  ssl_min_protocol_version: { env: "PGSSLMINPROTOCOLVERSION", values: ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] },
  ssl_max_protocol_version: { env: "PGSSLMAXPROTOCOLVERSION", values: ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] },
  sslcompression: { env: "PGSSLCOMPRESSION", values: ["0", "1"], refusedValues: { "1": "TLS compression is disabled in every current TLS library" } },
  channel_binding: {
    env: "PGCHANNELBINDING", values: ["disable", "prefer", "require"],
    refusedValues: { require: "the client (postgres.js) authenticates with SCRAM-SHA-256 but not SCRAM-SHA-256-PLUS, so it cannot bind the channel; use prefer (libpq's default) or disable" },
  },
  gssencmode: { env: "PGGSSENCMODE", values: ["disable", "prefer", "require"], refusedValues: { require: `${NO_GSSAPI}; use prefer or disable` } },
  sslcrl: { env: "PGSSLCRL" },
  sslcrldir: { env: "PGSSLCRLDIR" },
  sslcertmode: { env: "PGSSLCERTMODE", refused: "the client certificate is sent when sslcert (or ~/.postgresql/postgresql.crt) is there; the mode cannot be chosen" },
  sslkeylogfile: { refused: "TLS key logging is not supported" },
  require_auth: { env: "PGREQUIREAUTH", refused: "the client (postgres.js) cannot restrict the authentication methods it accepts" },
  requirepeer: { env: "PGREQUIREPEER", refused: "the runtime cannot read the peer credentials of a Unix socket" },
  krbsrvname: { env: "PGKRBSRVNAME", refused: NO_GSSAPI },
  gsslib: { env: "PGGSSLIB", refused: NO_GSSAPI },
  gssdelegation: { env: "PGGSSDELEGATION", refused: NO_GSSAPI },
  service: { env: "PGSERVICE", refused: "connection service files (pg_service.conf) are not read; put the settings in the URL or PG* variables" },
  replication: { refused: "replication connections are not what the kit makes" },
  min_protocol_version: { env: "PGMINPROTOCOLVERSION", refused: "the client (postgres.js) speaks protocol 3.0 only" },
  max_protocol_version: { env: "PGMAXPROTOCOLVERSION", refused: "the client (postgres.js) speaks protocol 3.0 only" },
  scram_client_key: { refused: "SCRAM keys from a pass-through proxy are not supported" },
  scram_server_key: { refused: "SCRAM keys from a pass-through proxy are not supported" },
  oauth_issuer: { refused: "OAuth authentication is not supported by the client (postgres.js)" },
  oauth_client_id: { refused: "OAuth authentication is not supported by the client (postgres.js)" },
  oauth_client_secret: { refused: "OAuth authentication is not supported by the client (postgres.js)" },
  oauth_scope: { refused: "OAuth authentication is not supported by the client (postgres.js)" },
  // The kit's own (Prisma's spelling), never sent to the server: a transaction pooler is in front.
  pgbouncer: { values: ["true", "false"] },
};

export type Keyword = keyof typeof KEYWORDS & string;

/** What a URL sets, keyword by keyword (libpq's names), percent-decoded. */
export type Conninfo = Partial<Record<Keyword, string>>;

const ENCODE_PASSWORD = "; if the password holds / ? # @ or %, percent-encode them (/ as %2F, ? as %3F, # as %23, @ as %40, % as %25)";

/**
 * libpq's percent-decoding: %XX only, %00 refused (libpq forbids NUL), `+` stays `+`.
 * The error names the part, never its text.
 */
function uriDecode(text: string, what: string, fail: (message: string) => ConfigError): string {
  if (!text.includes("%")) return text;
  const bad = /%(?![0-9A-Fa-f]{2})|%00/.exec(text);
  if (bad?.[0] === "%00") throw fail(`the ${what} holds %00, which libpq refuses (no NUL bytes)`);
  if (bad) throw fail(`the ${what} has a malformed %-escape (% must be followed by two hex digits)`);
  // Split at each %XX: the text between stays UTF-8, each escape is one byte.
  const pieces = text.split(/(%[0-9A-Fa-f]{2})/).map((piece, index) => (index % 2 ? Buffer.from([parseInt(piece.slice(1), 16)]) : Buffer.from(piece)));
  return new TextDecoder().decode(Buffer.concat(pieces));
}

/** The keyword nearest to a mistyped one (edit distance 2 at most), to suggest it. */
function nearestKeyword(word: string): string | undefined {
  const distance = (a: string, b: string) => {
    let row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      const next = [i];
      for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      row = next;
    }
    return row[b.length]!;
  };
  const [best] = Object.keys(KEYWORDS).map((keyword) => [keyword, distance(word, keyword)] as const).sort((x, y) => x[1] - y[1]);
  return best && best[1] <= 2 ? best[0] : undefined;
}

/**
 * Parse `postgres[ql]://[user[:password]@][host][:port][,...][/dbname][?keyword=value&...]` as
 * libpq does (its grammar, percent-decoding and keyword check), into keyword values.
 * One deliberate difference: the LAST "@" before the path ends the credentials (libpq takes
 * the first), so an unencoded "@" in a password works. Errors never quote the URL: any part
 * of it may be a password that an unencoded character has pushed elsewhere.
 */
export function parseUrl(url: string, source: string): Conninfo {
  const scheme = /^postgres(?:ql)?:\/\//.exec(url);
  const slashAt = url.indexOf("/", scheme?.[0].length ?? 0);
  // An "@" after the path starts means the credentials were cut short: a "/" in the password.
  const cutShort = slashAt !== -1 && url.indexOf("@", slashAt) !== -1;
  const fail = (message: string, suspect = cutShort) => new ConfigError(`${source}: ${message}${suspect ? ENCODE_PASSWORD : ""}`);
  if (!scheme) throw fail("not a postgres:// or postgresql:// URL");
  const decode = (text: string, what: string) => uriDecode(text, what, (message) => fail(message));
  const parts: Conninfo = {};
  let rest = url.slice(scheme[0].length);

  const authorityEnd = rest.indexOf("/") === -1 ? rest.length : rest.indexOf("/");
  const at = rest.slice(0, authorityEnd).lastIndexOf("@");
  if (at !== -1) {
    const credentials = rest.slice(0, at);
    const colon = credentials.includes(":") ? credentials.indexOf(":") : credentials.length;
    const user = decode(credentials.slice(0, colon), "user name");
    const password = decode(credentials.slice(colon + 1), "password");
    if (user) parts.user = user;
    if (password) parts.password = password;
    rest = rest.slice(at + 1);
  } else if (cutShort) {
    throw fail(`the URL has an "@" after its first "/", so its credentials cannot be told apart`, true);
  }

  const hosts: string[] = [];
  const ports: string[] = [];
  let i = 0;
  for (;;) {
    if (rest[i] === "[") {
      const close = rest.indexOf("]", i);
      if (close === -1) throw fail(`an IPv6 host address has no closing "]"`);
      if (close === i + 1) throw fail("an IPv6 host address in [] is empty");
      hosts.push(decode(rest.slice(i + 1, close), "host"));
      i = close + 1;
      if (i < rest.length && !":/?,".includes(rest[i]!)) throw fail(`unexpected character after an IPv6 host address's "]" (expected ":", "/", "?" or ",")`);
    } else {
      const host = /^[^:/?,]*/.exec(rest.slice(i))![0];
      hosts.push(decode(host, "host"));
      i += host.length;
    }
    const port = rest[i] === ":" ? /^[^/?,]*/.exec(rest.slice(i + 1))![0] : "";
    if (rest[i] === ":") i += 1 + port.length;
    ports.push(decode(port, "port"));
    if (rest[i] !== ",") break;
    i++;
  }
  if (hosts.join(",")) parts.host = hosts.join(",");
  if (ports.join(",")) parts.port = ports.join(",");

  // What is left is "/dbname?query", "?query" or nothing.
  const tail = rest.slice(i);
  const queryAt = tail.includes("?") ? tail.indexOf("?") : tail.length;
  const database = decode(tail.slice(1, queryAt), "database name");
  if (database) parts.dbname = database;
  const query = tail.slice(queryAt + 1);
  if (query === "") return parts;
  for (const [index, parameter] of query.split("&").entries()) {
    const which = `query parameter ${index + 1}`;
    const pieces = parameter.split("=");
    if (pieces.length < 2) throw fail(`${which} has no "=" between keyword and value`);
    if (pieces.length > 2) throw fail(`${which} has more than one "="; percent-encode "=" in a value as %3D`);
    let keyword = decode(pieces[0]!, `keyword of ${which}`);
    let value = decode(pieces[1]!, `value of ${which}`);
    // libpq's compatibility with JDBC URLs.
    if (keyword === "ssl" && value === "true") [keyword, value] = ["sslmode", "require"];
    if (!Object.hasOwn(KEYWORDS, keyword)) throw unknownKeyword(which, keyword, fail);
    parts[keyword] = value;
  }
  return parts;
}

/** The keyword's error: named by its place, since a misplaced value may be a password; with the nearest keyword. */
function unknownKeyword(which: string, keyword: string, fail: (message: string) => ConfigError): ConfigError {
  const near = nearestKeyword(keyword);
  return fail(`${which} is not a libpq connection keyword${near ? ` (did you mean "${near}"?)` : ""}; the keywords are listed in docs/configuration.md`);
}

/**
 * libpq's other connection string: `host=db port=5432 dbname=app`, a value in single quotes
 * when it holds spaces, `\` escaping the next character. Errors name the setting by its place.
 */
export function parseKeywordValue(text: string, source: string): Conninfo {
  const fail = (message: string) => new ConfigError(`${source}: ${message}`);
  const parts: Conninfo = {};
  const setting = /\s*([^\s=]*)\s*(=?)\s*(?:'((?:\\[^]|[^\\'])*)(')?|((?:\\[^]|\\$|[^\s\\])*))/y;
  for (let index = 1; /\S/.test(text.slice(setting.lastIndex)); index++) {
    const [, keyword = "", equals, quoted, closed, bare = ""] = setting.exec(text)!;
    const which = `setting ${index} of the connection string`;
    if (!equals) {
      throw fail(index === 1 ? "not a postgres:// or postgresql:// URL, nor a keyword=value connection string" : `${which} has no "=" after its keyword`);
    }
    if (quoted !== undefined && !closed) throw fail(`${which} has a quoted value with no closing '`);
    if (!Object.hasOwn(KEYWORDS, keyword)) throw unknownKeyword(which, keyword, fail);
    parts[keyword] = (quoted ?? bare).replace(/\\([^])/g, "$1");
  }
  return parts;
}

/** A password from VAR or VAR_FILE (a Docker-style secret file, one trailing newline dropped); setting both is ambiguous, as in the postgres image. */
function passwordFrom(variable: string, env: Env, readFile: ReadFile): string | undefined {
  const file = env[`${variable}_FILE`];
  if (env[variable] !== undefined && file) throw new ConfigError(`both ${variable} and ${variable}_FILE are set; unset one of them`);
  if (!file) return env[variable];
  try {
    return readFile(file).replace(/\r?\n$/, "");
  } catch (error) {
    throw new ConfigError(`${variable}_FILE=${file} cannot be read (${errorCode(error)}); fix the path or its permissions, or unset ${variable}_FILE`);
  }
}

/** A flag's value in seconds, as milliseconds; undefined when unset. */
function secondsAsMs(name: string, value: string | number | undefined, { allowZero = false } = {}): number | undefined {
  if (value === undefined || value === "") return undefined;
  const number = Number(value);
  if (!Number.isFinite(number) || number < 0 || (number === 0 && !allowZero)) {
    throw new ConfigError(`${name} "${value}" must be a ${allowZero ? "non-negative" : "positive"} number of seconds`);
  }
  return Math.round(number * 1000);
}

/** The first value that is set; the order of the arguments is the precedence. */
function first<T>(...candidates: (T | undefined)[]): T | undefined {
  return candidates.find((candidate) => candidate !== undefined && candidate !== "");
}

/** The local socket directory libpq would use: the first of DEFAULTS.socketDirs that exists. */
export function defaultSocketDir(exists: (path: string) => boolean = existsSync): string {
  return DEFAULTS.socketDirs.find(exists) ?? DEFAULTS.socketDirs.at(-1)!;
}

/**
 * libpq's password file: `host:port:database:user:password` lines, a field of just `*`
 * matching anything, `\\` escaping `:` and `\\`. Like libpq, a file others can read is
 * ignored with a warning.
 */
function passwordFromFile(path: string, wanted: [string, string, string, string], notices: string[], readFile: ReadFile): string | undefined {
  let text: string;
  try {
    const stat = statSync(path);
    if (!stat.isFile()) {
      notices.push(`password file ${path} is not a plain file; ignored`);
      return undefined;
    }
    if (stat.mode & 0o077) {
      notices.push(`password file ${path} has group or world access; permissions should be u=rw (0600) or less; ignored`);
      return undefined;
    }
    text = readFile(path);
  } catch {
    return undefined;
  }
  for (const line of text.split(/\r?\n/)) {
    if (line.startsWith("#")) continue;
    const fields = [{ raw: "", value: "" }];
    // Each character, or a backslash with the one it escapes.
    for (const token of line.match(/\\[^]|[^]/g) ?? []) {
      if (token === ":") {
        if (fields.length === 5) break;
        fields.push({ raw: "", value: "" });
        continue;
      }
      fields.at(-1)!.raw += token;
      fields.at(-1)!.value += token.at(-1)!;
    }
    if (fields.length < 5) continue;
    if (wanted.every((value, index) => fields[index]!.raw === "*" || fields[index]!.value === value)) return fields[4]!.value;
  }
  return undefined;
}

/** libpq's integers: optional sign and surrounding spaces, nothing else. */
function libpqInteger(keyword: string, setting: Setting): number {
  if (!/^\s*[+-]?\d+\s*$/.test(setting.value)) throw settingError(setting, keyword, "is not an integer");
  return Number(setting.value);
}

interface Setting {
  value: string;
  /** Where it came from: a URL source (never quoted in messages) or a variable's name. */
  from: string;
  quotable: boolean;
}

function settingError(setting: Setting, keyword: string, problem: string): ConfigError {
  const what = setting.quotable ? `${setting.from}="${setting.value}"` : `${setting.from}: ${keyword}`;
  return new ConfigError(`${what} ${problem}`);
}

/** The targets, by libpq's list rules: as many as hosts (or hostaddrs); one port for all, or one each. */
function targetsFrom(host: Setting | undefined, hostaddr: Setting | undefined, port: Setting | undefined, hostless: string): Target[] {
  const hosts = host ? host.value.split(",") : [""];
  const addresses = hostaddr ? hostaddr.value.split(",") : undefined;
  if (addresses && host && addresses.length !== hosts.length) {
    throw new ConfigError(`${hostaddr!.from}: ${addresses.length} hostaddr values for ${hosts.length} hosts; give one for each host`);
  }
  const count = addresses?.length ?? hosts.length;
  const ports = port ? port.value.split(",") : [""];
  if (ports.length !== 1 && ports.length !== count) {
    throw new ConfigError(`${port!.from}: ${ports.length} ports for ${count} hosts; give one port for all, or one for each host`);
  }
  return Array.from({ length: count }, (_, index) => {
    const text = (ports.length === 1 ? ports[0] : ports[index])!.trim();
    const number = text === "" ? DEFAULTS.port : /^\d+$/.test(text) ? Number(text) : NaN;
    if (!(number >= 1 && number <= 65535)) {
      throw settingError(port!, "port", `is not a number from 1 to 65535${port!.quotable ? "" : ENCODE_PASSWORD}`);
    }
    const address = addresses?.[index] || undefined;
    const name = (host ? hosts[index] : "") || (address ? "" : hostless);
    const target: Target = { host: name || address!, port: number };
    if (address) target.hostaddr = address;
    else if (name.startsWith("/")) target.socket = `${name}/.s.PGSQL.${number}`;
    else if (name.startsWith("@")) target.socket = `\0${name.slice(1)}/.s.PGSQL.${number}`;
    return target;
  });
}

/** A certificate or key file: read at once, so that a wrong path is a configuration error (exit 2). */
function readTlsFile(setting: Setting, keyword: string, readFile: ReadFile, { key = false } = {}): string {
  try {
    if (key) {
      const { mode, uid } = statSync(setting.value);
      const loose = uid === 0 ? mode & 0o137 : mode & 0o077;
      if (loose) throw new ConfigError(`${setting.from}: private key file ${setting.value} has group or world access; it must be u=rw (0600) or less, or u=rw,g=r (0640) if owned by root`);
    }
    return readFile(setting.value);
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw new ConfigError(`${setting.from}: ${keyword} file ${setting.value} cannot be read (${errorCode(error)}); fix the path or its permissions`);
  }
}

/** The trusted roots for sslrootcert=system: OpenSSL's default file, as libpq uses, else the runtime's bundle. */
function systemRoots(env: Env, readFile: ReadFile): string | string[] {
  for (const path of [env.SSL_CERT_FILE, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]) {
    if (!path) continue;
    try {
      return readFile(path);
    } catch {
      // try the next place
    }
  }
  return [...rootCertificates];
}

/** TLS settings, with libpq's defaults (~/.postgresql/root.crt, postgresql.crt, postgresql.key) and checks. */
function tlsFrom(setting: (keyword: Keyword) => Setting | undefined, home: string, env: Env, readFile: ReadFile): Tls {
  // libpq uses a certificate file only when it is there (and the defaults under ~/.postgresql the same way).
  const present = (found: Setting | undefined, name: string): Setting | undefined => {
    const candidate = found ?? { value: join(home, ".postgresql", name), from: `the default ${name}`, quotable: false };
    return candidate.value === "system" || existsSync(candidate.value) ? candidate : undefined;
  };
  const rootcert = setting("sslrootcert");
  const system = rootcert?.value === "system";
  const modeSetting = setting("sslmode");
  // libpq: with sslrootcert=system the default mode becomes verify-full, and nothing weaker is allowed.
  const mode = (modeSetting?.value ?? (system ? "verify-full" : DEFAULTS.sslmode)) as SslMode;
  if (system && mode !== "verify-full" && mode !== "disable") {
    throw settingError(modeSetting!, "sslmode", `is too weak for sslrootcert=system; use verify-full`);
  }
  const negotiation = (setting("sslnegotiation")?.value ?? "postgres") as Tls["negotiation"];
  if (negotiation === "direct" && !["require", "verify-ca", "verify-full"].includes(mode)) {
    throw new ConfigError(`sslnegotiation=direct needs sslmode require, verify-ca or verify-full (sslmode is ${mode})`);
  }
  const root = present(rootcert, "root.crt");
  if ((mode === "verify-ca" || mode === "verify-full") && !root) {
    throw new ConfigError(`sslmode=${mode} needs the server's root certificate and ${rootcert ? `the sslrootcert file ${rootcert.value} does not exist` : `there is no ${join(home, ".postgresql", "root.crt")}`}: set sslrootcert (or PGSSLROOTCERT) to its file, or to "system" for the system's trusted roots`);
  }
  const certSetting = present(setting("sslcert"), "postgresql.crt");
  const keySetting = certSetting && present(setting("sslkey"), "postgresql.key");
  const tls: Tls = {
    mode,
    negotiation,
    // libpq: under require, a root certificate that is there makes the check verify-ca.
    verifyChain: mode !== "disable" && Boolean(root),
    verifyHost: mode === "verify-full",
    sni: setting("sslsni")?.value !== "0",
    passphrase: setting("sslpassword")?.value,
    minVersion: (setting("ssl_min_protocol_version")?.value ?? "TLSv1.2") as SecureVersion,
    maxVersion: setting("ssl_max_protocol_version")?.value as SecureVersion | undefined,
  };
  if (root && mode !== "disable") tls.ca = system ? systemRoots(env, readFile) : readTlsFile(root, "sslrootcert", readFile);
  if (certSetting && mode !== "disable") tls.cert = readTlsFile(certSetting, "sslcert", readFile);
  if (keySetting && mode !== "disable") tls.key = readTlsFile(keySetting, "sslkey", readFile, { key: true });
  // libpq checks revocation lists with the chain: sslcrl (default ~/.postgresql/root.crl when sslcrldir is unset), and every file in sslcrldir.
  const crlDir = setting("sslcrldir");
  const crlFile = setting("sslcrl") || !crlDir ? present(setting("sslcrl"), "root.crl") : undefined;
  if (tls.verifyChain) {
    // In sslcrldir, OpenSSL reads only the hashed names `openssl rehash` makes (HASH.rN).
    const hashed = (name: string) => /^[0-9a-f]{8}\.r\d+$/.test(name);
    const inDir = crlDir && existsSync(crlDir.value) ? readdirSync(crlDir.value).filter(hashed).sort().map((name) => join(crlDir.value, name)) : [];
    const files = [...(crlFile ? [crlFile] : []), ...inDir.filter((path) => statSync(path).isFile()).map((path) => ({ ...crlDir!, value: path }))];
    if (files.length > 0) tls.crl = files.map((file) => readTlsFile(file, "sslcrl", readFile));
  }
  return tls;
}

/**
 * Resolve one connection as libpq would, from a connection string (`rawUrl`, named `urlSource` in
 * errors) and the environment. Precedence, keyword by keyword: the connection string > libpq's
 * PG* variables > the postgres image's POSTGRES_* variables > the password file > DEFAULTS.
 */
function parseConnection(rawUrl: string | undefined, urlSource: string, options: Options, env: Env, readFile: ReadFile): ConnectionConfig {
  // A postgres:// URL, else libpq's keyword=value settings.
  const url: Conninfo = !rawUrl ? {} : /^postgres(?:ql)?:\/\//.test(rawUrl) ? parseUrl(rawUrl, urlSource) : parseKeywordValue(rawUrl, urlSource);

  const setting = (keyword: Keyword): Setting | undefined => {
    const { env: variable, image } = KEYWORDS[keyword]!;
    const found =
      first(url[keyword]) !== undefined ? { value: url[keyword]!, from: urlSource, quotable: false }
      : variable && first(env[variable]) !== undefined ? { value: env[variable]!, from: variable, quotable: true }
      : image && first(env[image]) !== undefined ? { value: env[image]!, from: image, quotable: true }
      : undefined;
    if (!found) return undefined;
    const { values, refused, refusedValues } = KEYWORDS[keyword]!;
    const allowed = values?.find((value) => value.toLowerCase() === found.value.trim().toLowerCase());
    if (refused && !allowed) throw settingError(found, keyword, `cannot be honoured: ${refused}`);
    if (values && !allowed) throw settingError(found, keyword, `is not one of ${values.join(", ")}`);
    const refusal = refusedValues?.[allowed ?? "*"];
    if (refusal && !(allowed === undefined && /^\s*0\s*$/.test(found.value))) throw settingError(found, keyword, `cannot be honoured: ${refusal}`);
    return { ...found, value: allowed ?? found.value };
  };
  // Every keyword set anywhere is checked, so that none is dropped in silence.
  const settings = Object.fromEntries(Object.keys(KEYWORDS).map((keyword) => [keyword, setting(keyword)])) as Record<Keyword, Setting | undefined>;
  const value = (keyword: Keyword) => settings[keyword]?.value;

  const integer = (keyword: Keyword) => (settings[keyword] ? libpqInteger(keyword, settings[keyword]!) : undefined);
  // A connection string without a host means the local socket, as in libpq; with no connection
  // string and no host variable at all, the contract's default is TCP to localhost (docs/configuration.md: deviations from libpq).
  const targets = targetsFrom(settings.host, settings.hostaddr, settings.port, rawUrl ? defaultSocketDir() : DEFAULTS.host);
  const user = value("user") ?? DEFAULTS.user;
  const database = value("dbname") ?? user;
  const password = first(url.password, passwordFrom("PGPASSWORD", env, readFile), passwordFrom("POSTGRES_PASSWORD", env, readFile));
  const notices: string[] = [];
  if (password === undefined) {
    const home = env.HOME || homedir();
    const passfile = value("passfile") ?? join(home, ".pgpass");
    for (const target of targets) {
      // libpq looks up the host, else the hostaddr, and "localhost" for the default socket directory.
      const host = target.host === defaultSocketDir() && target.socket ? DEFAULTS.host : target.host;
      const found = passwordFromFile(passfile, [host, String(target.port), database, user], notices, readFile);
      if (found !== undefined) target.password = found;
    }
  }

  // libpq: connect_timeout is whole seconds, at least 2; 0 or less means no limit (the overall deadline still holds).
  const libpqTimeout = integer("connect_timeout");
  const timeoutMs = timeoutOf(options);
  const connectTimeoutMs =
    secondsAsMs("--connect-timeout", options.connectTimeout) ??
    (libpqTimeout === undefined ? DEFAULTS.connectTimeoutMs : libpqTimeout <= 0 ? timeoutMs : Math.max(2, libpqTimeout) * 1000);
  const keepalives = integer("keepalives");
  const keepAliveIdle = integer("keepalives_idle");

  const tls = tlsFrom((keyword) => settings[keyword], env.HOME || homedir(), env, readFile);
  const attrs = (value("target_session_attrs") ?? DEFAULTS.targetSessionAttrs) as TargetSessionAttrs;
  // A run that writes needs a writable primary whatever the URL says: "any" and "prefer-standby"
  // become "read-write" (a standby listed first is skipped, or its promotion awaited).
  if (options.writable && (attrs === "read-only" || attrs === "standby")) {
    throw new ConfigError(`target_session_attrs=${attrs} cannot apply a schema, which needs a writable primary; use --wait-only, or read-write`);
  }
  return {
    targets,
    user,
    password,
    database,
    sslmode: tls.mode,
    tls,
    applicationName: first(value("application_name"), value("fallback_application_name"), options.applicationName) ?? DEFAULTS.applicationName,
    targetSessionAttrs: options.writable && attrs !== "primary" ? "read-write" : attrs,
    loadBalanceHosts: (value("load_balance_hosts") ?? "disable") as Config["loadBalanceHosts"],
    options: value("options"),
    keepAliveSeconds: keepalives === 0 ? 0 : keepAliveIdle && keepAliveIdle > 0 ? keepAliveIdle : DEFAULTS.keepAliveSeconds,
    connectTimeoutMs,
    pooler: value("pgbouncer") === "true" ? "transaction" : undefined,
    notices,
  };
}

/** --timeout, in milliseconds. */
function timeoutOf(options: Options): number {
  return secondsAsMs("--timeout", options.timeout) ?? DEFAULTS.timeoutMs;
}

/**
 * Resolve the whole configuration once: the connection (`--url`, else DATABASE_URL, see
 * parseConnection), the one for schema work (`--direct-url`, else DIRECT_URL, resolved the same
 * way), and the run's options, flags over DEFAULTS.
 */
export function parseConfig(options: Options = {}, env: Env = process.env, readFile: ReadFile = (path) => readFileSync(path, "utf8")): Config {
  const connection = parseConnection(first(options.url, env.DATABASE_URL), options.url !== undefined ? "--url" : "DATABASE_URL", options, env, readFile);
  const timeoutMs = timeoutOf(options);
  const commandTimeoutMs = secondsAsMs("--command-timeout", options.commandTimeout, { allowZero: true }) ?? DEFAULTS.commandTimeoutMs;
  const lockTimeoutMs = secondsAsMs("--lock-timeout", options.lockTimeout, { allowZero: true }) ?? DEFAULTS.lockTimeoutMs;
  const directUrl = first(options.directUrl, env.DIRECT_URL);
  const direct = directUrl ? parseConnection(directUrl, options.directUrl !== undefined ? "--direct-url" : "DIRECT_URL", options, env, readFile) : undefined;
  const retries = options.maxRetries === undefined ? undefined : Number(options.maxRetries);
  if (retries !== undefined && (!Number.isInteger(retries) || retries < 1)) {
    throw new ConfigError(`--max-retries "${options.maxRetries}" must be a whole number of attempts, 1 or more`);
  }
  const ledgerTable = options.ledgerTable ?? DEFAULTS.ledgerTable;
  if (!TABLE_NAME.test(ledgerTable)) {
    throw new ConfigError(`--ledger-table "${ledgerTable}" must be a plain table name, optionally schema-qualified`);
  }
  return { ...connection, timeoutMs, commandTimeoutMs, lockTimeoutMs, maxRetries: retries, createDatabase: options.createDatabase ?? false, ledgerTable, direct };
}

/** What --ledger-table and --history-table take: a plain table name, optionally schema-qualified. */
const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/;

/** Every secret a configuration holds, for redaction. */
export function secretsOf(config: ConnectionConfig & { direct?: ConnectionConfig }): string[] {
  const secrets = [config.password, config.tls.passphrase, ...config.targets.map((target) => target.password)];
  return [...secrets.filter((secret): secret is string => Boolean(secret)), ...(config.direct ? secretsOf(config.direct) : [])];
}

/** Where a target is, for messages: `host:port`, or the socket file. */
export function where(target: Target): string {
  return target.socket ? `socket ${target.socket.replace("\0", "@")}` : `${target.host}:${target.port}`;
}

/** The target as a URL with the password hidden, for messages; sockets as libpq writes them (`?host=/dir`). */
export function describeTarget(config: ConnectionConfig): string {
  const user = encodeURIComponent(config.user);
  const credentials = config.password === undefined && config.targets.every((target) => target.password === undefined) ? user : `${user}:***`;
  if (config.targets.some((target) => target.socket)) {
    const hosts = config.targets.map((target) => target.host).join(",");
    return `postgres://${credentials}@/${config.database}?host=${hosts}&port=${config.targets.map((target) => target.port).join(",")}`;
  }
  const hosts = config.targets.map(({ host, port }) => `${host.includes(":") ? `[${host}]` : host}:${port}`).join(",");
  return `postgres://${credentials}@${hosts}/${config.database}`;
}

// ---------------------------------------------------------------------------------------
// Driver: the only code that knows postgres.js, and every workaround for it, each checked
// against the pinned version (POSTGRES_JS_VERSION): a client on a target (its sockets, TLS,
// the session it proves), a bounded pool, a reserved session that says when it is lost, a
// COPY, and what an error or a result carries. Everything below talks to postgres.js through it.

/** The postgres.js version the workarounds below were read against (package.json pins it; a test checks node_modules). */
export const POSTGRES_JS_VERSION = "3.4.9";

/**
 * postgres.js 3.4.9 on Bun can throw from a timer after a connection has closed (a write queued
 * with setImmediate runs once its socket is gone: "null is not an object (evaluating
 * 'socket.write')", after pg_terminate_backend). The client is dropped by then and every await
 * has its own deadline, so that stray error is absorbed instead of printing a stack trace; it is
 * told by its stack, which runs through postgres.js's connection.js. Any other uncaught error
 * keeps its default handling. Returns the undo. In a `bun build --compile` executable every
 * frame names the executable, not postgres.js's file, so there the error is known by that exact
 * message (seen in about 1 run in 2 of the compiled connectivity suite, Bun 1.4.5).
 */
export function absorbDroppedClientErrors(): () => void {
  const compiled = import.meta.path.startsWith("/$bunfs/");
  const fromDroppedClient = (error: unknown) =>
    error instanceof TypeError && (/[\\/]postgres[\\/]src[\\/]connection\.js/.test(error.stack ?? "") ||
      (compiled && error.message === "null is not an object (evaluating 'socket.write')"));
  const handler = (error: unknown) => {
    if (!fromDroppedClient(error)) throw error;
  };
  process.on("uncaughtException", handler);
  return () => process.off("uncaughtException", handler);
}

/** Close a client without ever waiting on it for long: a broken one is dropped, not reused. */
export async function closeClient(sql: Sql | undefined): Promise<void> {
  if (!sql) return;
  await withDeadline(sql.end({ timeout: 0 }), 1_000).catch(() => {});
}

/**
 * A socket that fails through its own events, as a refused TCP socket does. postgres.js 3.4.9
 * handles a socket's 'error' and 'close' (the query fails, the connection goes back to be
 * reopened), but when the `socket` factory REJECTS, createSocket() calls error() and never
 * closed(): that connection stays in the `connecting` queue for good, and a pool whose every
 * connection was refused once (a server restarting) never opens another. So the kit's socket
 * factories never reject: they return this.
 */
function failedSocket(error: unknown, target: Target): Socket {
  const socket = Object.assign(new Socket(), { host: target.host, port: target.port });
  // It fails once postgres.js has written its start-up message, as a refused socket does: 3.4.9
  // writes it from a timer, and a socket that closes before that timer runs leaves the timer
  // cleared but not forgotten (closed()), so that connection would never write again.
  let failing = false;
  socket.write = (() => {
    if (!failing) {
      failing = true;
      setImmediate(() => {
        socket.emit("error", error);
        socket.emit("close", true);
      });
    }
    return true;
  }) as Socket["write"];
  return socket;
}

/**
 * The same 3.4.9 trap on a real socket: a write queues its bytes for a timer (write(), under
 * 1 KB), and a 'close' that comes before that timer runs clears it without forgetting it
 * (closed() leaves nextWriteTimer set), so that connection never writes again: a pool
 * connection reopened after a server restart sends no start-up message and hangs, and the pool
 * with it. Handing postgres.js its 'close' one turn later lets the queued write run first.
 */
function closeAfterQueuedWrites(socket: Socket): Socket {
  // Once per listener: closed() removes its listeners when it runs, which a second 'close'
  // (a TLS socket and the socket under it) scheduled before then would not see.
  const later = (listener: (...args: unknown[]) => void) => {
    let scheduled = false;
    return (...args: unknown[]) => {
      if (!scheduled) setImmediate(() => listener(...args));
      scheduled = true;
    };
  };
  const defer = (on: Socket["on"]) => (function (this: Socket, event: string, listener: (...args: unknown[]) => void) {
    return on.call(this, event, event === "close" ? later(listener) : listener);
  }) as Socket["on"];
  socket.on = defer(socket.on);
  socket.once = defer(socket.once);
  return socket;
}

/** A socket factory that never rejects (see failedSocket), whose sockets close after their queued writes. */
function neverRejects(target: Target, open: () => Socket | Promise<Socket>): () => Promise<Socket> {
  return async () => {
    try {
      return closeAfterQueuedWrites(await open());
    } catch (error) {
      return failedSocket(error, target);
    }
  };
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/**
 * A socket to one target, TLS negotiated as libpq does: an SSLRequest first (or TLS at once
 * with sslnegotiation=direct), never TLS over a Unix socket; a server that refuses TLS under
 * sslmode=require or stricter ends the attempt with TLS_REFUSED, which is fatal. postgres.js
 * then speaks over it as over a plain socket. (`allow` is treated as `prefer`.)
 *
 * Why not postgres.js's own `ssl` option, which sends the SSLRequest, does sslnegotiation=direct
 * with ALPN and skips SNI for addresses, also on a `socket` of ours: in 3.4.9 (connection.js
 * secure()) only the string 'prefer' falls back to plain text on the server's "N", so with the
 * options libpq needs (a root certificate, a client certificate, a CRL, protocol bounds, all
 * given as an object) an "N" is answered with a TLS handshake the server never reads (a hang to
 * the connect timeout, not libpq's "server does not support SSL, but SSL was required"), and
 * prefer cannot send a client certificate or check the chain as libpq does when the files are
 * there. It also swaps the socket for a TLS one inside, so a pooler's last words
 * (oneSocketUntilProven) could no longer be read. Never rejects: a failure comes back as a
 * failed socket.
 */
function openSocket(config: ConnectionConfig, target: Target, dial: Dial = dialTarget): Promise<Socket> {
  const { tls } = config;
  // postgres.js reads host and port off its socket, for its error messages.
  const named = <S extends Socket>(socket: S) => Object.assign(socket, { host: target.host, port: target.port });
  return new Promise((resolve) => {
    let raw: Socket;
    try {
      raw = dial(target);
    } catch (error) {
      return resolve(failedSocket(error, target));
    }
    let secure: Socket | undefined;
    const closed = () => fail(kitError("CONNECTION_CLOSED", `${where(target)} closed the connection before start-up`));
    const settle = () => {
      clearTimeout(timer);
      for (const socket of [raw, secure]) {
        socket?.removeListener("error", fail);
        socket?.removeListener("close", closed);
      }
    };
    const fail = (error: unknown) => {
      settle();
      (secure ?? raw).destroy();
      resolve(failedSocket(error, target));
    };
    const timer = setTimeout(() => fail(kitError("CONNECT_TIMEOUT", `${where(target)} did not answer within ${config.connectTimeoutMs} ms`)), config.connectTimeoutMs);
    const done = (socket: Socket) => {
      settle();
      resolve(named(socket));
    };
    const upgrade = () => {
      try {
        secure = tlsConnect(tlsOptions);
      } catch (error) {
        // A file the TLS library cannot use (a CRL or key it cannot parse) throws here, at once.
        return fail(error);
      }
      secure.once("error", fail);
      secure.once("close", closed);
      secure.once("secureConnect", () => done(secure!));
    };
    const tlsOptions: ConnectionOptions = {
      socket: raw,
      servername: tls.sni && !isIP(target.host) ? target.host : undefined,
      ALPNProtocols: tls.negotiation === "direct" ? ["postgresql"] : undefined,
      rejectUnauthorized: tls.verifyChain,
      checkServerIdentity: (_name, certificate) => (tls.verifyHost ? checkServerIdentity(target.host, certificate) : undefined),
      ca: tls.ca, cert: tls.cert, key: tls.key, passphrase: tls.passphrase, crl: tls.crl, minVersion: tls.minVersion, maxVersion: tls.maxVersion,
    };
    raw.once("error", fail);
    raw.once("close", closed);
    const plain = target.socket || tls.mode === "disable";
    if (plain || tls.negotiation === "direct") {
      raw.once("connect", plain ? () => done(raw) : upgrade);
      return;
    }
    raw.write(SSL_REQUEST);
    raw.once("data", (answer: Buffer) => {
      if (answer.length === 1 && answer[0] === 0x53) return upgrade(); // "S"
      const required = tls.mode === "require" || tls.mode === "verify-ca" || tls.mode === "verify-full";
      if (answer.length === 1 && answer[0] === 0x4e && !required) return done(raw); // "N"
      fail(kitError("TLS_REFUSED", answer[0] === 0x4e
        ? `server does not support SSL, but SSL was required (sslmode=${tls.mode})`
        : "the server's answer to the TLS request was not S or N: is this a PostgreSQL server?"));
    });
  });
}

/**
 * The kit's session settings, run first in each of its own transactions. Not start-up
 * parameters, which PgBouncer refuses ("unsupported startup parameter"), nor a plain SET, which
 * in a transaction pool stays on the server session for whichever client gets it next.
 */
export function localSettings(config: Pick<Config, "commandTimeoutMs">): string {
  return `set local statement_timeout = ${config.commandTimeoutMs}`;
}

/** Who hears of a client's connections closing (reserveSession): postgres.js's onclose names only a connection id. */
const closeListeners = new WeakMap<Sql, Set<() => void>>();

/**
 * A postgres.js client for one host, with the kit's timeouts; `overrides` come from library users.
 * Its sockets (postgres.js's `socket` option, documented, left out of its type declarations) come
 * from `openSocketFor` (the kit's own: an attempt's, a pool following a failover), else from an
 * override's, else from openSocket; none ever rejects (failedSocket).
 */
export function createClient(config: ConnectionConfig, target: Target, overrides: postgres.Options<{}> = {}, openSocketFor?: () => Socket | Promise<Socket>): Sql {
  const { socket: userSocket, onclose, ...rest } = overrides as postgres.Options<{}> & { socket?: () => Socket | Promise<Socket> };
  const listeners = new Set<() => void>();
  const sql = postgres({
    host: target.host,
    port: target.port,
    user: config.user,
    password: target.password ?? config.password ?? "",
    database: config.database,
    // openSocket negotiates TLS (libpq's sslmode, certificate files, sslnegotiation); postgres.js must not again.
    ssl: false,
    socket: neverRejects(target, openSocketFor ?? userSocket ?? (() => openSocket(config, target))),
    max: DEFAULTS.poolMax,
    connect_timeout: config.connectTimeoutMs / 1000,
    keep_alive: config.keepAliveSeconds,
    fetch_types: false,
    onnotice: () => {},
    target_session_attrs: undefined,
    // Unnamed statements only: a transaction pooler hands each transaction a different server
    // session, where a named one does not exist (26000).
    prepare: false,
    // application_name only (PgBouncer refuses other start-up parameters: localSettings instead),
    // and `options` when the user sets it, which libpq sends as a start-up parameter too.
    connection: { application_name: config.applicationName, ...(config.options ? { options: config.options } : {}) },
    ...rest,
    onclose: (id: number) => {
      for (const listener of [...listeners]) listener();
      onclose?.(id);
    },
  } as postgres.Options<{}>) as Sql;
  closeListeners.set(sql, listeners);
  return sql;
}

/** Opens the socket for a target; the connectivity suite dials a forwarder in its place. */
export type Dial = (target: Target) => Socket;

/** A socket to the target over its own transport: a Unix socket for a directory, else TCP (to hostaddr when given). */
export function dialTarget(target: Target): Socket {
  if (!target.socket) return createConnection({ host: target.hostaddr ?? target.host, port: target.port });
  // Bun reports a missing socket file after the socket has closed, when postgres.js no longer
  // listens (an unhandled error, and CONNECTION_CLOSED instead of ENOENT): stat it first, which
  // throws the system's own ENOENT, and never leave a late error unhandled. (An abstract socket has no file.)
  if (!target.socket.startsWith("\0")) statSync(target.socket);
  return createConnection({ path: target.socket }).on("error", () => {});
}

/**
 * postgres.js 3.4.9 reconnects at once, in a tight loop, when a socket closes during start-up (a
 * port that accepts and hangs up: thousands of times a second). So attempts get their sockets
 * from here: until the session is proven, a second socket is a failed one, which ends the attempt.
 */
function oneSocketUntilProven(config: ConnectionConfig, target: Target, dial: Dial): { socket: () => Promise<Socket>; proven: () => void; explain: (error: unknown) => unknown } {
  let proving = true;
  let opened = 0;
  let received = Buffer.alloc(0);
  return {
    socket: async () => {
      if (proving && ++opened > 1) {
        return failedSocket(kitError("CONNECTION_CLOSED", `${where(target)} closed the connection during start-up`), target);
      }
      const socket = await openSocket(config, target, dial);
      // What the server said last (decrypted, under TLS).
      socket.on("data", (chunk: Buffer) => {
        if (proving) received = Buffer.concat([received, chunk]).subarray(-4096);
      });
      return socket;
    },
    proven: () => {
      proving = false;
      received = Buffer.alloc(0);
    },
    /**
     * A pooler that refuses a query (PgBouncer's "server login has been failing") sends an error
     * and hangs up at once; postgres.js 3.4.9 then reports only CONNECTION_CLOSED. Give the error back.
     */
    explain: (error) => {
      const said = errorCode(error) === "CONNECTION_CLOSED" ? trailingError(received) : undefined;
      // postgres.js's own error class takes the server's fields (its type declarations omit that).
      if (said) return new (postgres.PostgresError as unknown as new (fields: object) => Error)(said);
      if (errorCode(error) === "CONNECT_TIMEOUT" && loginWithoutSession(received)) {
        return kitError("POOLER_NO_SERVER", `${where(target)} accepted the login but opened no session within the connect timeout`);
      }
      return error;
    },
  };
}

/** An attempt's socket source: one socket until the session is proven (oneSocketUntilProven). */
type Sockets = ReturnType<typeof oneSocketUntilProven>;

/**
 * Did these bytes (a server's answers during start-up) accept the login (SASLFinal or
 * AuthenticationOk) without a session following (ReadyForQuery)? PostgreSQL sends the session
 * at once; PgBouncer with no server connection yet authenticates the client itself, then waits.
 */
function loginWithoutSession(bytes: Buffer): boolean {
  // The one-byte answer to SSLRequest comes first when TLS was offered and declined.
  let at = bytes[0] === 0x4e ? 1 : 0;
  let accepted = false;
  while (at + 5 <= bytes.length) {
    const type = bytes[at];
    if (type === 0x5a) return false;
    if (type === 0x52 && at + 9 <= bytes.length && [0, 12].includes(bytes.readUInt32BE(at + 5))) accepted = true;
    at += 1 + bytes.readUInt32BE(at + 1);
  }
  return accepted;
}

/** The ErrorResponse these bytes end with, if any: what a server said before it hung up. */
function trailingError(bytes: Buffer): { severity: string; code: string; message: string } | undefined {
  for (let at = bytes.length - 6; at >= 0; at--) {
    if (bytes[at] !== 0x45 || bytes.readUInt32BE(at + 1) !== bytes.length - at - 1) continue;
    const fields: Record<string, string> = {};
    for (let field = at + 5; field < bytes.length - 1;) {
      const end = bytes.indexOf(0, field + 1);
      if (end === -1) break;
      fields[String.fromCharCode(bytes[field]!)] = bytes.toString("utf8", field + 1, end);
      field = end + 1;
    }
    if (fields.C && fields.M) return { severity: fields.S ?? "FATAL", code: fields.C, message: fields.M };
  }
  return undefined;
}

/** The backend process a session's cancel key names: postgres.js 3.4.9 keeps its BackendKeyData on each result, as the private `state`. */
function cancelKeyPid(rows: unknown): number | undefined {
  return (rows as { state?: { pid?: number } }).state?.pid;
}

/** The server's fields of an error (or of the one a StepFailure wraps), as postgres.js's PostgresError carries them. */
function serverFields(error: unknown): { position?: number; detail?: string; context?: string; hint?: string } {
  const cause = error instanceof StepFailure ? error.cause : error;
  if (!(cause instanceof postgres.PostgresError)) return {};
  return { position: cause.position ? Number(cause.position) : undefined, detail: cause.detail, context: cause.where, hint: cause.hint };
}

/** postgres.js 3.4.9 answers a COPY it did not expect (COPY ... TO STDOUT, FROM STDIN without data) with a stream, and waits on it forever. */
function isCopyStream(result: unknown): result is Stream & { destroy(): void } {
  return result instanceof Stream;
}

/**
 * `COPY ... FROM stdin`: the stream to write the rows to, and a promise that rejects with the
 * server's error. postgres.js 3.4.9 drops a server error that arrives after the last row was
 * sent (it only reaches the query's reject, already settled by then, and the stream waits
 * forever for its end): the query's private `reject` is wrapped to catch it there.
 */
function copyFromStdin(query: { writable(): Promise<unknown> }): { writable: Promise<Writable>; serverFailed: Promise<never> } {
  const copy = query as unknown as { reject(error: unknown): void };
  let rejectCopy: (error: unknown) => void = () => {};
  const serverFailed = new Promise<never>((_, reject) => (rejectCopy = reject));
  serverFailed.catch(() => {});
  const reject = copy.reject;
  copy.reject = (error) => {
    rejectCopy(error);
    reject(error);
  };
  return { writable: query.writable() as unknown as Promise<Writable>, serverFailed };
}

/**
 * One connection of a pool, kept for a run of statements (sql.reserve()), and `lost`, which
 * fires once a connection of that pool closes. postgres.js 3.4.9 runs a query sent on a
 * reserved connection that has closed by writing to its dead socket from a timer: it neither
 * answers nor fails. So every await on the session also awaits `lost`, and `release` does not
 * hand a closed connection back (release() would put it in the open queue). `lost` cannot tell
 * which connection closed (postgres.js names it by an id the reserved one does not show), so it
 * fires for any: the session's work is then given up and redone, as after a restart.
 */
async function reserveSession(sql: Sql, deadline: Deadline): Promise<{ conn: postgres.ReservedSql<{}>; lost: AbortSignal; release(): void }> {
  const lost = new AbortController();
  const listeners = closeListeners.get(sql);
  const onClose = () => lost.abort(kitError("CONNECTION_CLOSED", "the server closed the step's connection"));
  listeners?.add(onClose);
  const conn = await deadline.answer(sql.reserve()).catch((error) => {
    listeners?.delete(onClose);
    throw error;
  });
  return {
    conn,
    lost: lost.signal,
    release: () => {
      listeners?.delete(onClose);
      if (!lost.signal.aborted) conn.release();
    },
  };
}

type PendingQuery = Promise<unknown> & { cancel(): unknown; reject(error: unknown): void };

/** What a query is sent on: a client, a connection reserved from it, or a transaction's connection (a step runs on either of the last two). */
type Queries = Sql | postgres.TransactionSql<{}>;

type Cancellable = PromiseLike<unknown> & { cancel(): unknown };

/**
 * Stop a running statement on the server (on SIGINT/SIGTERM): closing our socket alone leaves
 * it running (and its locks held) until it next talks to us. postgres.js 3.4.9 on Bun settles a
 * cancel request's promise before the request has left the process, so this waits for the
 * statement itself to end, for DEFAULTS.graceMs at most.
 */
async function cancelStatement(query: Cancellable): Promise<void> {
  const ended = Promise.resolve(query).then(() => {}, () => {});
  await withDeadline(Promise.all([Promise.resolve(query.cancel()).catch(() => {}), ended]), DEFAULTS.graceMs).catch(() => {});
}

/**
 * A connect() pool whose every query is bounded without a start-up parameter (a pooler refuses
 * them) or a session SET (it would leak to other clients of a transaction pool): each
 * transaction opens with localSettings (the server enforces --command-timeout), and every query
 * gets a client-side deadline of --command-timeout plus a grace, counted from when it is
 * awaited, after which it is cancelled on the server and rejected with CLIENT_DEADLINE. A
 * transaction whose query ran out is given up a grace later, even if its ROLLBACK never
 * answers (a network that went silent). postgres.js 3.4.9 runs a query when it is first
 * awaited, through its `then`, and settles it through its private `reject`: the bound replaces
 * that `then` to start the clock, and rejects through that `reject`.
 */
function boundedPool(sql: Sql, config: Pick<Config, "commandTimeoutMs">): Sql {
  if (config.commandTimeoutMs === 0) return sql;
  const ms = config.commandTimeoutMs + DEFAULTS.graceMs;
  const bound = <T>(query: T, expired?: (error: unknown) => void): T => {
    if (!(query instanceof Promise) || typeof (query as unknown as PendingQuery).cancel !== "function") return query;
    const pending = query as unknown as PendingQuery;
    const then = pending.then;
    let armed = false;
    // Armed on first await, not on creation: a query used as a fragment of another never runs.
    pending.then = function (this: PendingQuery, ...args: Parameters<PendingQuery["then"]>) {
      if (!armed) {
        armed = true;
        const answer = Deadline.within(ms, { message: `no answer within ${ms} ms (--command-timeout plus ${DEFAULTS.graceMs} ms)` });
        answer.signal.addEventListener("abort", () => {
          pending.cancel();
          pending.reject(answer.signal.reason);
          expired?.(answer.signal.reason);
        }, { once: true });
        then.call(pending, () => answer.done(), () => answer.done());
      }
      return then.apply(pending, args);
    } as PendingQuery["then"];
    return query;
  };
  const bounded = <Q extends Queries>(queries: Q, expired?: (error: unknown) => void): Q => new Proxy(queries, {
    apply: (target, self, args) => bound(Reflect.apply(target as (...rest: unknown[]) => unknown, self, args), expired),
    get: (target, key, receiver) => {
      const value = Reflect.get(target, key, receiver);
      if (key === "unsafe" || key === "file") return (...args: unknown[]) => bound(Reflect.apply(value as (...rest: unknown[]) => unknown, target, args), expired);
      if (key === "begin" && !expired) {
        return (...args: unknown[]) => {
          const body = args.pop() as (tx: postgres.TransactionSql<{}>) => unknown;
          // Armed when a query of the transaction runs out: the transaction is given up a grace later.
          const abandon = new AbortController();
          let giveUp: Deadline | undefined;
          const expire = (error: unknown) => {
            giveUp ??= Deadline.within(DEFAULTS.graceMs);
            giveUp.signal.addEventListener("abort", () => abandon.abort(error), { once: true });
          };
          const work = ((target as Sql).begin as (...rest: unknown[]) => Promise<unknown>)(...args, async (tx: postgres.TransactionSql<{}>) => {
            const queries = bounded(tx, expire);
            await queries.unsafe(localSettings(config));
            return body(queries);
          });
          const abandoned = Deadline.within(NO_LIMIT_MS, { signal: abandon.signal });
          return abandoned.race(work).finally(() => {
            abandoned.done();
            giveUp?.done();
          });
        };
      }
      return value;
    },
  });
  return bounded(sql);
}

// ---------------------------------------------------------------------------------------
// Waiting: attempts until a target answers an authenticated query (waitUntilReady), following
// target_session_attrs and a failover; connect() for library use; --create-database.

interface SessionState {
  in_recovery: boolean;
  read_only: string;
  server_version: string;
  backend_pid: number;
}

/** Does this session satisfy target_session_attrs, libpq style (checked on the session itself)? */
function sessionMatches(attrs: TargetSessionAttrs, state: SessionState, lastHost: boolean): boolean {
  const writable = !state.in_recovery && state.read_only === "off";
  switch (attrs) {
    case "read-write": return writable;
    case "read-only": return !writable;
    case "primary": return !state.in_recovery;
    case "standby": return state.in_recovery;
    case "prefer-standby": return state.in_recovery || lastHost;
    default: return true;
  }
}

export interface Ready extends Found {
  attempts: number;
  elapsedMs: number;
}

/**
 * Sessions on hosts that answered but did not match target_session_attrs (a standby where a
 * primary is wanted), kept open between attempts: asking the same session again sees a
 * promotion within one poll, for one query instead of a new connection and authentication.
 */
class Parked extends Map<Target, { sql: Sql; sockets: Sockets }> {
  take(target: Target) {
    const session = this.get(target);
    this.delete(target);
    return session;
  }
  async close(): Promise<void> {
    const sessions = [...this.values()];
    this.clear();
    await Promise.all(sessions.map(({ sql }) => closeClient(sql)));
  }

  /**
   * Wait `ms` (the pause before the next attempt), asking the parked sessions again every
   * recheckMs meanwhile: one query on an open session costs the server little, and a promotion
   * is seen within milliseconds instead of at the next attempt. The session that now matches, if any.
   */
  async waitFor(config: ConnectionConfig, ms: number, deadline: Deadline): Promise<Found | undefined> {
    const horizon = deadline.horizon(ms);
    try {
      return await retry(async () => {
        for (const [target, session] of [...this]) {
          this.delete(target);
          // Still not matching: parked again; broken: dropped, and the next attempt reconnects.
          const found = await checkSession(config, target, session, DEFAULTS.graceMs, horizon, this).catch(async () => {
            await closeClient(session.sql);
            return undefined;
          });
          if (found) return found;
        }
        throw kitError("WRONG_SESSION_ATTRS", "no parked session matches yet");
      }, {
        deadline: horizon,
        classify: () => "starting",
        delay: (_class, _busy, remainingMs) => (remainingMs <= 0 ? undefined : this.size > 0 ? Math.min(DEFAULTS.recheckMs, remainingMs) : remainingMs),
      });
    } catch (error) {
      if (error instanceof NotReadyError) return undefined;
      throw error;
    } finally {
      horizon.done();
    }
  }
}

/** A host that answered and matches target_session_attrs. */
interface Found {
  sql: Sql;
  target: Target;
  serverVersion: string;
  /**
   * A pooler answered, not PostgreSQL itself: the cancel key it sent names another process than
   * pg_backend_pid() (PgBouncer makes up its own). Which pool mode cannot be told from outside.
   */
  pooled: boolean;
}

/** Ask a session whether it matches target_session_attrs: the host found, or undefined (and the session parked). */
async function checkSession(
  config: ConnectionConfig, target: Target, session: { sql: Sql; sockets: Sockets }, timeoutMs: number, deadline: Deadline,
  parked?: Parked, lastHost = target === config.targets.at(-1),
): Promise<Found | undefined> {
  const { sql, sockets } = session;
  const rows = await deadline.answer(
    sql<SessionState[]>`select pg_is_in_recovery() as in_recovery, current_setting('transaction_read_only') as read_only, current_setting('server_version') as server_version, pg_backend_pid() as backend_pid`,
    timeoutMs,
  );
  const state = rows[0]!;
  if (!sessionMatches(config.targetSessionAttrs, state, lastHost)) {
    parked?.set(target, session);
    return undefined;
  }
  sockets.proven();
  return { sql, target, serverVersion: state.server_version, pooled: cancelKeyPid(rows) !== state.backend_pid };
}

/** Open a client on each host in turn until one answers a query and matches the session attributes. */
async function tryTargets(config: ConnectionConfig, deadline: Deadline, overrides: postgres.Options<{}>, dial: Dial = dialTarget, parked: Parked): Promise<Found> {
  let lastError: unknown;
  // load_balance_hosts=random: libpq shuffles the hosts for each connection attempt.
  const order = [...config.targets];
  for (let i = order.length - 1; i > 0 && config.loadBalanceHosts === "random"; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  for (const [index, target] of order.entries()) {
    // postgres.js's own connect timeout names the cause; the client deadline, a little later, catches a hang.
    // Cut to what remains, but the attempt made at the deadline still gets time enough to succeed.
    const connectTimeoutMs = Math.min(config.connectTimeoutMs, Math.max(DEFAULTS.lastAttemptMs, deadline.remainingMs()));
    const { sql, sockets } = parked.take(target) ?? (() => {
      const attemptConfig = { ...config, connectTimeoutMs };
      const sockets = oneSocketUntilProven(attemptConfig, target, dial);
      return { sql: createClient(attemptConfig, target, overrides, sockets.socket), sockets };
    })();
    try {
      const found = await checkSession(config, target, { sql, sockets }, connectTimeoutMs + DEFAULTS.graceMs, deadline, parked, index === order.length - 1);
      if (found) return found;
      lastError = kitError("WRONG_SESSION_ATTRS", `${where(target)} does not match target_session_attrs=${config.targetSessionAttrs}`);
      continue;
    } catch (error) {
      lastError = sockets.explain(error);
    }
    await closeClient(sql);
    if (deadline.signal.aborted) throw lastError;
  }
  throw lastError;
}

/** Retry until a host answers an authenticated query. `deadline` is the run's; without one, --timeout from now, ended by `signal`. */
export async function waitUntilReady(
  config: ConnectionConfig & Partial<Pick<Config, "timeoutMs" | "commandTimeoutMs" | "maxRetries">>,
  { deadline, signal, onAttempt, overrides = {}, dial, maxRetries = config.maxRetries }: {
    deadline?: Deadline; signal?: AbortSignal; onAttempt?: (attempt: Attempt) => void; overrides?: postgres.Options<{}>; dial?: Dial; maxRetries?: number;
  } = {},
): Promise<Ready> {
  const { timeoutMs = DEFAULTS.timeoutMs, commandTimeoutMs = DEFAULTS.commandTimeoutMs } = config;
  const run = deadline ?? Deadline.forRun({ timeoutMs, commandTimeoutMs, signal });
  let cause: unknown;
  const parked = new Parked();
  try {
    return await retry(async (attempt) => {
      const cutShort = run.remainingMs() < config.connectTimeoutMs;
      try {
        const found = await tryTargets(config, run, overrides, dial, parked);
        return { ...found, attempts: attempt, elapsedMs: run.elapsedMs() };
      } catch (error) {
        // A timeout in an attempt the deadline cut short says nothing new: keep the cause before it.
        const timedOut = ["CONNECT_TIMEOUT", "CLIENT_DEADLINE"].includes(errorCode(error));
        if (!(cutShort && timedOut && cause)) cause = error;
        throw error;
      }
    }, {
      deadline: run,
      maxAttempts: maxRetries,
      onRetry: onAttempt,
      // A standby parked by the attempt is asked again meanwhile, so its promotion is seen at once.
      pause: async (ms, attempt) => {
        const promoted = await parked.waitFor(config, ms, run);
        return promoted && { ...promoted, attempts: attempt + 1, elapsedMs: run.elapsedMs() };
      },
    });
  } catch (error) {
    throw error instanceof NotReadyError ? new NotReadyError(cause, error.attempts, error.elapsedMs, error.message) : error;
  } finally {
    await parked.close();
    if (!deadline) run.done();
  }
}

/**
 * Where a connect() pool over several hosts opens its connections: the host last found to
 * match target_session_attrs. Once a connection to that host closes (a failover kills them
 * all), the next one finds the host again, each session checked as in waitUntilReady, rather
 * than dialling a dead or demoted server. A new connection waits up to the connect timeout for
 * a matching host (a promotion), finding at most once per poll interval: no more than 20
 * attempts a second against a dead host, however many queries wait. A rejection here becomes a
 * failed socket in createClient (failedSocket).
 */
function followTarget(config: ConnectionConfig, found: Target): () => Promise<Socket> {
  let current: Target | undefined = found;
  let finding: Promise<unknown> | undefined;
  let lastFindAt = 0;
  // Standby sessions kept while a connection waits for a promotion; closed once none waits.
  const parked = new Parked();
  const find = () => (finding ??= (async () => {
    const deadline = Deadline.forRun({ timeoutMs: config.connectTimeoutMs });
    try {
      const found = await parked.waitFor(config, Math.max(0, lastFindAt + DEFAULTS.pollMs - Date.now()), deadline) ?? await retry(() => {
        lastFindAt = Date.now();
        return tryTargets(config, deadline, { max: 1 }, dialTarget, parked);
      }, { deadline, pause: (ms) => parked.waitFor(config, ms, deadline) });
      await closeClient(found.sql);
      current = found.target;
    } catch (error) {
      throw error instanceof NotReadyError ? error.lastError : error;
    } finally {
      deadline.done();
      await parked.close();
    }
  })().finally(() => (finding = undefined)));
  return async () => {
    if (!current) await find();
    const target = current!;
    // Negotiated as every other socket (TLS by sslmode); a failure comes back as a failed socket.
    const socket = await openSocket(config, target);
    socket.once("close", () => {
      if (current === target) current = undefined;
    });
    return socket;
  };
}

/**
 * Wait for the database and return a ready postgres.js client (a pool; `clientOptions` go to
 * postgres.js). With several hosts or a target_session_attrs, the pool follows a failover (see
 * followTarget). Every query it runs is bounded (boundedPool); behind a pooler it uses unnamed
 * statements. `env` stands for process.env, as in parseConfig. Throws ConfigError,
 * NotReadyError, or the fatal error from the server.
 *
 * @example
 *   import { connect } from "./init-database.ts";
 *   const sql = await connect({ timeout: 30 }, { max: 20 });
 *   const [{ now }] = await sql`select now()`;
 */
export async function connect(options: Options = {}, clientOptions: postgres.Options<{}> = {}, env: Env = process.env): Promise<Sql> {
  const config = parseConfig(options, env);
  const { sql, target, pooled } = await waitUntilReady(config, { overrides: { max: 1 } });
  await closeClient(sql);
  const follow = config.targets.length === 1 && config.targetSessionAttrs === "any" ? undefined : followTarget(config, target);
  // Named statements only where a session is known to be ours: not behind a pooler (pgbouncer=true or detected).
  const prepare = !pooled && config.pooler === undefined;
  return boundedPool(createClient(config, target, { fetch_types: true, prepare, ...clientOptions }, follow), config);
}

/** Where --create-database connects to create the target: the ones createdb tries, in its order. */
const MAINTENANCE_DATABASES = ["postgres", "template1"] as const;

/**
 * With --create-database: make sure the target database exists, creating it from a maintenance
 * database (as createdb does). Waits like any run (with `onAttempt` progress) up to the same
 * deadline. With `dryRun` nothing is created: a missing database is "would create".
 */
async function ensureDatabase(
  config: ConnectionConfig,
  { deadline, onAttempt, maxRetries, dryRun = false }: { deadline: Deadline; onAttempt?: (attempt: Attempt) => void; maxRetries?: number; dryRun?: boolean },
): Promise<"exists" | "created" | "would create"> {
  let sql: Sql | undefined;
  // Not a retry: each candidate is waited for (waitUntilReady retries); one that does not exist makes way for the next.
  for (const database of MAINTENANCE_DATABASES) {
    try {
      ({ sql } = await waitUntilReady({ ...config, database }, { deadline, onAttempt, maxRetries, overrides: { max: 1 } }));
      break;
    } catch (error) {
      if (errorCode(error) !== "3D000") throw error;
    }
  }
  if (!sql) {
    throw kitError("NO_MAINTENANCE_DATABASE", `cannot create database "${config.database}": neither maintenance database ${MAINTENANCE_DATABASES.map((name) => `"${name}"`).join(" nor ")} exists to connect to`);
  }
  try {
    const existing = await deadline.answer(sql`select 1 from pg_database where datname = ${config.database}`);
    if (existing.length > 0) return "exists";
    if (dryRun) return "would create";
    await deadline.answer(sql.unsafe(`create database ${quoteIdent(config.database)}`)).catch((error) => {
      // Another replica won the race: the database exists, which is all we wanted.
      if (errorCode(error) !== "42P04" && errorCode(error) !== "23505") throw error;
    });
    return "created";
  } finally {
    await closeClient(sql);
  }
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

// ---------------------------------------------------------------------------------------
// SQL scripts: a schema file split into statements as psql reads it (readScript). No database
// work here.

/** A line before a file's first statement that makes it run statement by statement, outside a transaction. */
export const NO_TRANSACTION_MARKER = "-- init-database: no-transaction";

const MARKER_LINE = /^[ \t]*--[ \t]*init-database:[ \t]*no-transaction[ \t]*\r?$/im;

/** psql meta-commands that dumps hold and that mean nothing to a server: skipped. Any other is refused. */
const SKIPPED_META_COMMANDS = /^\\(?:restrict|unrestrict)(?:\s|$)|^\\set\s+ON_ERROR_STOP(?:\s|$)/;

/** COPY data goes to the server in pieces of this many bytes (a COPY stream need not break at rows). */
const COPY_CHUNK_BYTES = 256 * 1024;

/** How many top-level words of a statement the reader keeps to classify it. */
const WORDS_KEPT = 16;

export interface ScriptStatement {
  /** Byte offsets of the statement in the file, without its `;`. */
  start: number;
  end: number;
  /** Where it starts in the file, 1-based (counted when first asked for). */
  readonly line: number;
  readonly column: number;
  /** Its first words outside quotes, comments and parentheses, in lower case. */
  words: string[];
  /** For `COPY ... FROM stdin`: the rows that follow it in the file, up to the line `\.`. */
  data?: { start: number; end: number };
}

export interface Script {
  name: string;
  /** The file as it is: statements are decoded one at a time, COPY rows are sent as they are. */
  bytes: Buffer;
  statements: ScriptStatement[];
  /** The file holds the no-transaction marker before its first statement. */
  noTransaction: boolean;
  /** Its statements can go to the server as one query, the bytes from the first to the last: nothing between them was skipped (a meta-command) and none has COPY data. */
  oneQuery?: boolean;
}

const isSpace = (c: number) => c === 32 || (c >= 9 && c <= 13);

const isIdentStart = (c: number) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c >= 128;

const isIdentPart = (c: number) => isIdentStart(c) || (c >= 48 && c <= 57) || c === 36;

/** What PostgreSQL refuses inside a transaction block, named by the statement's first words; undefined when it runs in one. */
function needsNoTransaction(words: string[]): string | undefined {
  const [first, second, third] = words;
  const concurrently = words.includes("concurrently");
  if (first === "vacuum") return "VACUUM";
  if (first === "alter" && second === "system") return "ALTER SYSTEM";
  if ((first === "create" || first === "drop") && (second === "database" || second === "tablespace")) return `${first} ${second}`.toUpperCase();
  if (first === "create" && concurrently && (second === "index" || (second === "unique" && third === "index"))) return `CREATE ${second === "unique" ? "UNIQUE " : ""}INDEX CONCURRENTLY`;
  if (first === "drop" && second === "index" && third === "concurrently") return "DROP INDEX CONCURRENTLY";
  if (first === "reindex" && (concurrently || second === "database" || second === "system")) return concurrently ? "REINDEX ... CONCURRENTLY" : `REINDEX ${second!.toUpperCase()}`;
  if (first === "alter" && second === "table" && concurrently && words.includes("detach")) return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY";
  if (first === "alter" && second === "database" && words.includes("tablespace")) return "ALTER DATABASE ... SET TABLESPACE";
  if (first === "cluster" && words.length === 1) return "CLUSTER without a table";
  if ((first === "commit" || first === "rollback") && second === "prepared") return `${first.toUpperCase()} PREPARED`;
  return undefined;
}

/** BEGIN, COMMIT and the like: a step is already one transaction. */
function transactionControl(words: string[]): "begin" | "commit" | "other" | undefined {
  const [first, second] = words;
  const plain = words.length === 1 || (words.length === 2 && (second === "work" || second === "transaction"));
  if (first === "begin" || (first === "start" && second === "transaction")) return plain || (first === "start" && words.length === 2) ? "begin" : "other";
  if (first === "commit" || first === "end") return plain ? "commit" : "other";
  if ((first === "rollback" || first === "abort") && second !== "to") return "other";
  return undefined;
}

/** COPY ... FROM stdin (`from`, `stdin`) or COPY ... TO stdout (`to`, `stdout`). */
function isCopyWith(words: string[], direction: "from" | "to", stream: "stdin" | "stdout"): boolean {
  return words[0] === "copy" && words.some((word, index) => word === direction && words[index + 1] === stream);
}

/**
 * Split a file into statements by PostgreSQL's lexical rules, as psql does: `'...'` (with
 * `''`), `E'...'` (with backslash escapes), `$tag$...$tag$`, `"..."`, `--` and nested
 * `/* *\/` comments, parentheses, and `BEGIN ... END` bodies of SQL-standard functions.
 * `COPY ... FROM stdin` takes the rows after it up to a line `\.` (kept as offsets, never
 * copied); `\restrict`, `\unrestrict` and `\set ON_ERROR_STOP` are skipped; any other psql
 * meta-command is refused, as is a statement PostgreSQL refuses in a transaction block in a
 * file without the no-transaction marker. `noTransactionRule`, from a migration tool's own
 * option (MIGRATION_LAYOUTS), replaces the marker. Throws SchemaError naming the file and line.
 */
export function readScript(source: string | Buffer, name: string, noTransactionRule?: boolean): Script {
  const bytes = typeof source === "string" ? Buffer.from(source) : source;
  const statements: ScriptStatement[] = [];
  const length = bytes.length;
  // Lines are counted only when one is asked for (an error, a message): counting them through
  // megabytes of COPY rows on every run cost more CPU than sending the rows.
  let newlines: number[] | undefined;
  const locate = (at: number) => {
    if (!newlines) {
      newlines = [];
      for (let newline = bytes.indexOf(10); newline !== -1; newline = bytes.indexOf(10, newline + 1)) newlines.push(newline);
    }
    let before = 0;
    for (let high = newlines.length; before < high; ) {
      const middle = (before + high) >> 1;
      if (newlines[middle]! < at) before = middle + 1;
      else high = middle;
    }
    const lineStart = before === 0 ? 0 : newlines[before - 1]! + 1;
    return { line: before + 1, column: [...bytes.toString("utf8", lineStart, at)].length + 1 };
  };
  const fail = (atLine: number, message: string, fix: string): never => {
    throw new SchemaError(`${name}, line ${atLine}: ${message}`, "SCHEMA_FAILED", fix);
  };

  let current: ScriptStatement | undefined;
  let skipped = false;
  let parens = 0;
  let beginDepth = 0;
  let routineWords = "";
  let identifiers = 0;
  const finish = (end: number) => {
    if (current) {
      current.end = end;
      statements.push(current);
    }
    current = undefined;
    parens = beginDepth = identifiers = 0;
    routineWords = "";
  };

  let i = 0;
  while (i < length) {
    const c = bytes[i]!;
    if (isSpace(c)) {
      i++;
      continue;
    }
    if (c === 45 && bytes[i + 1] === 45) { // -- comment
      const newline = bytes.indexOf(10, i);
      i = newline === -1 ? length : newline;
      continue;
    }
    if (c === 47 && bytes[i + 1] === 42) { // /* comment */, nested
      let depth = 0;
      while (i < length) {
        if (bytes[i] === 47 && bytes[i + 1] === 42) { depth++; i += 2; }
        else if (bytes[i] === 42 && bytes[i + 1] === 47) { i += 2; if (--depth === 0) break; }
        else i++;
      }
      continue;
    }
    if (c === 92) { // a psql meta-command: up to the end of the line
      const newline = bytes.indexOf(10, i);
      const command = bytes.toString("utf8", i, newline === -1 ? length : newline).replace(/\r$/, "");
      skipped = true;
      if (!SKIPPED_META_COMMANDS.test(command)) {
        const word = /^\\\S*/.exec(command)![0];
        fail(locate(i).line, `psql meta-command ${word} cannot run here (only \\restrict, \\unrestrict and \\set ON_ERROR_STOP are understood, and skipped)`,
          `remove ${word} from the file: a schema file is plain SQL plus COPY data (${word === "\\c" || word === "\\connect" ? "the kit connects to one database, given by the URL" : "run psql for scripts that need it"})`);
      }
      i = newline === -1 ? length : newline;
      continue;
    }
    if (!current) {
      current = {
        start: i, end: i, words: [],
        get line() { return locate(this.start).line; },
        get column() { return locate(this.start).column; },
      };
    }
    if (c === 39 || c === 34) { // 'string' or "identifier"
      i = endOfQuoted(bytes, i, c, false);
    } else if (c === 36) { // $tag$ ... $tag$, else a parameter like $1
      const tag = dollarTag(bytes, i);
      if (tag) {
        const close = bytes.indexOf(tag, i + tag.length);
        i = close === -1 ? length : close + tag.length;
      } else i++;
    } else if (isIdentStart(c)) {
      let j = i + 1;
      while (j < length && isIdentPart(bytes[j]!)) j++;
      const word = bytes.toString("utf8", i, j).toLowerCase();
      if ((word === "e") && bytes[j] === 39) {
        i = endOfQuoted(bytes, j, 39, true);
        continue;
      }
      if (parens === 0 && current.words.length < WORDS_KEPT) current.words.push(word);
      // psql's own rule: inside CREATE [OR REPLACE] FUNCTION|PROCEDURE, BEGIN ... END (and CASE ... END) hold semicolons.
      if (identifiers < 4) routineWords += ["create", "or", "replace", "function", "procedure"].includes(word) ? word[0] : "-";
      identifiers++;
      if (/^c(?:f|p|orf|orp)/.test(routineWords) && parens === 0) {
        if (word === "begin") beginDepth++;
        else if (word === "case" && beginDepth > 0) beginDepth++;
        else if (word === "end" && beginDepth > 0) beginDepth--;
      }
      i = j;
    } else if (c >= 48 && c <= 57) {
      while (i < length && (isIdentPart(bytes[i]!) || bytes[i] === 46)) i++;
    } else if (c === 40 || c === 41) { // ( and ), a stray ")" ignored
      parens = Math.max(0, parens + (c === 40 ? 1 : -1));
      i++;
    } else if (c === 59 && parens === 0 && beginDepth === 0) {
      const statement = current;
      finish(i);
      i++;
      if (isCopyWith(statement.words, "from", "stdin")) i = copyData(bytes, statement, i, fail);
    } else i++;
  }
  if (current) {
    let end = length;
    while (end > current.start && isSpace(bytes[end - 1]!)) end--;
    finish(end);
  }

  const firstStart = statements[0]?.start ?? length;
  const toStdout = statements.find((statement) => isCopyWith(statement.words, "to", "stdout"));
  if (toStdout) fail(toStdout.line, "COPY ... TO STDOUT writes to psql's output, which a schema step does not have", "remove it (or write to a file on the server: COPY ... TO 'path')");
  const noTransaction = noTransactionRule ?? MARKER_LINE.test(bytes.toString("utf8", 0, firstStart));
  if (noTransaction) return { name, bytes, statements, noTransaction };
  const kept = statements.filter((statement, index) => {
    const control = transactionControl(statement.words);
    // A file wrapped in BEGIN ... COMMIT for psql: the step is that transaction already.
    if (control === "begin" && index === 0) return false;
    if (control === "commit" && index === statements.length - 1 && transactionControl(statements[0]!.words) === "begin") return false;
    if (control) {
      fail(statement.line, `${statement.words.join(" ").toUpperCase()} inside a step: each step runs in one transaction of its own`,
        `remove it, or put "${NO_TRANSACTION_MARKER}" before the first statement to run the file statement by statement`);
    }
    const refused = needsNoTransaction(statement.words);
    if (refused) {
      fail(statement.line, `${refused} cannot run inside a transaction block, and the file has no marker`,
        `put the line "${NO_TRANSACTION_MARKER}" before the first statement: the file then runs statement by statement in autocommit (keep such statements in a file of their own)`);
    }
    return true;
  });
  return { name, bytes, statements: kept, noTransaction, oneQuery: !skipped && kept.length > 1 && kept.every((statement) => !statement.data) };
}

/** The offset just past a quoted string or identifier that opens at `open`; `backslashes` for E'' strings. */
function endOfQuoted(bytes: Buffer, open: number, quote: number, backslashes: boolean): number {
  for (let i = open + 1; i < bytes.length; i++) {
    const c = bytes[i];
    if (backslashes && c === 92) i++;
    else if (c === quote) {
      if (bytes[i + 1] !== quote) return i + 1;
      i++;
    }
  }
  return bytes.length;
}

/** The `$tag$` (or `$$`) that opens a dollar quote at `at`, else undefined (a parameter like $1). */
function dollarTag(bytes: Buffer, at: number): Buffer | undefined {
  let i = at + 1;
  if (bytes[i] !== 36) {
    if (!isIdentStart(bytes[i] ?? 0)) return undefined;
    while (i < bytes.length && isIdentPart(bytes[i]!) && bytes[i] !== 36) i++;
    if (bytes[i] !== 36) return undefined;
  }
  return bytes.subarray(at, i + 1);
}

/** Attach the rows after a COPY ... FROM stdin (from the next line up to a line `\.`); returns where reading goes on. */
function copyData(bytes: Buffer, statement: ScriptStatement, afterSemicolon: number, fail: (line: number, message: string, fix: string) => never): number {
  const fix = "put the rows after the statement and end them with a line \\. (as pg_dump writes them), or load the data another way";
  const newline = bytes.indexOf(10, afterSemicolon);
  if (newline === -1) fail(statement.line, "COPY ... FROM stdin has no data after it (no line \\. before the end of the file)", fix);
  const start = newline + 1;
  for (let at = start; at !== -1 && at < bytes.length; ) {
    if (bytes[at] === 92 && bytes[at + 1] === 46) {
      const after = at + 2;
      const rest = after === bytes.length ? after : bytes[after] === 10 ? after + 1 : bytes[after] === 13 && bytes[after + 1] === 10 ? after + 2 : -1;
      if (rest !== -1) {
        statement.data = { start, end: at };
        return rest;
      }
    }
    const next = bytes.indexOf("\n\\.", at);
    at = next === -1 ? -1 : next + 1;
  }
  return fail(statement.line, "COPY ... FROM stdin has no line \\. ending its data before the end of the file", fix);
}

// ---------------------------------------------------------------------------------------
// Migration layouts: the folders other migration tools write (and the kit's own), one entry
// each in MIGRATION_LAYOUTS: how a folder is recognised, its order, the up part of each file
// with the tool's transaction rule, and the tool's history table (the SQL that reads it, and
// writes it where the kit is proven to write it as the tool does). Files only: the schema steps
// run the history SQL.

/** Where the kit keeps its own ledger beside another tool's history (the kit's own layout keeps DEFAULTS.ledgerTable). */
export const TOOL_LAYOUT_LEDGER = "init_database_migrations";

/** Where the kit's ledger, found in the place of a tool's history the kit writes, is kept when carried over (plainLedgerClash): read by nothing, lost by nothing. */
export const PLAIN_LEDGER_KEPT = "init_database_plain_ledger";

/** A migration as its tool sees it: what the tool would send, never a down or undo part. */
export interface LayoutMigration {
  /** The file, relative to the folder: the step's name in messages and in the kit's ledger. */
  name: string;
  /** What the tool's history records it by: its version, folder name or journal time. */
  version: string;
  /** The file's bytes as they are (drizzle's hash, the kit's former checksum). */
  bytes: Buffer;
  /** The up part alone, for the checksum. */
  up: Buffer;
  /** The file with all but the up part (and a BOM) blanked, newlines kept: what runs, with the file's own line numbers. */
  runnable: Buffer;
  /** true: statement by statement in autocommit; false: one transaction; undefined: the kit's marker decides. */
  noTransaction: boolean | undefined;
  /** Flyway's R__ files: applied after the versioned ones, and again whenever they change. */
  repeatable: boolean;
}

/** A row of a tool's history as its read SQL returns it. */
export interface HistoryRow {
  version: string;
  /** The tool records this migration as failed or half-applied (golang-migrate's dirty, Flyway's success = false, Prisma's unfinished row). */
  failed: boolean;
  /** The row covers every version up to its own (golang-migrate's one row, drizzle's last time, Flyway's baseline). */
  up_to: boolean;
}

/** A tool's history table. */
export interface ToolHistory {
  /** As the tool addresses it (unqualified: the session's current schema). */
  table: string;
  /** Columns that mark the table as this tool's, "name type" as format_type writes them. */
  columns: readonly string[];
  /** Read-only; rows of HistoryRow. */
  read: string;
  /** What the user runs to repair a failed or dirty state, for the message; absent where the read reports no failed row. */
  repair?: (row: HistoryRow) => string;
  /**
   * The table as the tool makes it, empty, before it runs the first migration; the kit makes it
   * too (never writing a row), because a project's migrations may change it (Harbor's add and
   * drop a column of golang-migrate's schema_migrations).
   */
  made?: string;
  /** How the kit records a migration in it exactly as the tool does (proven against the real tool in tests/other-tools.test.ts); absent: the kit's own ledger, beside it. */
  write?: {
    create: string;
    /** `$1`: the migration's version; true when the tool counts it as applied. */
    has: string;
    insert: string;
    values: (migration: LayoutMigration) => (string | number)[];
  };
}

export interface MigrationLayout {
  /** What `--migrations-format` takes and messages say. */
  name: LayoutName;
  /** How it is recognised, for the one line that says which layout a folder is in. */
  recognisedBy: string;
  /** The folder the tool uses inside a project, looked for under DIR when DIR itself holds no migrations. */
  folder?: string;
  /** Does the folder hold this tool's migrations? */
  recognises(folder: Folder): boolean;
  /** Its migrations in the tool's order; throws ConfigError or SchemaError for what the tool would refuse. */
  migrations(folder: Folder): LayoutMigration[];
  /** How versions compare, for histories that record "up to"; absent: as text. */
  compare?: (a: string, b: string) => number;
  history?: ToolHistory;
}

export const LAYOUT_NAMES = ["kit", "golang-migrate", "dbmate", "flyway", "prisma", "drizzle", "diesel", "goose", "supabase"] as const;
export type LayoutName = (typeof LAYOUT_NAMES)[number];

/** A migrations folder, read once: its entries, and files read on demand. */
export interface Folder {
  path: string;
  files: string[];
  dirs: string[];
  read(relative: string): Buffer;
  has(relative: string): boolean;
}

export function readFolder(path: string): Folder {
  let entries: Dirent[];
  try {
    entries = readdirSync(path, { withFileTypes: true });
  } catch (error) {
    throw new ConfigError(`--migrations ${path} cannot be read (${errorCode(error)}); fix the path`);
  }
  const cache = new Map<string, Buffer>();
  return {
    path,
    files: entries.filter((entry) => entry.isFile()).map((entry) => entry.name).sort(),
    dirs: entries.filter((entry) => entry.isDirectory()).map((entry) => entry.name).sort(),
    read(relative) {
      if (!cache.has(relative)) {
        try {
          cache.set(relative, readFileSync(join(path, relative)));
        } catch (error) {
          throw new ConfigError(`--migrations ${join(path, relative)} cannot be read (${errorCode(error)})`, "make the file readable, or remove it from the folder");
        }
      }
      return cache.get(relative)!;
    },
    has: (relative) => existsSync(join(path, relative)),
  };
}

const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

/** A file's text as a checkout may have changed it back: without a leading BOM, CRLF as LF. What a step's checksum is taken of. */
export function normalizedText(bytes: Buffer): Buffer {
  const body = bytes.subarray(0, 3).equals(BOM) ? bytes.subarray(3) : bytes;
  return body.includes(13) ? Buffer.from(body.toString("latin1").replaceAll("\r\n", "\n"), "latin1") : body;
}

/** The file with only [start, end) ranges kept and the rest (and a leading BOM) blanked, newlines kept. */
function keepParts(bytes: Buffer, parts: [number, number][]): Buffer {
  const out = Buffer.from(bytes);
  let at = 0;
  const blank = (from: number, to: number) => {
    for (let i = from; i < to; i++) if (out[i] !== 10 && out[i] !== 13) out[i] = 32;
  };
  for (const [start, end] of parts) {
    blank(at, start);
    at = end;
  }
  blank(at, out.length);
  if (out.subarray(0, 3).equals(BOM)) out.fill(32, 0, 3);
  return out;
}

function layoutMigration(name: string, version: string, bytes: Buffer, parts: [number, number][] | undefined, noTransaction: boolean | undefined, repeatable = false): LayoutMigration {
  // A whole file without a BOM (every --schema file, a plain migration) is used as it is: a dump
  // of tens of MB is not copied twice and scanned byte by byte for nothing to blank.
  if (!parts && !bytes.subarray(0, 3).equals(BOM)) return { name, version, bytes, noTransaction, repeatable, up: bytes, runnable: bytes };
  const ranges = parts ?? [[0, bytes.length]];
  return {
    name, version, bytes, noTransaction, repeatable,
    up: Buffer.concat(ranges.map(([start, end]) => bytes.subarray(start, end))),
    runnable: keepParts(bytes, ranges),
  };
}

/** A file as one character per byte (offsets stay byte offsets), a leading BOM blanked: what annotations (which may follow blanks) are looked for in. */
function annotationText(bytes: Buffer): string {
  const text = bytes.toString("latin1");
  return bytes.subarray(0, 3).equals(BOM) ? "   " + text.slice(3) : text;
}

/** The lines of a file that match `annotation` (with multiline `^`), as byte offsets of their start and end. */
function annotations(bytes: Buffer, annotation: RegExp): { start: number; end: number; match: RegExpExecArray }[] {
  const text = annotationText(bytes);
  const pattern = new RegExp(annotation.source, annotation.flags.includes("g") ? annotation.flags : annotation.flags + "g");
  return [...text.matchAll(pattern)].map((match) => {
    const newline = text.indexOf("\n", match.index);
    return { start: match.index, end: newline === -1 ? text.length : newline + 1, match };
  });
}

const byNumber = (a: string, b: string) => {
  const [x, y] = [BigInt(a), BigInt(b)];
  return x < y ? -1 : x > y ? 1 : 0;
};
const byText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** Flyway's version order: parts split at `.` (or `_`), each compared as a number, missing parts as 0 (1.10 after 1.2; 1 = 1.0). A repeatable's key (no version) compares as text. */
export function compareFlywayVersions(a: string, b: string): number {
  if (!/^\d+(?:[._]\d+)*$/.test(a) || !/^\d+(?:[._]\d+)*$/.test(b)) return byText(a, b);
  const [x, y] = [a.split(/[._]/).map(BigInt), b.split(/[._]/).map(BigInt)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const [p, q] = [x[i] ?? 0n, y[i] ?? 0n];
    if (p !== q) return p < q ? -1 : 1;
  }
  return 0;
}

/** A Flyway version as Flyway prints it: `_` as `.`, no leading zeros, no trailing `.0` parts. */
function flywayVersion(raw: string): string {
  const parts = raw.split(/[._]/).map((part) => BigInt(part).toString());
  while (parts.length > 1 && parts.at(-1) === "0") parts.pop();
  return parts.join(".");
}

/** Flyway's checksum of a script: CRC-32 of its lines without their line breaks (and without a BOM), as a signed 32-bit number. */
export function flywayChecksum(bytes: Buffer): number {
  const lines = normalizedText(bytes).toString("utf8").split(/\r\n|\r|\n/);
  return Bun.hash.crc32(lines.join("")) | 0;
}

/** Refuse two files with one version, as every versioned tool does. */
function uniqueVersions(layout: string, list: LayoutMigration[], same = (a: string, b: string) => a === b): LayoutMigration[] {
  for (const [index, entry] of list.entries()) {
    const twin = list.slice(index + 1).find((other) => !other.repeatable && !entry.repeatable && same(other.version, entry.version));
    if (twin) throw new ConfigError(`${layout}: ${entry.name} and ${twin.name} have the same version ${entry.version}`, `give one of them a new version: ${layout} refuses such a folder too`);
  }
  return list;
}

/** The files of a folder that match `pattern`, with the pattern's first group as version and the file's bytes, sorted by `compare`. */
function versioned(folder: Folder, pattern: RegExp, compare: (a: string, b: string) => number): { file: string; version: string; bytes: Buffer }[] {
  return folder.files.flatMap((file) => {
    const match = pattern.exec(file);
    return match ? [{ file, version: match[1]!, bytes: folder.read(file) }] : [];
  }).sort((a, b) => compare(a.version, b.version) || byText(a.file, b.file));
}

/** TOML's `key = value` (a string, boolean or number), enough for migration_lock.toml and metadata.toml. */
function tomlValue(text: string, key: string): string | undefined {
  const match = new RegExp(`^\\s*${key}\\s*=\\s*(?:"([^"]*)"|'([^']*)'|([\\w.-]+))`, "m").exec(text);
  return match ? (match[1] ?? match[2] ?? match[3]) : undefined;
}

/** Tools that send a whole file in one simple query (one implicit transaction): a file whose only statement PostgreSQL refuses in a transaction runs alone, in autocommit. */
function sentWhole(found: LayoutMigration): LayoutMigration {
  const statements = readScript(found.runnable, found.name, true).statements;
  found.noTransaction = statements.length === 1 && needsNoTransaction(statements[0]!.words) !== undefined ? true : undefined;
  return found;
}

const DBMATE_UP = /^[ \t]*--[ \t]*migrate:up(.*)$/m;
const DBMATE_DOWN = /^[ \t]*--[ \t]*migrate:down(.*)$/m;
const GOOSE = /^[ \t]*--[ \t]*\+goose[ \t]+(\w+(?:[ \t]+\w+)?)[ \t]*\r?$/im;

const SQL_FILES = /\.sql$/;
/** `{version}_{name}.sql`: dbmate's, goose's and Supabase's file names. */
const NUMBERED_SQL = /^(\d+)_.*\.sql$/;

/** Flyway's file names: V{version}__{description}.sql, U... (undo, never run), R__{description}.sql. */
const FLYWAY_FILE = /^(V|U|R)(\d+(?:[._]\d+)*)?__(.+)\.sql$/;

/**
 * Every migration folder layout the kit reads, one entry per tool. Rules from each tool's
 * documentation; tests/migration-layouts.test.ts checks each against fixtures written from it.
 */
export const MIGRATION_LAYOUTS: readonly MigrationLayout[] = [
  {
    name: "kit",
    recognisedBy: "plain *.sql files",
    recognises: (folder) => folder.files.some((file) => SQL_FILES.test(file)),
    migrations: (folder) => folder.files.filter((file) => SQL_FILES.test(file)).map((file) => layoutMigration(file, file, folder.read(file), undefined, undefined)),
  },
  {
    name: "golang-migrate",
    recognisedBy: "{version}_{title}.up.sql files",
    recognises: (folder) => folder.files.some((file) => /^\d+_.*\.up\.sql$/.test(file)),
    migrations: (folder) => uniqueVersions("golang-migrate", versioned(folder, /^(\d+)_.*\.up\.sql$/, byNumber)
      .map(({ file, version, bytes }) => sentWhole(layoutMigration(file, BigInt(version).toString(), bytes, undefined, undefined)))),
    compare: byNumber,
    history: {
      table: "schema_migrations",
      columns: ["version bigint", "dirty boolean"],
      read: "select version::text as version, dirty as failed, true as up_to from schema_migrations",
      repair: (row) => `golang-migrate's schema_migrations is dirty at version ${row.version}: that migration failed part-way. Repair the database by hand, then run \`migrate -path DIR -database URL force VERSION\` (the last version that is fully applied)`,
      // golang-migrate's PostgreSQL driver makes it when it opens the database.
      made: "create table if not exists schema_migrations (version bigint not null primary key, dirty boolean not null)",
    },
  },
  {
    name: "dbmate",
    recognisedBy: "*.sql files with a -- migrate:up section",
    folder: "db/migrations",
    recognises: (folder) => folder.files.some((file) => SQL_FILES.test(file) && DBMATE_UP.test(annotationText(folder.read(file)))),
    // dbmate applies files in name order (10_x before 1_x and 2_x), whatever their versions.
    migrations: (folder) => uniqueVersions("dbmate", versioned(folder, NUMBERED_SQL, () => 0).map(({ file, version, bytes }) => {
      const [up, down] = [annotations(bytes, DBMATE_UP), annotations(bytes, DBMATE_DOWN)];
      if (up.length !== 1) throw new SchemaError(`${file}: dbmate needs exactly one "-- migrate:up" line, found ${up.length}`, "SCHEMA_FAILED", "put the migration's statements under one -- migrate:up line");
      if (down.length > 1 || (down[0] && down[0].start < up[0]!.start)) throw new SchemaError(`${file}: "-- migrate:down" must come once, after "-- migrate:up"`, "SCHEMA_FAILED", "put -- migrate:up first, then -- migrate:down");
      return layoutMigration(file, version, bytes, [[up[0]!.end, down[0]?.start ?? bytes.length]], /\btransaction:false\b/.test(up[0]!.match[1]!));
    })),
    history: {
      table: "schema_migrations",
      columns: ["version character varying"],
      read: "select version::text as version, false as failed, false as up_to from schema_migrations",
      write: {
        create: "create table if not exists schema_migrations (version varchar primary key)",
        has: "select exists (select 1 from schema_migrations where version = $1) as recorded",
        insert: "insert into schema_migrations (version) values ($1)",
        values: (found) => [found.version],
      },
    },
  },
  {
    name: "flyway",
    recognisedBy: "V{version}__{description}.sql files",
    recognises: (folder) => folder.files.some((file) => /^[VR]/.test(file) && FLYWAY_FILE.test(file)),
    migrations: (folder) => {
      const found = folder.files.flatMap((file) => {
        const match = FLYWAY_FILE.exec(file);
        if (!match || match[1] === "U" || (match[1] === "V") !== (match[2] !== undefined)) return [];
        const bytes = folder.read(file);
        const text = bytes.toString("utf8");
        const placeholder = /\$\{[^}]*\}/.exec(text);
        if (placeholder) {
          throw new SchemaError(`${file}, line ${text.slice(0, placeholder.index).split("\n").length}: Flyway placeholder ${placeholder[0]}, which Flyway replaces before it sends the file and the kit does not`,
            "SCHEMA_FAILED", "write the value into the file (or generate the file with it) before applying it with the kit");
        }
        const conf = folder.has(`${file}.conf`) ? folder.read(`${file}.conf`).toString("utf8") : "";
        const repeatable = match[1] === "R";
        const step = layoutMigration(file, repeatable ? `${file}#${flywayChecksum(bytes)}` : flywayVersion(match[2]!), bytes, undefined, undefined, repeatable);
        const statements = readScript(step.runnable, file, true).statements;
        const outside = statements.filter((statement) => needsNoTransaction(statement.words));
        if (outside.length > 0 && outside.length < statements.length && !/^\s*mixed\s*=\s*true/m.test(conf)) {
          throw new SchemaError(`${file}: mixes statements PostgreSQL refuses in a transaction (${needsNoTransaction(outside[0]!.words)}) with others, which Flyway refuses too`, "SCHEMA_FAILED", "move the non-transactional statements into a migration of their own");
        }
        step.noTransaction = outside.length > 0 || tomlValue(conf, "executeInTransaction") === "false" ? true : false;
        return [step];
      });
      const versions = uniqueVersions("flyway", found.filter((entry) => !entry.repeatable), (a, b) => compareFlywayVersions(a, b) === 0).sort((a, b) => compareFlywayVersions(a.version, b.version));
      // Repeatables run after every versioned migration, in the order of their descriptions.
      return [...versions, ...found.filter((entry) => entry.repeatable).sort((a, b) => byText(a.name, b.name))];
    },
    compare: compareFlywayVersions,
    history: {
      table: "flyway_schema_history",
      columns: ["installed_rank integer", "version character varying", "checksum integer", "success boolean"],
      // Versioned rows by version; a repeatable by its script and latest checksum (it runs again when that changes).
      read: `select version, not success as failed, type = 'BASELINE' as up_to from flyway_schema_history where version is not null
             union all
             select * from (select distinct on (script) script || '#' || checksum, not success, false from flyway_schema_history
                             where version is null and type = 'SQL' order by script, installed_rank desc) repeatables`,
      repair: (row) => `flyway_schema_history records version ${row.version.replace(/#.*/, "")} as failed: repair what it left in the database, then run \`flyway repair\``,
    },
  },
  {
    name: "prisma",
    recognisedBy: "{folder}/migration.sql files and migration_lock.toml",
    folder: "prisma/migrations",
    recognises: (folder) => folder.files.includes("migration_lock.toml") || folder.dirs.some((dir) => folder.has(join(dir, "migration.sql"))),
    migrations: (folder) => {
      if (folder.files.includes("migration_lock.toml")) {
        const provider = tomlValue(folder.read("migration_lock.toml").toString("utf8"), "provider");
        if (provider !== "postgresql") throw new ConfigError(`prisma: migration_lock.toml says provider = "${provider}", not "postgresql"`, "these migrations were written for another database; Prisma refuses them on PostgreSQL too");
      }
      const files = folder.dirs.filter((dir) => folder.has(join(dir, "migration.sql"))).map((dir) => ({ dir, file: join(dir, "migration.sql") }));
      return files.map(({ dir, file }) => sentWhole(layoutMigration(file, dir, folder.read(file), undefined, undefined)));
    },
    history: {
      table: "_prisma_migrations",
      columns: ["migration_name character varying", "finished_at timestamp with time zone", "rolled_back_at timestamp with time zone"],
      // A row marked rolled back (prisma migrate resolve --rolled-back) is not applied: Prisma runs that migration again.
      read: "select migration_name as version, finished_at is null as failed, false as up_to from _prisma_migrations where rolled_back_at is null",
      repair: (row) => `_prisma_migrations records ${row.version} as started but not finished: repair what it left, then run \`prisma migrate resolve --rolled-back ${row.version}\` (or --applied ${row.version} if it did complete)`,
    },
  },
  {
    name: "drizzle",
    recognisedBy: "meta/_journal.json",
    folder: "drizzle",
    recognises: (folder) => folder.has("meta/_journal.json"),
    migrations: (folder) => {
      let journal: { entries?: { when?: unknown; tag?: unknown; breakpoints?: unknown }[] };
      try {
        journal = JSON.parse(folder.read("meta/_journal.json").toString("utf8"));
      } catch (error) {
        throw new ConfigError(`drizzle: meta/_journal.json cannot be read as JSON (${error instanceof Error ? error.message : String(error)})`, "restore it as drizzle-kit generate wrote it");
      }
      return (journal.entries ?? []).map((entry) => {
        if (typeof entry.tag !== "string" || typeof entry.when !== "number") throw new ConfigError(`drizzle: an entry of meta/_journal.json has no tag or when`, "restore it as drizzle-kit generate wrote it");
        const file = `${entry.tag}.sql`;
        if (!folder.has(file)) throw new ConfigError(`drizzle: meta/_journal.json lists ${entry.tag}, but ${file} is missing`, "restore the file, or the journal as drizzle-kit generate wrote it");
        const bytes = folder.read(file);
        const step = layoutMigration(file, String(entry.when), bytes, undefined, false);
        // drizzle sends each part between breakpoints as one statement: make each break a statement end.
        if (entry.breakpoints !== false) {
          const text = step.runnable.toString("latin1").replaceAll("--> statement-breakpoint", ";-- statement-breakpoint");
          step.runnable = Buffer.from(text, "latin1");
        }
        return step;
      });
    },
    compare: byNumber,
    history: {
      table: "drizzle.__drizzle_migrations",
      columns: ["hash text", "created_at bigint"],
      // drizzle applies what is newer than the last row's created_at (the journal's `when`).
      read: "select created_at::text as version, false as failed, true as up_to from drizzle.__drizzle_migrations where created_at is not null",
      write: {
        create: `create schema if not exists drizzle; create table if not exists drizzle.__drizzle_migrations (id serial primary key, hash text not null, created_at bigint)`,
        has: "select exists (select 1 from drizzle.__drizzle_migrations where created_at >= $1::bigint) as recorded",
        insert: "insert into drizzle.__drizzle_migrations (hash, created_at) values ($1, $2)",
        values: (found) => [sha256(found.bytes), Number(found.version)],
      },
    },
  },
  {
    name: "diesel",
    recognisedBy: "{version}_{name}/up.sql folders",
    folder: "migrations",
    recognises: (folder) => folder.dirs.some((dir) => folder.has(join(dir, "up.sql"))),
    migrations: (folder) => uniqueVersions("diesel", folder.dirs.filter((dir) => folder.has(join(dir, "up.sql"))).map((dir) => {
      const file = join(dir, "up.sql");
      const metadata = folder.has(join(dir, "metadata.toml")) ? folder.read(join(dir, "metadata.toml")).toString("utf8") : "";
      // Diesel's version is the name up to its first `_`, without dashes (2024-01-31-120000 -> 20240131120000).
      return layoutMigration(file, dir.split("_")[0]!.replaceAll("-", ""), folder.read(file), undefined, tomlValue(metadata, "run_in_transaction") === "false");
    }).sort((a, b) => byText(a.version, b.version))),
    history: {
      table: "__diesel_schema_migrations",
      columns: ["version character varying", "run_on timestamp without time zone"],
      read: "select version, false as failed, false as up_to from __diesel_schema_migrations",
    },
  },
  {
    name: "goose",
    recognisedBy: "*.sql files with -- +goose Up",
    recognises: (folder) => folder.files.some((file) => SQL_FILES.test(file) && annotations(folder.read(file), GOOSE).some(({ match }) => match[1]!.toLowerCase() === "up")),
    migrations: (folder) => uniqueVersions("goose", versioned(folder, NUMBERED_SQL, byNumber).map(({ file, version, bytes }) => {
      const notes = annotations(bytes, GOOSE);
      const kinds = notes.map(({ match }) => match[1]!.toLowerCase().replace(/\s+/g, " "));
      const up = notes[kinds.indexOf("up")];
      if (!up) throw new SchemaError(`${file}: goose needs a "-- +goose Up" line, and the file has none`, "SCHEMA_FAILED", "add -- +goose Up before the migration's statements");
      if (kinds.includes("envsub on")) throw new SchemaError(`${file}: "-- +goose ENVSUB ON" asks for environment variables to be substituted into the SQL, which the kit does not do`, "SCHEMA_FAILED", "write the values into the file before applying it with the kit");
      const down = notes.find(({ start }, index) => kinds[index] === "down" && start > up.start);
      return layoutMigration(file, BigInt(version).toString(), bytes, [[up.end, down?.start ?? bytes.length]], kinds.includes("no transaction"));
    })),
    compare: byNumber,
    history: {
      table: "goose_db_version",
      columns: ["version_id bigint", "is_applied boolean"],
      // A version is applied when its latest row says so (goose adds a row with is_applied = false on down).
      read: "select version_id::text as version, false as failed, false as up_to from goose_db_version group by version_id having (array_agg(is_applied order by id desc))[1]",
    },
  },
  {
    name: "supabase",
    recognisedBy: "supabase/migrations/{timestamp}_{name}.sql",
    folder: "supabase/migrations",
    recognises: (folder) => /(?:^|\/)supabase\/migrations\/?$/.test(resolve(folder.path)) && folder.files.some((file) => NUMBERED_SQL.test(file)),
    migrations: (folder) => uniqueVersions("supabase", versioned(folder, NUMBERED_SQL, byText).map(({ file, version, bytes }) => layoutMigration(file, version, bytes, undefined, false))),
    history: {
      table: "supabase_migrations.schema_migrations",
      columns: ["version text", "statements text[]"],
      read: "select version, false as failed, false as up_to from supabase_migrations.schema_migrations",
    },
  },
];

/** The layout named by --migrations-format, or the one the folder is in; refuses none or several. */
export function migrationLayout(dir: string, format: string | undefined): { layout: MigrationLayout; folder: Folder; detected: boolean } {
  const folder = readFolder(dir);
  // A project's root: the tool's own folder inside it.
  const inside = (layout: MigrationLayout) => (layout.folder && folder.has(layout.folder) ? readFolder(join(dir, layout.folder)) : undefined);
  if (format !== undefined) {
    const layout = MIGRATION_LAYOUTS.find((entry) => entry.name === format);
    if (!layout) throw new ConfigError(`--migrations-format ${format} is not a layout the kit knows`, `choose one of ${LAYOUT_NAMES.join(", ")}`);
    return { layout, folder: (!layout.recognises(folder) && inside(layout)) || folder, detected: false };
  }
  const tools = MIGRATION_LAYOUTS.filter((entry) => entry.name !== "kit" && entry.recognises(folder));
  // Supabase's files are plain *.sql too: its place in the project is what marks them.
  const found = tools.some((entry) => entry.name === "supabase") ? tools.filter((entry) => entry.name === "supabase") : tools;
  if (found.length === 0 && !MIGRATION_LAYOUTS[0]!.recognises(folder)) {
    for (const layout of MIGRATION_LAYOUTS) {
      const inner = inside(layout);
      if (inner && layout.recognises(inner)) return { layout, folder: inner, detected: true };
    }
  }
  if (found.length > 1) {
    throw new ConfigError(`--migrations ${dir} holds the layouts of ${found.map((entry) => `${entry.name} (${entry.recognisedBy})`).join(" and ")}`, `keep one tool's migrations in the folder, or name the layout with --migrations-format ${found.map((entry) => entry.name).join("|")}`);
  }
  if (found.length === 1) return { layout: found[0]!, folder, detected: true };
  if (MIGRATION_LAYOUTS[0]!.recognises(folder)) return { layout: MIGRATION_LAYOUTS[0]!, folder, detected: true };
  const seen = [...folder.files, ...folder.dirs.map((name) => `${name}/`)];
  throw new ConfigError(`--migrations ${dir} holds no migrations in a layout the kit knows (found ${seen.length === 0 ? "nothing" : seen.slice(0, 5).join(", ") + (seen.length > 5 ? ", …" : "")})`,
    `point it at the folder of *.sql files (layouts: ${LAYOUT_NAMES.join(", ")})`);
}

/**
 * The layout with its tool's history under another name, as a project may have set it (dbmate's
 * --migrations-table, golang-migrate's x-migrations-table, Flyway's flyway.table, goose's -table,
 * Drizzle's migrationsTable and migrationsSchema): every statement of the entry names that table
 * instead (and Drizzle's schema its schema, none when unqualified).
 */
export function withHistoryTable(layout: MigrationLayout, name: string): MigrationLayout {
  const history = layout.history;
  if (!TABLE_NAME.test(name)) throw new ConfigError(`--history-table "${name}" must be a plain table name, optionally schema-qualified`);
  if (!history) throw new ConfigError(`--history-table: ${layout.name}'s layout has no tool history to read`, "for the kit's own ledger, name it with --ledger-table");
  // Quoted as the tools quote it (dbmate, Drizzle): MyMigrations keeps its case, user is a name.
  const parts = name.split(".").map(quoteIdent);
  const table = parts.join(".");
  const fromSchema = history.table.includes(".") ? history.table.split(".")[0] : undefined;
  const renamed = (text: string) => {
    const made = fromSchema ? text.replaceAll(`create schema if not exists ${fromSchema}; `, parts.length > 1 ? `create schema if not exists ${parts[0]}; ` : "") : text;
    return made.replaceAll(history.table, table);
  };
  // A schema named for a table the tool keeps unqualified is made with it, as dbmate makes it.
  const schema = !fromSchema && parts.length > 1 ? `create schema if not exists ${parts[0]}; ` : "";
  return {
    ...layout,
    history: {
      ...history, table, read: renamed(history.read), made: history.made && renamed(history.made),
      repair: history.repair && ((row) => renamed(history.repair!(row))),
      write: history.write && { ...history.write, create: schema + renamed(history.write.create), has: renamed(history.write.has), insert: renamed(history.write.insert) },
    },
  };
}

/** Names of down and undo migrations: golang-migrate's *.down.sql, Diesel's and Prisma's down.sql, Flyway's U files. */
const DOWN_FILE = /(?:^|[/_.])down\.sql$|^U\d+(?:[._]\d+)*__.+\.sql$/i;

/** The line that opens a down section: dbmate's and goose's. */
const DOWN_SECTION = /^[ \t]*--[ \t]*(?:migrate:down|\+goose[ \t]+down)\b/im;

/**
 * No down or undo part ever runs, whatever layout a folder is read in: a migration whose name
 * marks it as one, or whose part to run holds a down section (a dbmate or goose file read as
 * plain SQL), is refused before anything runs.
 */
export function assertUpOnly(found: LayoutMigration[], layout: MigrationLayout): LayoutMigration[] {
  for (const entry of found) {
    const fix = `read the folder in its tool's layout (--migrations-format ${MIGRATION_LAYOUTS.filter((other) => other.name !== layout.name && other.name !== "kit").map((other) => other.name).join("|")}), which never runs it, or move the file out of the folder`;
    if (DOWN_FILE.test(entry.name)) throw new SchemaError(`${entry.name} is a down or undo migration by its name, which the kit never runs (read in ${layout.name}'s layout it would be applied)`, "SCHEMA_FAILED", fix);
    const section = DOWN_SECTION.exec(annotationText(entry.up));
    if (section) throw new SchemaError(`${entry.name}: "${section[0].trim()}" opens a down section, which the kit never runs (read in ${layout.name}'s layout the whole file would be applied)`, "SCHEMA_FAILED", fix);
  }
  return found;
}

/** Which tool a table of the ledger's name belongs to, by its columns ("name type"); undefined when none's. */
export function historyOwner(columns: string[]): MigrationLayout | undefined {
  return MIGRATION_LAYOUTS.find((layout) => layout.history && layout.history.columns.every((column) => columns.includes(column)) &&
    // dbmate's one column is part of other shapes too: it must be the whole table.
    (layout.name !== "dbmate" || columns.length === 1));
}

/** The columns of the kit's own ledger: a table that has them is the kit's. */
export const LEDGER_COLUMNS = ["name text", "checksum text"] as const;

// ---------------------------------------------------------------------------------------
// Schema steps: the plan (built-in schema, --schema, --migrations), the ledger, the advisory
// lock, and each step applied once, in its own transaction or statement by statement.

export interface SchemaStep {
  name: string;
  /** SHA-256 of the step's text without a leading BOM and with CRLF as LF: a checkout's line endings do not change it. */
  checksum: string;
  /** SHA-256 of the file's raw bytes, what earlier versions of the kit recorded: accepted from the ledger as the same file. */
  formerChecksum?: string;
  script: Script;
  /** For --migrations: the folder's layout and the migration as its tool sees it. */
  migration?: { layout: MigrationLayout; found: LayoutMigration };
}

/** A step from a migration (or a schema file as the kit's own layout reads it), never decoded whole: a dump of tens of MB stays one buffer. */
function schemaStep(found: LayoutMigration, layout?: MigrationLayout): SchemaStep {
  const checksum = sha256(normalizedText(found.up));
  const former = sha256(found.bytes);
  return {
    name: found.name, checksum, formerChecksum: former === checksum ? undefined : former,
    script: readScript(found.runnable, found.name, found.noTransaction),
    migration: layout && { layout, found },
  };
}

/**
 * Beside another tool's history the kit's own ledger is TOOL_LAYOUT_LEDGER, unless
 * --ledger-table names one: golang-migrate's and dbmate's tables have the default's name.
 */
export function ledgerBesideTool(config: Config, steps: SchemaStep[], named: string | undefined): void {
  const layout = steps[0]?.migration?.layout;
  if (named === undefined && layout && layout.name !== "kit") config.ledgerTable = TOOL_LAYOUT_LEDGER;
}

/** Whether the plan is the built-in schema alone. */
function isBuiltIn(steps: SchemaStep[]): boolean {
  return steps.length === 1 && steps[0]!.name === BUILT_IN_STEP;
}

/** The steps to apply: the built-in schema, a user's file, or a folder of migrations in its layout's order. */
export function schemaPlan(source: { schema?: string; migrations?: string; format?: string; historyTable?: string }, readFile: (path: string) => Buffer = (path) => readFileSync(path)): SchemaStep[] {
  const read = (path: string, flag: string) => {
    try {
      return readFile(path);
    } catch (error) {
      const code = errorCode(error);
      throw new ConfigError(`${flag} ${path} cannot be read (${code})`, `${resolve(path)} ${code === "ENOENT" ? "does not exist" : "is not a readable file"}; a relative path starts at the current directory, ${process.cwd()}`);
    }
  };
  if (source.schema && source.migrations) throw new ConfigError("--schema and --migrations exclude each other; choose one");
  if (source.historyTable !== undefined && !source.migrations) throw new ConfigError("--history-table names another tool's history, which only --migrations DIR reads", "add --migrations DIR, or drop --history-table");
  if (source.schema) return [schemaStep(layoutMigration(basename(source.schema), "", read(source.schema, "--schema"), undefined, undefined))];
  if (source.migrations) {
    const { layout: recognised, folder } = migrationLayout(source.migrations, source.format);
    const layout = source.historyTable === undefined ? recognised : withHistoryTable(recognised, source.historyTable);
    const found = assertUpOnly(layout.migrations(folder), layout);
    if (found.length === 0) throw new ConfigError(`--migrations ${source.migrations} holds no migrations in ${layout.name}'s layout (${layout.recognisedBy})`);
    return found.map((entry) => schemaStep(entry, layout));
  }
  return [schemaStep(layoutMigration(BUILT_IN_STEP, "", Buffer.from(FLOW_BACKEND_SCHEMA), undefined, undefined))];
}

/**
 * A no-transaction step needs a server session of its own: its session lock and its
 * statements must stay on one backend, which a transaction pooler does not keep (the lock
 * would stay behind on a backend that other clients then get). So behind one (pgbouncer=true,
 * or a pooler detected at connect time, whose mode the kit cannot see) such a step needs schema
 * work to go directly to PostgreSQL.
 */
function assertOwnSession(steps: SchemaStep[], config: Config, pooled: boolean): void {
  const step = steps.find((candidate) => candidate.script.noTransaction);
  if (!step || config.direct || (config.pooler !== "transaction" && !pooled)) return;
  const why = config.pooler === "transaction" ? "the URL says pgbouncer=true" : "a pooler answered the connection";
  throw new SchemaError(
    `${step.name} runs outside a transaction ("${NO_TRANSACTION_MARKER}"), which needs a server session of its own for its session lock and its statements; ${why}, and a transaction pooler hands each transaction to any server session`,
    "SCHEMA_FAILED",
    "set DIRECT_URL (or --direct-url) to PostgreSQL itself, past the pooler; schema work then goes there (a session-mode pooler's URL works too)",
  );
}

interface StepResult {
  name: string;
  status: "applied" | "already applied" | "pending";
  ms: number;
}

/** A step waiting for a lock another session holds, before its next attempt. */
interface LockWait {
  step: string;
  attempt: number;
  delayMs: number;
  /** The sessions it waited behind: pid, application, state, how long their query has run, its start. */
  blockers: string[];
}

/** An INVALID index an earlier try of a no-transaction step left behind, dropped before the statement that builds it runs again. */
interface IndexRebuild {
  step: string;
  /** The leftover, schema-qualified. */
  index: string;
  /** Where the statement that builds it again starts. */
  location: string;
}

/** The ledger, resolved once per run: always addressed schema-qualified, the advisory-lock key made from that name. */
interface Ledger {
  ident: string;
  lockKey: string;
  /** The schema was named in --ledger-table, so the kit creates it if missing. */
  createSchema: string | undefined;
  /** Set once a step of this run committed (so the table it records in exists): later steps skip the CREATE ... IF NOT EXISTS (a round trip and a catalog lock each). */
  made?: boolean;
  /** Which tables were there when it was resolved, for recordedSteps (a query on a missing one would end a read-only transaction): the ledger, the tool's history, and whether that is in fact the kit's own ledger (golang-migrate and dbmate use its default name). */
  found: { kit: boolean; tool: boolean; kitShaped: boolean };
}

/**
 * `--ledger-table NAME` without a schema means the schema of a fresh session (normally
 * public), asked once: a step that empties search_path (as pg_dump output does) cannot
 * move it, and two spellings of the same table share one lock.
 */
async function resolveLedger(sql: Sql, config: Config, deadline: Deadline, history?: ToolHistory): Promise<Ledger> {
  const parts = config.ledgerTable.split(".");
  const table = parts.at(-1)!;
  const named = parts.length > 1 ? parts[0]! : null;
  const tool = history?.table ?? null;
  // One round trip: the schema, the columns of a table already there (another tool's must not
  // become the ledger), and what recordedSteps asks next: is the tool's history there, and is it the kit's ledger.
  const [row] = await deadline.answer(sql<{ schema: string | null; columns: string[] | null; tool: boolean; kit_shaped: boolean }[]>`select coalesce(${named}, current_schema()) as schema, coalesce(to_regclass(${tool}) is not null, false) as tool,
           (select to_json(array_agg(a.attname || ' ' || format_type(a.atttypid, null) order by a.attnum)) from pg_attribute a
             where a.attrelid = to_regclass(quote_ident(coalesce(${named}, current_schema())) || '.' || quote_ident(${table}))
               and a.attnum > 0 and not a.attisdropped) as columns,
           (select count(*) = ${LEDGER_COLUMNS.length} from pg_attribute where attrelid = to_regclass(${tool}) and attnum > 0 and not attisdropped
              and attname || ' ' || format_type(atttypid, null) = any(string_to_array(${LEDGER_COLUMNS.join(",")}, ','))) as kit_shaped`);
  if (!row?.schema) throw new SchemaError(`no schema to hold the ledger table ${table}: the session's search_path names no existing schema`, "SCHEMA_FAILED", `pass --ledger-table SCHEMA.${table}`);
  const schema = row.schema;
  if (row.columns && !LEDGER_COLUMNS.every((column) => row.columns!.includes(column))) {
    const owner = historyOwner(row.columns);
    throw new SchemaError(
      `${schema}.${table} is not the kit's ledger: it has the columns ${row.columns.join(", ")}${owner ? `, the history of ${owner.name}${owner.name === "dbmate" ? " (or Rails)" : ""}` : ", a shape the kit does not know"}; the kit never keeps its ledger in another table, nor changes it`,
      "LEDGER_CLASH",
      `pass --ledger-table ${TOOL_LAYOUT_LEDGER} (or another name) for the kit's own ledger${owner ? `; if the folder is ${owner.name}'s, --migrations-format ${owner.name} reads that history instead` : ""}`);
  }
  return {
    ident: `${quoteIdent(schema)}.${quoteIdent(table)}`, lockKey: `pg-startup-kit:${schema}.${table}`, createSchema: parts.length > 1 ? schema : undefined,
    found: { kit: row.columns !== null, tool: row.tool, kitShaped: row.kit_shaped },
  };
}

/** What the ledger records, step name to checksum; empty when there is no ledger yet. */
export async function readLedger(sql: Sql, config: Config, deadline: Deadline, ledger?: Ledger): Promise<Record<string, string>> {
  const { ident } = ledger ?? (await resolveLedger(sql, config, deadline));
  const query = sql.unsafe(`select coalesce(json_object_agg(name, checksum), '{}') as applied from ${ident}`);
  const rows = await deadline.answer(query).catch((error) => {
    if (errorCode(error) === "42P01") return [{ applied: {} }];
    throw error;
  });
  return (rows[0]?.applied ?? {}) as Record<string, string>;
}

/** Where a step is recorded: the kit's ledger with the checksum it holds, or the tool's history (no checksum). */
export interface StepRecord {
  checksum: string | undefined;
  table: string;
}

/**
 * Which steps of the plan are recorded, and with which checksum: the kit's ledger, and the
 * history of the tool whose layout the folder is in (what it records counts as applied).
 * Read-only: takes no lock and creates nothing. A failed or dirty state in the tool's history
 * is a SchemaError HISTORY_FAILED naming the tool's repair command.
 */
export async function recordedSteps(sql: Sql, steps: SchemaStep[], config: Config, deadline: Deadline, ledger?: Ledger): Promise<Map<string, StepRecord>> {
  const layout = steps[0]?.migration?.layout;
  const history = layout?.history;
  // Which tables exist comes with the ledger's name: only those are read.
  const resolved = ledger ?? (await resolveLedger(sql, config, deadline, history));
  const { found } = resolved;
  const kit = found.kit ? await readLedger(sql, config, deadline, resolved) : {};
  const records = new Map<string, StepRecord>();
  for (const step of steps) if (kit[step.name] !== undefined) records.set(step.name, { checksum: kit[step.name], table: config.ledgerTable });
  if (!layout || !history || !found.tool) return records;
  if (found.kitShaped) throw await plainLedgerClash(sql, steps, layout, deadline);
  const rows = await deadline.answer(sql.unsafe<HistoryRow[]>(history.read)).catch((error) => {
    if (errorCode(error) === "42703") {
      throw new SchemaError(`${history.table} is not ${layout.name}'s history: it lacks the columns ${history.columns.join(", ")}`, "LEDGER_CLASH",
        `is the folder really ${layout.name}'s? name its layout with --migrations-format, or move the other table away`);
    }
    throw error;
  });
  const failed = rows.find((row) => row.failed);
  if (failed) throw new SchemaError(`${layout.name}: ${history.repair?.(failed)}`, "HISTORY_FAILED", `nothing was applied; after the repair, run the kit again`);
  const compare = layout.compare ?? byText;
  for (const step of steps) {
    const version = step.migration!.found.version;
    if (rows.some((row) => (row.up_to ? compare(version, row.version) <= 0 : compare(version, row.version) === 0))) {
      if (!records.has(step.name)) records.set(step.name, { checksum: undefined, table: history.table });
    }
  }
  return records;
}

/**
 * The kit's own ledger where the folder's tool keeps its history (golang-migrate and dbmate name
 * theirs schema_migrations, the kit's default): a run that read this folder as plain *.sql files
 * wrote it. The error says what it holds and, when every row is a file of the folder unchanged,
 * the statements that carry those rows to where this layout records: the old ledger renamed
 * (kept), and the tool's history written where the kit writes it. The kit does not run them
 * itself: a file read whole ran its down part too, which only the team can judge.
 */
async function plainLedgerClash(sql: Sql, steps: SchemaStep[], layout: MigrationLayout, deadline: Deadline): Promise<SchemaError> {
  const history = layout.history!;
  const rows = await deadline.answer(sql.unsafe<{ name: string; checksum: string }[]>(`select name, checksum from ${history.table} order by name`));
  const byName = new Map(steps.map((step) => [step.name, step]));
  // What the kit's layout recorded for the whole file: its checksum now, or an earlier version's of the raw bytes.
  const carried = rows.flatMap((row) => {
    const step = byName.get(row.name);
    const found = step?.migration?.found;
    return found && [sha256(normalizedText(found.bytes)), sha256(found.bytes)].includes(row.checksum) ? [{ step: step!, found }] : [];
  });
  const statementsIn = (bytes: Buffer, name: string) => {
    try {
      return readScript(bytes, name, true).statements.length;
    } catch {
      return Infinity;
    }
  };
  const downRan = [
    ...carried.filter(({ step, found }) => statementsIn(found.bytes, step.name) > step.script.statements.length).map(({ step }) => step.name),
    ...rows.filter((row) => DOWN_FILE.test(row.name)).map((row) => row.name),
  ];
  const others = rows.filter((row) => !carried.some(({ step }) => step.name === row.name) && !DOWN_FILE.test(row.name));
  const what = `${history.table} is the kit's own ledger (name, checksum), not ${layout.name}'s history: a run that read this folder as plain *.sql files wrote its ${rows.length} row${rows.length === 1 ? "" : "s"}` +
    (downRan.length ? `; it applied ${downRan.join(", ")} whole, down part included, so what ${downRan.length === 1 ? "that down part" : "those down parts"} dropped is missing` : "");
  if (others.length) {
    return new SchemaError(`${what}; ${others.length} of them ${others.length === 1 ? "matches" : "match"} no file of this folder as it is (first: ${others[0]!.name})`, "LEDGER_CLASH",
      `is --migrations the folder that run read? Rows that match no file are another folder's migrations or files edited since; once every row matches a file, run the kit again for the statements that carry them over`);
  }
  const literal = (value: string | number) => (typeof value === "number" ? String(value) : `'${value.replaceAll("'", "''")}'`);
  // The tool's history, written as the kit writes it; else the kit's ledger beside the tool, under the name it then reads.
  const statements = history.write
    ? [`ALTER TABLE ${history.table} RENAME TO ${PLAIN_LEDGER_KEPT}`, history.write.create,
        history.write.insert.replace(/values \(.*\)$/, () => `values ${carried.map(({ found }) => `(${history.write!.values(found).map(literal).join(", ")})`).join(", ")}`)]
    : [`ALTER TABLE ${history.table} RENAME TO ${TOOL_LAYOUT_LEDGER}`];
  return new SchemaError(what, "LEDGER_CLASH",
    `${downRan.length ? `first rebuild what ${downRan.length === 1 ? "that down part" : "those down parts"} dropped, then ` : ""}carry the rows over once, in one transaction: psql "$DATABASE_URL" -1 -c "${statements.join("; ")}"; then run the kit again: it applies only what they do not record`);
}

/**
 * A step against its record: recorded (by the tool, or by the kit with this checksum or the
 * raw-bytes one an earlier kit wrote), pending, or changed since it was recorded (a changed
 * Flyway repeatable is pending: it runs again).
 */
export function stepStanding(step: SchemaStep, record: StepRecord | undefined): "recorded" | "pending" | "changed" {
  if (record && [undefined, step.checksum, step.formerChecksum].includes(record.checksum)) return "recorded";
  return !record || step.migration?.found.repeatable ? "pending" : "changed";
}

/** A record that makes the step applied (stepStanding); MIGRATION_CHANGED when the file changed since. */
function isApplied(step: SchemaStep, record: StepRecord | undefined): boolean {
  const now = stepStanding(step, record);
  if (now !== "changed") return now === "recorded";
  // Its file was edited after it was applied.
  throw new SchemaError(`${step.name} was applied with checksum ${record!.checksum!.slice(0, 12)}… but the file now has ${step.checksum.slice(0, 12)}…: never edit an applied migration, add a new one`, "MIGRATION_CHANGED", "restore the file as it was applied (e.g. git checkout -- FILE) and put the change in a new migration file");
}

/**
 * Where the database stands against the plan (recordedSteps), read in a READ ONLY transaction:
 * the server itself refuses any write, no lock is taken and no ledger is created (a missing one
 * records nothing). Works through a transaction pooler and on a standby. --check and
 * --wait-for-schema read the ledger only here.
 */
export async function readSchemaState(sql: Sql, steps: SchemaStep[], config: Config, deadline: Deadline): Promise<SchemaState> {
  const read = sql.begin("read only", async (tx) => {
    await tx.unsafe(localSettings(config));
    return recordedSteps(tx as unknown as Sql, steps, config, deadline);
  });
  return schemaState(steps, (await deadline.answer(read)) as Map<string, StepRecord>);
}

/** Where the database stands against the plan: each step recorded with its checksum, pending, or changed since it was recorded. */
export interface SchemaState {
  recorded: string[];
  pending: string[];
  changed: { name: string; recorded: string; file: string }[];
}

/** The plan against its records, each step as stepStanding finds it. */
export function schemaState(steps: SchemaStep[], records: Map<string, StepRecord>): SchemaState {
  const state: SchemaState = { recorded: [], pending: [], changed: [] };
  for (const step of steps) {
    const record = records.get(step.name);
    const now = stepStanding(step, record);
    if (now === "changed") state.changed.push({ name: step.name, recorded: record!.checksum!, file: step.checksum });
    else state[now].push(step.name);
  }
  return state;
}

/**
 * Apply each pending step under an advisory lock, recording it in the ledger, so that replicas
 * starting together apply it exactly once. A step that meets a lock held by another session
 * for longer than --lock-timeout is rolled back and retried (jittered backoff) until the
 * deadline, each wait reported through `onWait`; past the deadline it is a NotReadyError (exit 3).
 */
async function applyMigrations(
  sql: Sql,
  steps: SchemaStep[],
  config: Config,
  { deadline, onStep, onWait, onRebuild, dryRun = false }: {
    deadline: Deadline; onStep?: (result: StepResult) => void; onWait?: (wait: LockWait) => void; onRebuild?: (rebuild: IndexRebuild) => void; dryRun?: boolean;
  },
): Promise<StepResult[]> {
  const ledger = await resolveLedger(sql, config, deadline, steps[0]?.migration?.layout.history);
  const recorded = await recordedSteps(sql, steps, config, deadline, ledger);
  const results: StepResult[] = [];
  const context: StepContext = { sql, config, ledger, deadline, onWait, onRebuild };
  for (const step of steps) {
    const applied = isApplied(step, recorded.get(step.name));
    if (applied || dryRun) {
      const result = { name: step.name, status: applied ? "already applied" as const : "pending" as const, ms: 0 };
      results.push(result);
      if (dryRun) onStep?.(result);
      continue;
    }
    const startedAt = performance.now();
    const status = await (step.script.noTransaction
      ? applyMigrationOutsideTransaction(step, context)
      : retryOnLockTimeout(step, context, () => applyMigrationInTransaction(step, context)));
    ledger.made = true;
    const result = { name: step.name, status, ms: Math.round(performance.now() - startedAt) };
    results.push(result);
    onStep?.(result);
  }
  if (!dryRun && isBuiltIn(steps)) await verifyTables(sql, FLOW_BACKEND_TABLES, deadline);
  return results;
}

type StepStatus = "applied" | "already applied";

interface StepContext {
  sql: Sql;
  config: Config;
  ledger: Ledger;
  /** The run's: its signal ends every await of the step, its `at` ends lock retries. */
  deadline: Deadline;
  onWait: ((wait: LockWait) => void) | undefined;
  onRebuild: ((rebuild: IndexRebuild) => void) | undefined;
}

/**
 * Run `attempt` again while it fails on --lock-timeout (55P03: rolled back, nothing of it
 * held; `retryable` says which failures those are), with jittered backoff, each wait reported
 * through onWait; when the next pause would pass the deadline, a NotReadyError (exit 3).
 */
function retryOnLockTimeout<T>(step: SchemaStep, context: StepContext, attempt: () => Promise<T>, retryable = (error: unknown) => errorCode(error) === "55P03"): Promise<T> {
  const blockersOf = (error: unknown) => (error instanceof StepFailure ? error.blockers : []);
  return retry(attempt, {
    deadline: context.deadline,
    classify: (error) => (retryable(error) ? "busy" : "fatal"),
    delay: (_class, attempts, remainingMs) => {
      const delayMs = retryDelay("busy", attempts);
      return remainingMs <= delayMs ? undefined : delayMs;
    },
    onRetry: ({ attempt: attempts, delayMs, error }) => {
      if (delayMs > 0) context.onWait?.({ step: step.name, attempt: attempts, delayMs, blockers: blockersOf(error) });
    },
    gaveUp: (attempts, _elapsedMs, _capped, error) => {
      const blockers = blockersOf(error);
      return `${step.name} could not get its locks within --lock-timeout in ${attempts} attempt${attempts === 1 ? "" : "s"} before the deadline${blockers.length ? `; blocked by ${blockers.join("; ")}` : ""}`;
    },
  });
}

/**
 * Everything a step may have set for the session ends with it: RESET ALL undoes SET and
 * set_config(..., false) (to the values of a fresh session: the server's, the role's and the
 * start-up packet's), and role and session authorization are not part of RESET ALL. Run inside
 * the step's own transaction, this holds behind a transaction pooler too, where the next
 * transaction may be another client's on the same server session.
 */
const RESET_SESSION = "reset all; set session authorization default; reset role";

/**
 * Run queries of one step under its `progress` bound (context.deadline.bound(), renewed on
 * every answer: a step may run many statements, each bounded by statement_timeout on the
 * server, so the client gives up only when one answer is overdue). On SIGINT/SIGTERM the
 * statement is cancelled on the server before the await ends.
 */
function runner(context: StepContext, progress: Deadline) {
  return async <T>(work: PromiseLike<T>, cancellable: Cancellable = work as unknown as Cancellable): Promise<T> => {
    const result = await progress.race(work, () => (context.deadline.signal.aborted ? cancelStatement(cancellable) : undefined));
    progress.renew();
    return result;
  };
}

type Run = ReturnType<typeof runner>;

/**
 * Inside the kit's lock: make the table the step is recorded in (the tool's history, where the
 * kit writes it as the tool does, else the kit's ledger, and the tool's table, empty, where the
 * tool makes one before any migration) and say whether the step is applied.
 */
async function ensureLedger(conn: Queries, ledger: Ledger, step: SchemaStep, run: Run): Promise<boolean> {
  const history = step.migration?.layout.history;
  const write = history?.write;
  const create = [ledger.createSchema && `create schema if not exists ${quoteIdent(ledger.createSchema)}`,
    `create table if not exists ${ledger.ident} (name text primary key, checksum text not null, applied_at timestamptz not null default now())`, history?.made].filter(Boolean).join("; ");
  if (!ledger.made) await run(conn.unsafe(write ? write.create : create));
  if (write) {
    const [row] = await run(conn.unsafe(write.has, [step.migration!.found.version]));
    return Boolean(row?.recorded);
  }
  const [row] = await run(conn.unsafe(`select checksum from ${ledger.ident} where name = $1`, [step.name]));
  return isApplied(step, row && { checksum: row.checksum, table: ledger.ident });
}

/** Record an applied step where ensureLedger looked (a repeatable's row is updated to its new checksum). */
async function recordStep(conn: Queries, ledger: Ledger, step: SchemaStep, run: Run): Promise<void> {
  const write = step.migration?.layout.history?.write;
  if (write) await run(conn.unsafe(write.insert, write.values(step.migration!.found)));
  else await run(conn.unsafe(`insert into ${ledger.ident} (name, checksum) values ($1, $2)${step.migration?.found.repeatable ? " on conflict (name) do update set checksum = excluded.checksum, applied_at = now()" : ""}`, [step.name, step.checksum]));
}

/**
 * The kit's advisory lock is taken with pg_try_advisory_*_lock and polled, never waited for
 * inside a statement or an open transaction: such a waiter holds a snapshot, and CREATE INDEX
 * CONCURRENTLY in a replica's no-transaction step waits for every older snapshot while the
 * waiter waits for that replica's lock, a deadlock. Between tries nothing is held. `attempt`
 * tries it ("locked": held elsewhere) and is retried, pausing at most lockPollCapMs, for
 * --command-timeout (the whole deadline when that is 0): the holder is a replica doing the
 * work, or a stuck session (LOCK_WAIT, exit 1).
 */
async function untilAdvisoryLock<T>(step: SchemaStep, context: StepContext, attempt: () => Promise<T | "locked">): Promise<T> {
  const { config, ledger } = context;
  const horizon = config.commandTimeoutMs === 0 ? undefined : context.deadline.horizon(config.commandTimeoutMs);
  const held = kitError("LOCK_WAIT", "another session holds the kit's advisory lock");
  try {
    return await retry(async () => {
      const outcome = await attempt();
      if (outcome === "locked") throw held;
      return outcome;
    }, {
      deadline: horizon ?? context.deadline,
      classify: (error) => (error === held ? "busy" : "fatal"),
      delay: (_class, attempts, remainingMs) => (remainingMs <= 0 ? undefined : Math.max(0, Math.min(retryDelay("busy", attempts), DEFAULTS.lockPollCapMs, remainingMs))),
    });
  } catch (error) {
    if (!(error instanceof NotReadyError && error.lastError === held)) throw error;
    const holders = await advisoryLockHolders(context);
    throw kitError("LOCK_WAIT", `${step.name}: another session held the kit's advisory lock for ${ledger.ident} for longer than --command-timeout (${formatMs(config.commandTimeoutMs)})${holders.length ? `; held by ${holders.join("; ")}` : ""}`);
  } finally {
    horizon?.done();
  }
}

/** One step in one transaction: timeouts, lock (else end the transaction and try again), re-check the ledger inside the lock, apply, reset the session, record. */
async function applyMigrationInTransaction(step: SchemaStep, context: StepContext): Promise<StepStatus> {
  let oneQuery = step.script.oneQuery === true;
  for (;;) {
    try {
      return await untilAdvisoryLock(step, context, () => migrationTransactionOnce(step, context, oneQuery));
    } catch (error) {
      // A step sent as one query failed where the server named no position: run it again
      // statement by statement (it was rolled back whole), so the error names its line.
      if (!(error instanceof OneQueryFailed)) throw error;
      oneQuery = false;
    }
  }
}

/** A step sent as one query failed without saying where: the caller runs it again statement by statement. */
class OneQueryFailed extends Error {}

/**
 * A step's statements as one simple query, as dbmate and golang-migrate send a file: one round
 * trip instead of one per statement. A server error that names its position is mapped back to
 * the statement and line it points at.
 */
async function runAsOneQuery(tx: Queries, step: SchemaStep, run: Run, progress: { touch(): void; everyMs: number }, blockers: () => string[]): Promise<void> {
  const { bytes, statements } = step.script;
  const start = statements[0]!.start;
  const text = bytes.toString("utf8", start, statements.at(-1)!.end);
  // The server answers once for all of them, and each may take up to statement_timeout: the
  // client waits as long as it would for the statements one by one, no longer.
  let allowances = statements.length - 1;
  const extend = setInterval(() => {
    if (allowances-- > 0) progress.touch();
  }, progress.everyMs);
  try {
    await run(tx.unsafe(text));
  } catch (error) {
    const position = serverFields(error).position ?? NaN;
    if (!Number.isInteger(position) || position < 1) {
      // Lock and statement timeouts, lost connections: retried or reported as they are (running the step again would only repeat the wait).
      const code = errorCode(error);
      if (classifyError(error) !== "fatal" || code === "55P03" || code === "57014") throw annotate(error, step, statements[0]!, blockers());
      throw new OneQueryFailed();
    }
    const at = start + Buffer.byteLength([...text].slice(0, position - 1).join(""));
    const statement = statements.findLast((candidate) => candidate.start <= at) ?? statements[0]!;
    const within = [...bytes.toString("utf8", statement.start, at)].length + 1;
    throw new StepFailure(error, step.name, statementLocation(step.script, statement, within), blockers());
  } finally {
    clearInterval(extend);
  }
}

async function migrationTransactionOnce(step: SchemaStep, context: StepContext, oneQuery = false): Promise<StepStatus | "locked"> {
  const { sql, config, ledger } = context;
  const progress = context.deadline.bound();
  const run = runner(context, progress);
  const work = sql.begin(async (tx) => {
    // SET LOCAL (set_config(..., true)) ends with the transaction, so nothing leaks through a pooler.
    const locking = run(tx.unsafe(
      `select set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true), pg_backend_pid() as pid, pg_try_advisory_xact_lock(hashtext($3)) as locked`,
      [String(config.commandTimeoutMs), String(config.lockTimeoutMs), ledger.lockKey]));
    // Once the table exists, the ledger check goes out right behind the lock (pipelined): it is a
    // statement of its own, so its snapshot is taken after the lock is granted, and its answer is
    // dropped when the lock was not.
    const recorded = ledger.made ? ensureLedger(tx, ledger, step, run) : undefined;
    recorded?.catch(() => {});
    const [session] = await locking;
    if (!session?.locked) return "locked" as const;
    if (await (recorded ?? ensureLedger(tx, ledger, step, run))) return "already applied" as const;
    const watcher = watchBlockers(sql, Number(session.pid), config);
    try {
      if (oneQuery) await runAsOneQuery(tx, step, run, { touch: () => progress.renew(), everyMs: context.deadline.answerMs * 0.9 }, () => watcher.stop());
      else for (const statement of step.script.statements) {
        await runStatement(tx, step, statement, run, () => progress.renew()).catch((error) => {
          throw annotate(error, step, statement, watcher.stop());
        });
      }
    } finally {
      watcher.stop();
    }
    // Sent together (postgres.js pipelines them; the server runs them in order): one round trip, not two.
    await Promise.all([run(tx.unsafe(`${RESET_SESSION}; select set_config('statement_timeout', '${config.commandTimeoutMs}', true)`)), recordStep(tx, ledger, step, run)]);
    return "applied" as const;
  });
  try {
    // Interrupted: the running statement is being cancelled (runner); let the transaction end too, briefly.
    return (await progress.race(work, () => (context.deadline.signal.aborted ? withDeadline(work, DEFAULTS.graceMs).catch(() => {}) : undefined))) as StepStatus | "locked";
  } finally {
    progress.done();
  }
}

/** Statements that leave an INVALID index behind when they fail. */
function buildsIndexConcurrently(words: string[]): boolean {
  return (words[0] === "create" || words[0] === "reindex") && words.includes("concurrently");
}

/**
 * A file with the no-transaction marker: statement by statement in autocommit on one
 * connection, under a session-level advisory lock held on that same connection (a
 * transaction-level lock on another connection would deadlock with CREATE INDEX
 * CONCURRENTLY, which waits for every older transaction). The session is the kit's own here
 * (such a step needs a direct connection), so its timeouts are session settings, reset after.
 */
async function applyMigrationOutsideTransaction(step: SchemaStep, context: StepContext): Promise<StepStatus> {
  const { sql, config, ledger } = context;
  const reserved = await reserveSession(sql, context.deadline);
  const { conn, lost } = reserved;
  // Every await on the session ends at once when its connection is lost.
  const progress = context.deadline.bound({ tiedTo: lost });
  const run = runner(context, progress);
  try {
    const [session] = await run(conn.unsafe(
      `select set_config('statement_timeout', $1, false), set_config('lock_timeout', '0', false), pg_backend_pid() as pid`, [String(config.commandTimeoutMs)]));
    await untilAdvisoryLock(step, context, async () => ((await run(conn`select pg_try_advisory_lock(hashtext(${ledger.lockKey})) as locked`))[0]?.locked ? true : "locked"));
    if (await ensureLedger(conn, ledger, step, run)) return "already applied";
    const ran: ScriptStatement[] = [];
    for (const statement of step.script.statements) {
      const building = buildsIndexConcurrently(statement.words);
      const invalidBefore = building ? await invalidIndexes(conn, run) : [];
      // Building an index concurrently takes only SHARE UPDATE EXCLUSIVE, which blocks no reads or
      // writes, then waits for every older transaction: a lock timeout there would only leave an
      // INVALID index behind, so it runs without one.
      await run(conn.unsafe(`select set_config('lock_timeout', $1, false)`, [building ? "0" : String(config.lockTimeoutMs)]));
      const target = building ? concurrentBuild(step.script, statement) : undefined;
      if (target) await dropOwnLeftovers(conn, step, statement, target, run, context);
      // Nothing of a statement that timed out on a lock stays behind (it is not an index built concurrently): it is retried.
      const lockedOut = (error: unknown) => errorCode(error) === "55P03" && !building;
      await retryOnLockTimeout(step, context, async () => {
        const watcher = watchBlockers(sql, Number(session!.pid), config);
        try {
          await runStatement(conn, step, statement, run, () => progress.renew());
        } catch (error) {
          const failure = annotate(error, step, statement, watcher.stop());
          if (lockedOut(error)) throw failure;
          const invalid = building ? (await invalidIndexes(conn, run).catch(() => [])).filter((name) => !invalidBefore.includes(name)) : [];
          throw partlyApplied(failure, ran, invalid);
        } finally {
          watcher.stop();
        }
      }, lockedOut);
      if (target) await assertBuiltValid(conn, step, statement, target, run);
      ran.push(statement);
    }
    await run(conn.unsafe(`${RESET_SESSION}; select set_config('statement_timeout', '${config.commandTimeoutMs}', false)`));
    await recordStep(conn, ledger, step, run);
    return "applied";
  } finally {
    progress.done();
    // A lost session's settings and locks went with it.
    if (!lost.aborted) await withDeadline(conn.unsafe(`${RESET_SESSION}; select pg_advisory_unlock_all()`), DEFAULTS.graceMs, lost).catch(() => {});
    reserved.release();
  }
}

async function invalidIndexes(conn: Sql, run: Run): Promise<string[]> {
  const rows = await run(conn<{ name: string }[]>`select indexrelid::regclass::text as name from pg_index where not indisvalid`);
  return rows.map((row) => row.name);
}

/**
 * What a statement that builds an index concurrently names, read from its text: CREATE [UNIQUE]
 * INDEX CONCURRENTLY [IF NOT EXISTS] [name] ON [ONLY] table, or REINDEX [(...)] INDEX|TABLE
 * CONCURRENTLY name. `index` is the name as written (an index is made in its table's schema);
 * undefined when the statement names none, or is a form the kit does not check (REINDEX SCHEMA).
 */
interface ConcurrentBuild {
  kind: "create" | "reindex index" | "reindex table";
  index?: string;
  /** The table, as written (qualified or not): what the index is on. */
  table?: string;
}

const IDENT = String.raw`(?:"(?:[^"]|"")+"|[A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*)`;
const QUALIFIED = String.raw`${IDENT}(?:\s*\.\s*${IDENT})?`;
const CREATE_CONCURRENTLY = new RegExp(String.raw`^create\s+(?:unique\s+)?index\s+concurrently\s+(?:if\s+not\s+exists\s+)?(?:(?!on\s)(${IDENT})\s+)?on\s+(?:only\s+)?(${QUALIFIED})`, "iu");
const REINDEX_CONCURRENTLY = new RegExp(String.raw`^reindex\s+(?:\([^)]*\)\s*)?(index|table)\s+concurrently\s+(${QUALIFIED})`, "iu");

function concurrentBuild(script: Script, statement: ScriptStatement): ConcurrentBuild | undefined {
  // Comments inside the statement's head are rare in migrations; such a statement is checked by its table-wide leftovers only.
  const text = script.bytes.toString("utf8", statement.start, Math.min(statement.end, statement.start + 2_000)).trim();
  const create = CREATE_CONCURRENTLY.exec(text);
  if (create) return { kind: "create", index: create[1], table: create[2] };
  const reindex = REINDEX_CONCURRENTLY.exec(text);
  if (reindex) return reindex[1]!.toLowerCase() === "index" ? { kind: "reindex index", index: reindex[2] } : { kind: "reindex table", table: reindex[2] };
  return undefined;
}

/** An identifier as the server stores it: "Quoted" as is, else folded to lower case. */
function storedName(ident: string): string {
  return ident.startsWith('"') ? ident.slice(1, -1).replaceAll('""', '"') : ident.toLowerCase();
}

interface IndexRow {
  /** Schema-qualified and quoted: what a DROP INDEX names. */
  name: string;
  valid: boolean;
  on_table: boolean;
  /** The pid of another session building it right now, if any. */
  builder: number | null;
}

/**
 * The indexes a build concerns, in the schema of its table: for CREATE the one of its name (any
 * table: a name clash shows as on_table false), for REINDEX the transient *_ccnew and *_ccold
 * ones of the index (or of every index of the table) that a cut-short rebuild leaves.
 */
async function buildIndexes(conn: Sql, build: ConcurrentBuild, run: Run): Promise<IndexRow[]> {
  const leftover = build.kind !== "create";
  return run(conn<IndexRow[]>`
    with target as (
      select t.oid as table_oid, t.relnamespace as schema_oid, ${build.kind === "reindex index" ? conn`(select relname from pg_class where oid = to_regclass(${build.index!}))` : conn`null::name`} as base
      from pg_class t
      where t.oid = ${build.kind === "reindex index" ? conn`(select indrelid from pg_index where indexrelid = to_regclass(${build.index!}))` : conn`to_regclass(${build.table!})`}
    )
    select format('%I.%I', n.nspname, c.relname) as name, i.indisvalid and i.indisready as valid, i.indrelid = target.table_oid as on_table,
      (select p.pid from pg_stat_progress_create_index p where p.index_relid = c.oid and p.pid <> pg_backend_pid() limit 1) as builder
    from target join pg_class c on c.relnamespace = target.schema_oid join pg_namespace n on n.oid = c.relnamespace join pg_index i on i.indexrelid = c.oid
    where ${leftover
      ? conn`i.indrelid = target.table_oid and c.relname ~ '_cc(new|old)[0-9]*$' and (target.base is null or starts_with(c.relname, left(target.base, 50)))`
      : conn`c.relname = ${storedName(build.index!)}`}`);
}

/**
 * Before a concurrent build runs: an INVALID index it would build (or a *_ccnew/*_ccold a cut-short
 * REINDEX left), on the statement's table and built by no other session, can only be left by an
 * earlier try of this unrecorded step (CREATE ... IF NOT EXISTS would take it for done): drop it
 * and say so. Anything the kit cannot be sure is its own stops the run, naming the statements to run.
 */
async function dropOwnLeftovers(conn: Sql, step: SchemaStep, statement: ScriptStatement, build: ConcurrentBuild, run: Run, context: StepContext): Promise<void> {
  const location = statementLocation(step.script, statement);
  if (build.kind === "create" && !build.index) {
    const stray = (await run(conn<{ name: string }[]>`select format('%I.%I', n.nspname, c.relname) as name from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace where i.indrelid = to_regclass(${build.table!}) and not (i.indisvalid and i.indisready)`)).map((row) => row.name);
    if (stray.length > 0) throw leftoverFailure(step, location, stray, `the statement names no index, so the kit cannot tell whether ${stray.join(", ")} on ${build.table} ${stray.length === 1 ? "is" : "are"} left by an earlier try of it`);
    return;
  }
  for (const index of await buildIndexes(conn, build, run)) {
    if (index.valid) continue;
    if (index.builder !== null) throw leftoverFailure(step, location, [index.name], `${index.name} is being built by another session (pid ${index.builder}) right now`);
    if (!index.on_table) throw leftoverFailure(step, location, [index.name], `an INVALID index ${index.name} exists on another table than ${build.table}, so it is not this step's own`);
    context.onRebuild?.({ step: step.name, index: index.name, location });
    await run(conn.unsafe(`drop index concurrently if exists ${index.name}`));
  }
}

/** After a concurrent build, before the step may be recorded: what it built is valid and where the statement put it. */
async function assertBuiltValid(conn: Sql, step: SchemaStep, statement: ScriptStatement, build: ConcurrentBuild, run: Run): Promise<void> {
  const location = statementLocation(step.script, statement);
  if (build.kind === "create" && !build.index) return;
  for (const index of await buildIndexes(conn, build, run)) {
    if (build.kind === "create" && !index.on_table) throw leftoverFailure(step, location, [index.name], `${index.name} already exists on another table than ${build.table} (the statement skipped it as existing)`);
    if (!index.valid) throw leftoverFailure(step, location, [index.name], `${index.name} is INVALID after the statement`);
  }
}

/** A step stopped on an index it cannot vouch for: exit 1, naming the index and the statements that repair it. */
function leftoverFailure(step: SchemaStep, location: string, indexes: string[], why: string): StepFailure {
  const failure = new StepFailure(new SchemaError(`not recorded: ${why}`), step.name, location, []);
  failure.fix = `if ${indexes.length === 1 ? "it is" : "they are"} not needed, run ${indexes.map((name) => `DROP INDEX CONCURRENTLY IF EXISTS ${name};`).join(" ")} then re-run: the step is not recorded and runs again`;
  return failure;
}

/** Say what a failed no-transaction step left behind: the statements that ran (committed), and any INVALID index. */
function partlyApplied(failure: StepFailure, ran: ScriptStatement[], invalid: string[]): StepFailure {
  failure.notes = [
    ran.length === 0
      ? "nothing of this step ran before it"
      : `already ran and stay applied (autocommit): ${ran.length} statement${ran.length === 1 ? "" : "s"}, at line${ran.length === 1 ? "" : "s"} ${ran.map((statement) => statement.line).join(", ")}`,
    ...invalid.map((name) => `left behind: INVALID index ${name}; remove it with DROP INDEX CONCURRENTLY ${name};`),
  ];
  failure.fix = invalid.length > 0
    ? `run DROP INDEX CONCURRENTLY ${invalid.join(", ")}; fix the cause, then re-run: the step is not recorded and runs again from its first statement`
    : `fix the cause and re-run: the step is not recorded and runs again from its first statement, so make the statements that already ran safe to repeat (IF NOT EXISTS)`;
  return failure;
}

/** A statement's error with the step, the file's line (and column, when the server gives its position) and the sessions that blocked it. */
function annotate(error: unknown, step: SchemaStep, statement: ScriptStatement, blockers: string[]): StepFailure {
  return new StepFailure(error, step.name, statementLocation(step.script, statement, serverFields(error).position), blockers);
}

/**
 * Where in the file a server error points: the statement's line, plus the server's character
 * position within the statement when it gives one ("line 3, column 14"; else "line 3").
 */
export function statementLocation(script: Script, statement: ScriptStatement, position?: number): string {
  if (position === undefined || !Number.isInteger(position) || position < 1) return `line ${statement.line}`;
  // The server counts characters, as code points do.
  const before = [...script.bytes.toString("utf8", statement.start, statement.end)].slice(0, position - 1).join("");
  const lines = before.split("\n");
  const column = lines.length === 1 ? statement.column + [...before].length : [...lines.at(-1)!].length + 1;
  return `line ${statement.line + lines.length - 1}, column ${column}`;
}

/** Send one statement; for COPY ... FROM stdin stream its rows from the file in pieces, with backpressure. */
async function runStatement(conn: Queries, step: SchemaStep, statement: ScriptStatement, run: Run, touch: () => void): Promise<void> {
  const { bytes } = step.script;
  const query = conn.unsafe(bytes.toString("utf8", statement.start, statement.end));
  if (!statement.data) {
    const result: unknown = await run(query);
    if (isCopyStream(result)) {
      result.destroy();
      throw new SchemaError("the statement exchanges COPY data, which the file does not hold", "SCHEMA_FAILED", "use COPY ... FROM stdin followed by its rows and a line \\., as pg_dump writes it");
    }
    return;
  }
  const { writable, serverFailed } = copyFromStdin(query);
  const stream = await run(writable, query);
  const done = Promise.race([finished(stream), serverFailed]);
  done.catch(() => {});
  const { start, end } = statement.data;
  for (let at = start; at < end; at += COPY_CHUNK_BYTES) {
    if (!stream.write(bytes.subarray(at, Math.min(at + COPY_CHUNK_BYTES, end)))) await run(Promise.race([once(stream, "drain"), done]), query);
    touch();
  }
  stream.end();
  await run(done, query);
}

/** A session as pg_stat_activity shows it, to name one that blocks a step or holds the kit's lock. */
interface SessionRow {
  pid: number;
  application: string;
  state: string;
  seconds: number;
  query: string;
}

/** pid, application_name, state, how long its query has run, and the query's start: how a blocking session is named. */
const SESSION_COLUMNS = `a.pid, coalesce(nullif(a.application_name, ''), '?') as application, coalesce(a.state, '?') as state,
  coalesce(round(extract(epoch from clock_timestamp() - a.query_start))::int, 0) as seconds,
  left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 60) as query`;

function describeSessions(rows: SessionRow[]): string[] {
  return rows.map((row) => `pid ${row.pid} (${row.application}, ${row.state}, query started ${row.seconds} s ago: ${row.query})`);
}

/**
 * Who holds the kit's advisory lock: pg_locks splits the 64-bit key (hashtext, sign-extended)
 * into classid (high half) and objid (low half); objsubid 1 marks a one-key lock.
 */
async function advisoryLockHolders(context: StepContext): Promise<string[]> {
  const rows = await context.deadline.answer(context.sql.unsafe<SessionRow[]>(`select ${SESSION_COLUMNS}
      from pg_locks l join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.granted and l.objsubid = 1 and l.database = (select oid from pg_database where datname = current_database())
       and l.classid = ((hashtext($1)::bigint >> 32) & 4294967295)::oid and l.objid = (hashtext($1)::bigint & 4294967295)::oid`, [context.ledger.lockKey]),
    DEFAULTS.graceMs).catch(() => []);
  return describeSessions(rows);
}

/**
 * While a step runs, look now and then at who blocks its session (pg_blocking_pids), so that
 * a lock timeout can name them. `stop` returns the last sessions seen blocking it.
 */
function watchBlockers(sql: Sql, pid: number, config: Config): { stop(): string[] } {
  let seen: string[] = [];
  let stopped = false;
  // Half the lock timeout, so that blockers are seen before it fires; a short step never polls (nor opens a connection for it).
  const everyMs = config.lockTimeoutMs > 0 ? Math.min(DEFAULTS.blockerPollMs, Math.max(50, config.lockTimeoutMs / 2)) : DEFAULTS.blockerPollMs;
  let timer: ReturnType<typeof setTimeout> = setTimeout(async function poll() {
    const rows = await withDeadline(sql.unsafe<SessionRow[]>(`select ${SESSION_COLUMNS} from pg_stat_activity a where a.pid = any(pg_blocking_pids($1))`, [pid]),
      DEFAULTS.graceMs).catch(() => []);
    if (rows.length > 0) seen = describeSessions(rows);
    if (!stopped) timer = setTimeout(poll, everyMs);
  }, everyMs);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      return seen;
    },
  };
}

async function verifyTables(sql: Sql, tables: readonly string[], deadline: Deadline): Promise<void> {
  const rows = await deadline.answer(sql`select t as name from unnest(string_to_array(${tables.join(",")}, ',')) t where to_regclass(t) is null`);
  if (rows.length > 0) {
    throw new SchemaError(`tables missing after the schema ran: ${rows.map((row) => row.name).join(", ")} (were they dropped? delete the ledger row to re-apply)`);
  }
}

/**
 * The built-in schema is demo tables: written into a project's own database it mixes with
 * (or fails on) that project's tables. So it is applied only where the schema it lands in
 * holds nothing but its own four tables (a database the original scripts made qualifies),
 * or where the ledger already records it; anything else is refused before any change.
 * Costs one catalog query; the ledger is read only when other tables are found.
 */
async function guardBuiltInSchema(sql: Sql, steps: SchemaStep[], config: Config, deadline: Deadline): Promise<void> {
  if (!isBuiltIn(steps)) return;
  const [ledgerSchema, ledgerName] = config.ledgerTable.includes(".") ? config.ledgerTable.split(".").slice(-2) : [undefined, config.ledgerTable];
  // A table with a built-in name must have the built-in keys, or `create table if not exists`
  // would skip it and the next statement fail on it (42703).
  const keyColumns = [...FLOW_BACKEND_TABLES.map((table) => `${table}.id`), ...FLOW_BACKEND_FOREIGN_KEYS.map((fk) => fk.split(" ")[0]!)];
  const found = await deadline.answer(sql<{ kind: "other" | "unlike"; name: string }[]>`
    select 'other' as kind, c.relname as name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = current_schema()
       and c.relkind in ('r', 'p', 'v', 'm', 'f')
       -- what an extension made (pg_stat_statements' views, PostGIS's spatial_ref_sys) is not the project's
       and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
       and c.relname <> all(string_to_array(${FLOW_BACKEND_TABLES.join(",")}, ','))
       and not (c.relname = ${ledgerName!} and n.nspname = coalesce(${ledgerSchema ?? null}, current_schema()))
    union all
    select 'unlike', k
      from unnest(string_to_array(${keyColumns.join(",")}, ',')) k,
           lateral (select to_regclass(quote_ident(current_schema()) || '.' || quote_ident(split_part(k, '.', 1))) as rel) r
     where r.rel is not null
       and not exists (select 1 from pg_attribute a where a.attrelid = r.rel and a.attname = split_part(k, '.', 2) and not a.attisdropped)
     order by 1, 2`);
  if (found.length === 0) return;
  const applied = await readLedger(sql, config, deadline);
  if (applied[BUILT_IN_STEP]) return;
  const list = (names: string[]) => names.slice(0, 5).join(", ") + (names.length > 5 ? `, … (${names.length} in all)` : "");
  const others = found.filter((row) => row.kind === "other").map((row) => row.name);
  const unlike = found.filter((row) => row.kind === "unlike").map((row) => row.name);
  const holds = [
    others.length > 0 && `other tables (${list(others)})`,
    unlike.length > 0 && `tables named like the built-in ones but shaped otherwise (no column ${list(unlike)})`,
  ].filter(Boolean).join(" and ");
  throw new SchemaError(
    `refusing to write the built-in Flow-Backend demo schema into ${config.database}: its schema already holds ${holds}; nothing was changed`,
    "FOREIGN_TABLES",
    "apply your own schema with --schema FILE or --migrations DIR, or pass --wait-only to only wait for the database",
  );
}

// ---------------------------------------------------------------------------------------
// Reporting: the one-line explanations and hints a user reads; human lines on stderr, results
// on stdout, NDJSON events with --json; every line redacted.

/** One line saying what to do about an error, by code. */
export function hint(error: unknown, config: Config): string {
  if (error instanceof NotReadyError) return hint(error.lastError, config);
  const pooler = poolerMessage(error);
  // --create-database first connects to a maintenance database, which a pooler rarely lists.
  const directly = config.createDatabase && !config.direct ? "; --create-database behind a pooler needs DIRECT_URL (or --direct-url) to reach PostgreSQL directly" : "";
  if (pooler) return pooler.hint + (pooler.prefix === "no such database" ? directly : "");
  const code = errorCode(error);
  const places = config.targets.map(where).join(", ");
  const defaultSocket = config.targets.some((target) => target.socket && target.host === defaultSocketDir())
    ? ` (no host was given, so the local socket directory ${defaultSocketDir()}; set PGHOST or a host in the URL for TCP)`
    : "";
  const hints: Record<string, string> = {
    "26000": "a prepared statement vanished: a transaction pooler (PgBouncer pool_mode=transaction) is in front; add pgbouncer=true to the URL, or use prepare: false",
    "28P01": "check the password (PGPASSWORD, POSTGRES_PASSWORD or the URL); in Compose an old volume may hold a different password (docker compose down -v resets it)",
    "28000": `the server refused user "${config.user}": check the user name and pg_hba.conf`,
    "3D000": `database "${config.database}" does not exist: fix the name, or create it with: bun run init-database.ts --create-database (same connection settings)`,
    NO_MAINTENANCE_DATABASE: `create it from a database you can reach, e.g. createdb --maintenance-db=THAT_DATABASE ${quoteIdent(config.database)}, then run without --create-database`,
    "42501": `user "${config.user}" lacks a privilege it needs (CONNECT on the database, CREATE on the schema)`,
    "53300": "the server is full: raise max_connections or shrink the pools of other clients",
    "57P03": "the server is still starting or recovering",
    ECONNREFUSED: `nothing listens on ${places}: is the server up and the port right?${defaultSocket}`,
    ENOENT: `no server socket at ${places}: is the server up, with this port and unix_socket_directories?${defaultSocket}`,
    ERR_CRYPTO_OPERATION_FAILED: "a TLS file could not be used (sslrootcert, sslcert, sslkey, sslcrl, sslcrldir): check it is PEM of the right kind",
    TLS_REFUSED: "the server has TLS turned off (ssl = off): turn it on in postgresql.conf with a certificate, or use sslmode=prefer or disable on a network you trust",
    ENOTFOUND: `the host name does not resolve: in Compose use the service name, on the same network`,
    EAI_AGAIN: `the host name does not resolve yet: DNS is not answering`,
    CONNECT_TIMEOUT: `${places} accepts TCP but the server never answers: wrong port, a proxy, or a firewall?`,
    CLIENT_DEADLINE: "the server stopped answering mid-query; the client was replaced",
    POOLER_NO_SERVER: `${places} accepted the login but opened no session: a pooler (PgBouncer) whose PostgreSQL is down or unreachable? PgBouncer retries it every server_login_retry (default 15 s)`,
    CONNECTION_CLOSED: `${places} closed the connection: a server restarting or shutting down, a proxy with no backend, or a TLS mismatch?`,
    ECONNRESET: `${places} reset the connection: a server restarting, or a proxy or firewall cutting it`,
    "55P03": "another session holds a lock the schema step needs (see \"blocked by\"): let it finish or end it, or raise --timeout to wait longer",
    WRONG_SESSION_ATTRS: `no host matched target_session_attrs=${config.targetSessionAttrs}: is the primary up?`,
    TLS: `the server's certificate failed the check sslmode=${config.sslmode} asks for: check sslrootcert (the CA that signed it)${config.tls.verifyHost ? " and that the certificate names the host you connect to" : ""}, or choose a weaker sslmode`,
  };
  return hints[code.startsWith("08") ? "CONNECTION_CLOSED" : code] ?? (/^ERR_(?:TLS|SSL|OSSL)|CERT|SELF_SIGNED|UNABLE_TO/.test(code) ? hints.TLS! : "");
}

/** The first line of an error's message: parseArgs explains at length. */
function firstLine(error: unknown): string {
  return String(error instanceof Error ? error.message : error).split("\n")[0]!;
}

/** A short, redacted description of an error: its code and the server's or system's message. */
export function explain(error: unknown): string {
  if (error instanceof NotReadyError) return `${error.message}: ${explain(error.lastError)}`;
  const code = errorCode(error);
  const message = error instanceof Error ? error.message : String(error);
  const at = error instanceof StepFailure && error.location ? ` (${error.location})`
    : serverFields(error).position ? ` (at character ${serverFields(error).position})` : "";
  return `${code === "UNKNOWN" ? "" : code + ": "}${message}${at}`;
}

/** Human lines on stderr, results on stdout, NDJSON with --json; everything redacted. */
export class Reporter {
  private progressShown = false;
  private lastPlainAt = 0;
  private lastCause = "";
  private readonly secrets: (string | undefined)[] = [];
  constructor(private readonly mode: { json: boolean; quiet: boolean; tty: boolean; color: boolean }) {}

  addSecret(secret: string | undefined): void {
    this.secrets.push(secret);
  }

  private clean(text: string): string {
    return redact(text, this.secrets);
  }

  private paint(code: number, text: string): string {
    return this.mode.color ? `\x1b[${code}m${text}\x1b[0m` : text;
  }

  private clearProgress(): void {
    if (this.progressShown) process.stderr.write("\r\x1b[2K");
    this.progressShown = false;
  }

  /** Redact values, not the serialised line, so that a short password cannot break the JSON. */
  event(fields: Record<string, unknown>): void {
    if (!this.mode.json) return;
    const line = JSON.stringify(fields, (_key, value) => (typeof value === "string" ? this.clean(value) : value));
    process.stdout.write(line + "\n");
  }

  info(text: string): void {
    if (this.mode.quiet) return;
    this.clearProgress();
    process.stderr.write(this.clean(text) + "\n");
  }

  /** A live line on a TTY; otherwise a plain line when the cause changes or every 5 s. */
  progress(text: string, cause: string): void {
    if (this.mode.quiet) return;
    if (this.mode.tty) {
      process.stderr.write("\r\x1b[2K" + this.clean(text));
      this.progressShown = true;
    } else if (cause !== this.lastCause || Date.now() - this.lastPlainAt >= 5_000) {
      process.stderr.write(this.clean(text) + "\n");
      this.lastPlainAt = Date.now();
    }
    this.lastCause = cause;
  }

  error(text: string, fix?: string): void {
    this.clearProgress();
    process.stderr.write(this.paint(31, "error: ") + this.clean(text) + "\n");
    if (fix) process.stderr.write(this.paint(33, "hint: ") + this.clean(fix) + "\n");
  }

  result(text: string): void {
    this.clearProgress();
    if (!this.mode.json && !this.mode.quiet) process.stdout.write(this.clean(text) + "\n");
  }
}

// ---------------------------------------------------------------------------------------
// CLI: flags, main() and its phases, the exit code for each way a run ends, the usage text.

/** Where both scripts look for connection settings, first found first: for their usage texts. */
export const CONNECTION_SOURCES = `--url, DATABASE_URL, PG* variables,
POSTGRES_* variables, ~/.pgpass, ${DEFAULTS.host}:${DEFAULTS.port} (a connection string without a host:
the local Unix socket, ${DEFAULTS.socketDirs.join(" or ")})`;

/** The flags both scripts take, meaning the same in each; test-db-connectivity.ts adds its own. */
export const COMMON_FLAGS = {
  url: { type: "string" },
  schema: { type: "string" },
  migrations: { type: "string" },
  "migrations-format": { type: "string" },
  "history-table": { type: "string" },
  "ledger-table": { type: "string" },
  timeout: { type: "string" },
  "connect-timeout": { type: "string" },
  "command-timeout": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

const FLAGS = {
  ...COMMON_FLAGS,
  "direct-url": { type: "string" },
  "wait-only": { type: "boolean" },
  check: { type: "boolean" },
  "wait-for-schema": { type: "boolean" },
  "create-database": { type: "boolean" },
  "dry-run": { type: "boolean" },
  "lock-timeout": { type: "string" },
  "max-retries": { type: "string" },
} as const;

/** Handle each of the signals `names` with `handler` until the returned undo runs. */
function onSignals<S extends NodeJS.Signals>(names: readonly S[], handler: (name: S) => void): () => void {
  const listeners = names.map((name) => [name, () => handler(name)] as const);
  for (const [name, listener] of listeners) process.on(name, listener);
  return () => listeners.forEach(([name, listener]) => process.off(name, listener));
}

/** Turn SIGINT/SIGTERM into an abort, so every wait ends at once and clients are closed. */
export function abortOnSignals(controller: AbortController): () => void {
  return onSignals(["SIGINT", "SIGTERM"], (name) => controller.abort(kitError(name, `interrupted by ${name}`)));
}

/** The exit code for a run ended by a signal (abortOnSignals' abort reason). */
export function signalExit(reason: unknown): number {
  return errorCode(reason) === "SIGINT" ? EXIT.sigint : EXIT.sigterm;
}

/** A configuration error: one line and its fix, with every URL the user gave hidden (the password may sit in a malformed one). */
export function reportConfigError(reporter: Reporter, error: unknown, urls: (string | undefined)[]): void {
  for (const url of urls) reporter.addSecret(url);
  reporter.error(error instanceof ConfigError ? error.message : explain(error), error instanceof ConfigError ? error.fix : "see --help");
}

/**
 * parseArgs calls `--timeout -1` "ambiguous" (a value that looks like a flag); joined as
 * `--timeout=-1` the value reaches its own check, whose message names the rule and the fix.
 */
function withNegativeValues(argv: string[], flags: ParseArgsOptionsConfig): string[] {
  const takesValue = (arg: string) => arg.startsWith("--") && flags[arg.slice(2)]?.type === "string";
  return argv.flatMap((arg, index) => {
    if (index > 0 && takesValue(argv[index - 1]!) && /^-\d/.test(arg)) return [];
    const next = argv[index + 1];
    return takesValue(arg) && next !== undefined && /^-\d/.test(next) ? [`${arg}=${next}`] : [arg];
  });
}

/**
 * Parse flags strictly. Returns the values, or the exit code to return at once: 0 after
 * printing `usage` for --help, 2 after a one-line error for a bad flag.
 */
export function parseFlags<Flags extends ParseArgsOptionsConfig>(argv: string[], flags: Flags, usage: string) {
  try {
    const { values } = parseArgs({ args: withNegativeValues(argv, flags), options: flags, strict: true, allowPositionals: false });
    if ((values as { help?: boolean }).help) {
      process.stdout.write(usage);
      return { exitCode: EXIT.ok };
    }
    return { values };
  } catch (error) {
    process.stderr.write(`error: ${redact(firstLine(error))}\nhint: see --help\n`);
    return { exitCode: EXIT.usage };
  }
}

/**
 * The CLI: the kit's run, then, once it succeeded, `-- COMMAND` in its place (the kit holds no
 * connection by then). When the run fails the command never starts and the kit's exit code stands.
 */
async function main(argv: string[], env: Env = process.env): Promise<number> {
  const at = argv.indexOf("--");
  const [kitArgs, command] = at === -1 ? [argv, undefined] : [argv.slice(0, at), argv.slice(at + 1)];
  if (command?.length === 0) {
    process.stderr.write("error: -- must be followed by a command to start once the run succeeds\nhint: init-database.ts [options] -- COMMAND [ARGS...]\n");
    return EXIT.usage;
  }
  const exitCode = await initDatabase(kitArgs, env);
  const helped = kitArgs.some((arg) => arg === "--help" || arg === "-h");
  return exitCode === EXIT.ok && command && !helped ? await runCommand(command, env) : exitCode;
}

/** The signals a supervisor sends to stop a container or a job, passed on to `-- COMMAND`. */
const FORWARDED_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * Start COMMAND with the kit's environment, stdin, stdout and stderr, forward FORWARDED_SIGNALS
 * to it, and return its exit status (128+N when signal N ended it). One that cannot be started
 * is one line and exit 127 (not found) or 126 (found, not executable), as POSIX shells do.
 */
async function runCommand(command: string[], env: Env): Promise<number> {
  let child: Bun.Subprocess | undefined;
  // Listening before the spawn: a signal between the two would otherwise end the kit by its default action and leave the command running.
  const stopForwarding = onSignals(FORWARDED_SIGNALS, (name) => child?.kill(name));
  try {
    child = Bun.spawn(command, { env, stdio: ["inherit", "inherit", "inherit"] });
  } catch (error) {
    stopForwarding();
    const notFound = errorCode(error) === "ENOENT";
    const why = notFound ? (command[0]!.includes("/") ? "no such file" : "not found on PATH") : `not executable (${errorCode(error)})`;
    process.stderr.write(`error: cannot start ${command[0]}: ${why}\nhint: ${notFound ? "give the full path, or fix PATH in the container" : "chmod +x it, or start it through its interpreter (-- sh script.sh)"}\n`);
    return notFound ? EXIT.commandNotFound : EXIT.commandNotExecutable;
  }
  try {
    const code = await child.exited;
    const signal = child.signalCode as NodeJS.Signals | null;
    return signal ? 128 + osConstants.signals[signal] : code;
  } finally {
    stopForwarding();
  }
}

/** The kit's own run (everything before `--`): its exit code. */
async function initDatabase(argv: string[], env: Env): Promise<number> {
  const startedAt = Date.now();
  const parsed = parseFlags(argv, FLAGS, USAGE);
  if (!parsed.values) return parsed.exitCode;
  const { values } = parsed;
  const color = Boolean(process.stderr.isTTY) && !env.NO_COLOR;
  const reporter = new Reporter({ json: Boolean(values.json), quiet: Boolean(values.quiet), tty: Boolean(process.stderr.isTTY), color });
  const summary = (status: string, exitCode: number, extra: Record<string, unknown> = {}) => {
    reporter.event({ event: "summary", ok: exitCode === 0, status, exit_code: exitCode, elapsed_ms: Date.now() - startedAt, ...extra });
    return exitCode;
  };

  let plan: { config: Config; steps: SchemaStep[] };
  try {
    plan = resolvePlan(values, env);
  } catch (error) {
    // A schema file the kit cannot run as it stands (a psql meta-command, COPY without its data): exit 1 before anything runs.
    if (error instanceof SchemaError) {
      reporter.error(`schema refused: ${error.message}`, schemaHint(error));
      return summary("schema failed", EXIT.schemaFailed, { code: error.code, message: error.message });
    }
    reportConfigError(reporter, error, [values.url, env.DATABASE_URL, values["direct-url"], env.DIRECT_URL]);
    return summary("usage error", EXIT.usage, { code: errorCode(error), message: firstLine(error) });
  }
  const { config, steps } = plan;
  secretsOf(config).forEach((secret) => reporter.addSecret(secret));
  reportLayout(reporter, steps, config, values);
  [...config.notices, ...(config.direct?.notices ?? [])].forEach((notice) => reporter.info(`warning: ${notice}`));

  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  const restoreErrorHandling = absorbDroppedClientErrors();
  const run: CliRun = {
    config, steps, reporter, summary,
    target: describeTarget(config),
    deadline: Deadline.forRun({ timeoutMs: config.timeoutMs, commandTimeoutMs: config.commandTimeoutMs, signal: controller.signal, startedAt }),
    dryRun: Boolean(values["dry-run"]),
    onAttempt: ({ attempt, elapsedMs, error, errorClass, delayMs }) => {
      reporter.event({ event: "attempt", attempt, elapsed_ms: elapsedMs, code: errorCode(error), class: errorClass, delay_ms: delayMs, message: explain(error) });
      reporter.progress(`attempt ${attempt}, ${formatMs(elapsedMs)}: ${explain(error)}`, errorCode(error));
    },
  };
  const session: CliSession = { sql: undefined };
  const readOnly = values["wait-only"] ? "wait-only" : values.check ? "check" : values["wait-for-schema"] ? "wait-for-schema" : undefined;
  try {
    reporter.info(`waiting for ${run.target} (timeout ${formatMs(config.timeoutMs)})`);
    if (readOnly && config.createDatabase) reporter.info(`--create-database ignored: --${readOnly} only ${readOnly === "wait-only" ? "waits" : "reads"} and changes nothing`);
    if (readOnly === "wait-only") return await waitPhase(run, session);
    if (readOnly) return await schemaCheckPhase(run, session, readOnly === "wait-for-schema");
    const dryRunEnded = config.createDatabase ? await createDatabasePhase(run) : undefined;
    return dryRunEnded ?? await schemaPhase(run, session);
  } catch (error) {
    const end = exitFor(error, run);
    reporter.error(end.message, end.fix);
    return summary(end.status, end.exitCode, end.fields);
  } finally {
    removeSignalHandlers();
    restoreErrorHandling();
    await closeClient(session.sql);
  }
}

type FlagValues = NonNullable<ReturnType<typeof parseFlags<typeof FLAGS>>["values"]>;

/** What every phase of one CLI run reads. */
interface CliRun {
  config: Config;
  steps: SchemaStep[];
  reporter: Reporter;
  /** describeTarget(config), for messages. */
  target: string;
  /** The run's one deadline (--timeout from the start; SIGINT and SIGTERM end it). */
  deadline: Deadline;
  dryRun: boolean;
  onAttempt: (attempt: Attempt) => void;
  /** Report the summary event; returns its exit code. */
  summary: (status: string, exitCode: number, extra?: Record<string, unknown>) => number;
}

/** The client main closes whatever happens. */
type CliSession = { sql: Sql | undefined };

/** The configuration and the schema steps the flags ask for (none with --wait-only); throws ConfigError or SchemaError. */
function resolvePlan(values: FlagValues, env: Env): { config: Config; steps: SchemaStep[] } {
  // Options are the flags by name (--connect-timeout is connectTimeout); parseConfig reads only its own.
  const options: Options = Object.fromEntries(Object.entries(values).map(([flag, value]) => [flag.replace(/-(\w)/g, (_, c: string) => c.toUpperCase()), value]));
  const config = parseConfig({
    ...options,
    // Applying the schema needs a writable primary; waiting, and reading the ledger (--check,
    // --wait-for-schema), do not: a standby's replicated ledger answers as well.
    writable: !(values["wait-only"] || values.check || values["wait-for-schema"]),
  }, env);
  const modes = (["wait-only", "check", "wait-for-schema", "dry-run"] as const).filter((flag) => values[flag]);
  if (modes.length > 1) throw new ConfigError(`--${modes[0]} and --${modes[1]} exclude each other; choose one`);
  if (values["wait-only"]) return { config, steps: [] };
  const steps = schemaPlan({ schema: values.schema, migrations: values.migrations, format: values["migrations-format"], historyTable: values["history-table"] });
  ledgerBesideTool(config, steps, values["ledger-table"]);
  return { config, steps };
}

/** Wait until the target is ready and report it; the client stays in `session` for main to close. */
async function becomeReady(run: CliRun, session: CliSession): Promise<Ready> {
  const ready = await waitUntilReady(run.config, { deadline: run.deadline, onAttempt: run.onAttempt });
  session.sql = ready.sql;
  run.reporter.event({ event: "ready", attempts: ready.attempts, elapsed_ms: ready.elapsedMs, host: ready.target.host, port: ready.target.port, server_version: ready.serverVersion, pooled: ready.pooled });
  return ready;
}

/** --wait-only: ready is the whole job. */
async function waitPhase(run: CliRun, session: CliSession): Promise<number> {
  const ready = await becomeReady(run, session);
  run.reporter.result(`ready: ${run.target} (PostgreSQL ${ready.serverVersion}${ready.pooled ? " through a pooler" : ""}) after ${attemptCount(ready.attempts)} in ${formatMs(ready.elapsedMs)}`);
  return run.summary("ready", EXIT.ok, { attempts: ready.attempts });
}

/** --create-database: make the target database if missing. An exit code ends the run (a dry run); undefined goes on to the schema. */
async function createDatabasePhase(run: CliRun): Promise<number | undefined> {
  const { config, reporter, deadline, onAttempt, dryRun } = run;
  const outcome = await ensureDatabase(config.direct ?? config, { deadline, onAttempt, maxRetries: config.maxRetries, dryRun });
  reporter.event({ event: "database", name: config.database, status: outcome });
  if (outcome === "created") reporter.info(`created database ${config.database}`);
  if (outcome !== "would create") return undefined;
  const pending = run.steps.map((step) => step.name);
  reporter.result(`dry run: ${run.target}: would create database ${config.database}, then apply ${pending.join(", ")}`);
  return run.summary("dry run", EXIT.ok, { pending, create_database: true });
}

/**
 * --check and --wait-for-schema: compare what the ledger records (read-only, readSchemaState)
 * with the plan. --check answers once. --wait-for-schema asks again on the same session through
 * retry, a SCHEMA_PENDING failure while a step is pending (class "starting": every
 * DEFAULTS.pollMs, the last read at the deadline), until every step is recorded or the deadline
 * (exit 3 naming what is pending). A lost session is dropped and the next attempt waits for the
 * server again. A step whose checksum differs ends either at once (exit 1).
 */
async function schemaCheckPhase(run: CliRun, session: CliSession, wait: boolean): Promise<number> {
  const { config, steps, reporter, deadline } = run;
  let pendingState: SchemaState | undefined;
  let shown = "";
  try {
    return await retry(async () => {
      if (!session.sql) await becomeReady(run, session);
      const state = await readSchemaState(session.sql!, steps, config, deadline).catch(async (error) => {
        // A session the read failed on is dropped: the next attempt waits for the server again.
        await closeClient(session.sql);
        session.sql = undefined;
        throw error;
      });
      if (!wait || state.changed.length > 0 || state.pending.length === 0) return reportSchemaState(run, state, false);
      pendingState = state;
      throw kitError("SCHEMA_PENDING", `${state.pending.length} of ${steps.length} steps pending`);
    }, {
      deadline,
      classify: (error) => (errorCode(error) === "SCHEMA_PENDING" ? "starting" : classifyError(error)),
      onRetry: ({ error, delayMs }) => {
        if (delayMs === 0) return;
        if (errorCode(error) !== "SCHEMA_PENDING") return reporter.info(`schema check interrupted (${explain(error)}); reconnecting`);
        const pending = pendingState!.pending.join(", ");
        if (pending !== shown) reporter.event({ event: "schema_pending", elapsed_ms: deadline.elapsedMs(), pending: pendingState!.pending });
        shown = pending;
        reporter.progress(`waiting for the schema, ${formatMs(deadline.elapsedMs())}: ${pendingState!.pending.length} of ${steps.length} steps pending (${pending})`, pending);
      },
    });
  } catch (error) {
    if (error instanceof NotReadyError && errorCode(error.lastError) === "SCHEMA_PENDING") return reportSchemaState(run, pendingState!, true);
    throw error;
  }
}

/** The schema's state as the result: at head (0), else each changed and pending step on its own line (1; 3 at the deadline). */
function reportSchemaState(run: CliRun, state: SchemaState, atDeadline: boolean): number {
  const { reporter, target } = run;
  const lists = { recorded: state.recorded, pending: state.pending, changed: state.changed };
  const total = run.steps.length;
  if (state.changed.length === 0 && state.pending.length === 0) {
    reporter.result(`schema at head: ${target}: ${total === 1 ? "its one step" : `all ${total} steps`} recorded`);
    return run.summary("at head", EXIT.ok, lists);
  }
  for (const step of state.changed) reporter.result(`changed: ${step.name} (recorded with checksum ${step.recorded.slice(0, 12)}…, the file has ${step.file.slice(0, 12)}…)`);
  for (const name of state.pending) reporter.result(`pending: ${name}`);
  if (state.changed.length > 0) {
    reporter.error(
      `${target}: ${state.changed.length === 1 ? "1 recorded step differs from its file" : `${state.changed.length} recorded steps differ from their files`}: ${state.changed.map((step) => step.name).join(", ")}`,
      "the database was migrated from other files than these: deploy the files that were applied (the same release as the migration Job), or put the change in a new migration",
    );
    return run.summary("schema changed", EXIT.schemaFailed, lists);
  }
  const pending = `${state.pending.length} of ${total} step${total === 1 ? "" : "s"} pending: ${state.pending.join(", ")}`;
  if (atDeadline) {
    reporter.error(`${target}: the schema is still not at head after ${formatMs(run.deadline.elapsedMs())}; ${pending}`, "is the migration Job (or db-init) running, and what do its logs say? or raise --timeout");
    return run.summary("not ready", EXIT.notReady, lists);
  }
  reporter.error(`${target}: the schema is not at head; ${pending}`, "apply them with the same --migrations or --schema without --check (the migration Job), or wait for that with --wait-for-schema");
  return run.summary("pending", EXIT.schemaFailed, lists);
}

/**
 * Wait, then apply the schema. A retryable failure while applying it (a restart, a terminated
 * session) drops the client and starts over from waiting: each step is one transaction, so
 * redoing it is safe. Waiting throws only what retrying cannot help (a NotReadyError, a refused
 * login), so this retry redoes only the schema work; what that work throws and retrying cannot
 * help becomes a StepFailure (exit 1), a NotReadyError (a lock never granted) staying as it is.
 * Then the result line: applied, up to date, or (dry run) pending.
 */
async function schemaPhase(run: CliRun, session: CliSession): Promise<number> {
  const { config, steps, reporter, deadline, dryRun } = run;
  const results = await retry(async () => {
    const ready = await becomeReady(run, session);
    reporter.info(`ready after ${attemptCount(ready.attempts)} in ${formatMs(ready.elapsedMs)}; ${run.dryRun ? "checking what the schema would apply" : "applying the schema"}`);
    if (config.direct) {
      // Schema work past the pooler: a transaction pooler cannot keep a session lock or a session.
      await closeClient(session.sql);
      session.sql = undefined;
      reporter.info(`schema work goes directly to ${describeTarget(config.direct)}`);
      session.sql = (await waitUntilReady(config.direct, { deadline: run.deadline, onAttempt: run.onAttempt, maxRetries: config.maxRetries })).sql;
    }
    try {
      assertOwnSession(steps, config, ready.pooled);
      await guardBuiltInSchema(session.sql!, steps, config, deadline);
      return await applyMigrations(session.sql!, steps, config, {
        deadline,
        dryRun,
        onWait: ({ step, attempt, delayMs, blockers }) => {
          reporter.event({ event: "lock_wait", step, attempt, delay_ms: delayMs, blockers });
          reporter.info(`${step}: lock not granted within --lock-timeout (attempt ${attempt}); rolled back, retrying in ${formatMs(delayMs)}${blockers.length ? `; blocked by ${blockers.join("; ")}` : ""}`);
        },
        onRebuild: ({ step, index, location }) => {
          reporter.event({ event: "index_rebuild", step, index, where: location });
          reporter.info(`${step}: dropping INVALID index ${index}, left by an earlier try, to build it again (${location})`);
        },
        onStep: (result) => {
          reporter.event({ event: "schema", step: result.name, status: result.status, ms: result.ms });
          reporter.info(`${result.status}: ${result.name}${dryRun ? "" : ` (${formatMs(result.ms)})`}`);
        },
      });
    } catch (error) {
      throw error instanceof StepFailure || error instanceof NotReadyError || classifyError(error) !== "fatal" ? error : new StepFailure(error);
    }
  }, {
    deadline,
    delay: (_class, _busy, remainingMs) => (remainingMs > 0 ? 0 : undefined),
    gaveUp: () => "went away while applying the schema and the deadline has passed",
    pause: async () => {
      await closeClient(session.sql);
      session.sql = undefined;
      return undefined;
    },
    onRetry: ({ error, delayMs }) => {
      if (delayMs === 0 && deadline.remainingMs() > 0) reporter.info(`schema interrupted (${explain(error)}); reconnecting`);
    },
  });
  if (dryRun) {
    const pending = results.filter((result) => result.status === "pending").map((result) => result.name);
    reporter.result(`dry run: ${run.target}: ${pending.length === 0 ? "nothing to apply" : `would apply ${pending.join(", ")}`}`);
    return run.summary("dry run", EXIT.ok, { pending });
  }
  const appliedCount = results.filter((result) => result.status === "applied").length;
  reporter.result(`done: ${run.target}: ${appliedCount === 0 ? "schema already up to date" : `applied ${appliedCount} of ${results.length} schema step${results.length === 1 ? "" : "s"}`} in ${formatMs(deadline.elapsedMs())}`);
  return run.summary("done", EXIT.ok, { applied: appliedCount, steps: results.length });
}

/** The one line (and event) that says which tool's layout --migrations is read in, and where what it applies is recorded. */
function reportLayout(reporter: Reporter, steps: SchemaStep[], config: Config, values: FlagValues): void {
  const layout = steps[0]?.migration?.layout;
  if (!layout) return;
  const history = layout.history;
  const recorded = history?.write ? `${history.table}, as ${layout.name} records them` : config.ledgerTable;
  reporter.info(`migrations: ${values.migrations} in ${layout.name}'s layout (${values["migrations-format"] ? "--migrations-format" : layout.recognisedBy}), ${steps.length} migration${steps.length === 1 ? "" : "s"}; ${history ? `reads ${history.table}, ` : ""}records in ${recorded}`);
  reporter.event({ event: "layout", layout: layout.name, detected: values["migrations-format"] === undefined, migrations: steps.length, history: history?.table ?? null, recorded_in: history?.write ? history.table : config.ledgerTable });
}

/** "1 attempt", "3 attempts". */
function attemptCount(count: number): string {
  return `${count} attempt${count === 1 ? "" : "s"}`;
}

/**
 * How a run that threw ends, by the error's type: the exit code, the summary's status and
 * fields, the error line and its hint. The one place exit codes 1, 3, 4, 130 and 143 are chosen
 * after the configuration was read: a signal (130, 143), a NotReadyError (3, also a server that
 * went away while applying the schema until the deadline), a SchemaError or StepFailure (1: a
 * history or ledger the kit cannot use, which --check reads before any schema work, or what the
 * schema work threw), anything else a failure to connect (4).
 */
function exitFor(error: unknown, run: Pick<CliRun, "config" | "target" | "deadline">): {
  exitCode: number; status: string; message: string; fix?: string; fields?: Record<string, unknown>;
} {
  const { config, target } = run;
  const { signal } = run.deadline;
  if (signal.aborted) {
    return { exitCode: signalExit(signal.reason), status: "interrupted", message: `interrupted by ${errorCode(signal.reason)}; connections closed, nothing half-applied` };
  }
  if (error instanceof NotReadyError) {
    return {
      exitCode: EXIT.notReady, status: "not ready", message: `${target} ${explain(error)}`, fix: hint(error, config),
      fields: { attempts: error.attempts, code: errorCode(error.lastError), message: explain(error) },
    };
  }
  const fields = { code: errorCode(error), message: explain(error) };
  if (error instanceof StepFailure || error instanceof SchemaError) {
    const { step, location } = error instanceof StepFailure ? error : { step: undefined, location: undefined };
    return {
      exitCode: EXIT.schemaFailed, status: "schema failed", message: `schema failed${step ? ` in ${step}` : ""}: ${explain(error)}${schemaDetails(error)}`, fix: schemaHint(error),
      fields: { code: fields.code, step, message: fields.message, where: location },
    };
  }
  return { exitCode: EXIT.fatal, status: "fatal", message: `cannot connect to ${target}: ${explain(error)}`, fix: hint(error, config), fields };
}

/** The server's detail and context, and what a no-transaction step left behind: one indented line each. */
function schemaDetails(error: unknown): string {
  const { detail, context } = serverFields(error);
  const notes = error instanceof StepFailure ? error.notes : [];
  const lines = [detail && `detail: ${detail}`, context && `where: ${context.replaceAll("\n", " <- ")}`, ...notes].filter(Boolean);
  return lines.map((line) => `\n  ${line}`).join("");
}

/** The server's own hint first, then the kit's advice for the case. */
function schemaHint(error: unknown): string {
  const fix = error instanceof StepFailure || error instanceof SchemaError ? error.fix : undefined;
  const serverHint = serverFields(error).hint;
  const code = errorCode(error);
  const advice = fix ??
    (code === "57014" ? "a statement ran past --command-timeout: is another session holding a lock? raise --command-timeout or end that session"
    : code === "LOCK_WAIT" ? "is another session holding a lock? a replica applying a long step needs a larger --command-timeout; else end that session"
    : code === "42501" ? "the user lacks a privilege the schema needs (CREATE on the schema?)"
    : code === "26000" ? "a prepared statement vanished between transactions: a transaction pooler is in front; run schema work directly (--direct-url / DIRECT_URL)"
    : "fix the SQL; nothing of this step was applied (it ran in one transaction)");
  return serverHint ? `${serverHint} (the server's hint); ${advice}` : advice;
}

const USAGE = `Wait until PostgreSQL accepts queries, then apply the schema exactly once.

Usage: bun run init-database.ts [options] [-- COMMAND [ARGS...]]

Connection (first found wins, as libpq reads it): ${CONNECTION_SOURCES}
  --url URL               postgres://user:pass@host:port/db?keyword=value (libpq's URI; several
                          hosts: h1:5432,h2:5432; socket: postgres://user@/db?host=/dir),
                          or libpq's "host=h port=5432 dbname=db" form;
                          ?pgbouncer=true says a transaction pooler is in front
  --direct-url URL        schema work goes here, past the pooler (else DIRECT_URL); waiting
                          and checking still go through --url
  --create-database       create the database if it does not exist (from the "postgres" or
                          "template1" database; with --dry-run only say so; ignored with --wait-only)

What to do:
  --wait-only             only wait until an authenticated query succeeds
  --schema FILE           apply this SQL file instead of the built-in Flow-Backend schema
  --migrations DIR        apply DIR's migrations, each once: plain *.sql in name order, recorded
                          in the ledger, or the folder of golang-migrate, dbmate, Flyway, Prisma,
                          Drizzle, Diesel, goose or the Supabase CLI, as that tool applies it
                          (never a down or undo part; its history counts as applied)
  --migrations-format NAME  read DIR in this layout instead of recognising it: ${LAYOUT_NAMES.join(", ")}
  --history-table NAME    the tool's history table when the project renamed it (dbmate's
                          --migrations-table, golang-migrate's x-migrations-table, ...)
  --ledger-table NAME     the ledger table (default ${DEFAULTS.ledgerTable})
  --dry-run               list the steps that would be applied, apply nothing
  --check                 read-only (no DDL, no lock, no ledger made): exit 0 when every step
                          is recorded with its checksum, else 1 naming each pending or changed one
  --wait-for-schema       --check until it holds (another process applies the schema), up to
                          --timeout: exit 3 then naming what is pending, 1 at once if a step changed
  -- COMMAND [ARGS...]    once the run succeeded, start COMMAND in the kit's place (stdio and
                          environment inherited, SIGINT/SIGTERM/SIGHUP forwarded) and exit with
                          its status (128+N when signal N ended it); never started on failure

Timeouts (seconds):
  --timeout S             overall deadline for becoming ready (default ${DEFAULTS.timeoutMs / 1000})
  --connect-timeout S     per connection attempt (default ${DEFAULTS.connectTimeoutMs / 1000})
  --command-timeout S     statement_timeout of the kit's transactions (SET LOCAL), 0 for none (default ${DEFAULTS.commandTimeoutMs / 1000})
  --lock-timeout S        lock_timeout of every schema step, 0 for none; a step that hits it is
                          rolled back and retried until --timeout (default ${DEFAULTS.lockTimeoutMs / 1000})
  --max-retries N         give up after N attempts even before the deadline

Output:
  --json                  NDJSON events on stdout, ending in a summary object
  -q, --quiet             errors only
  -h, --help              this text

Exit codes: 0 ready/done, 1 schema failed (or, with --check, not at head), 2 usage, 3 not ready
            in time, 4 fatal connection error, 130/143 interrupted; with -- COMMAND: its status,
            or 127 (not found) / 126 (not executable) when it cannot be started.
`;

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
