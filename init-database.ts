#!/usr/bin/env bun
/**
 * init-database.ts: wait until PostgreSQL really accepts queries, then create the schema
 * exactly once. Made for service start-up in Docker Compose, Kubernetes and CI, where the
 * database is often not up yet ("connection refused", "the database system is starting up").
 *
 * Usage:
 *   bun run init-database.ts [--url URL] [--wait-only] [--schema FILE | --migrations DIR]
 *                            [--ledger-table NAME] [--dry-run] [--create-database]
 *                            [--timeout S] [--connect-timeout S] [--command-timeout S]
 *                            [--max-retries N] [--json] [--quiet] [--help]
 *
 * Environment (first found wins, field by field):
 *   --url > DATABASE_URL > PGHOST PGPORT PGUSER PGPASSWORD PGPASSWORD_FILE PGDATABASE
 *   PGSSLMODE PGAPPNAME PGCONNECT_TIMEOUT PGTARGETSESSIONATTRS > POSTGRES_HOST POSTGRES_PORT
 *   POSTGRES_USER POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE POSTGRES_DB > localhost:5432.
 *   NO_COLOR turns colour off.
 *
 * Exit codes: 0 ready/done, 1 schema or migration failed, 2 usage or configuration error,
 *   3 not ready before the deadline (or retries exhausted), 4 fatal connection error
 *   (authentication, missing database, permission, TLS), 130/143 on SIGINT/SIGTERM.
 *
 * Library use: `import { connect } from "./init-database.ts"` returns a ready postgres.js
 * client made with the same configuration, timeouts and retries:
 *   const sql = await connect({ timeout: 30 });
 *
 * Example: DATABASE_URL=postgres://app:secret@db:5432/app bun run init-database.ts --timeout 60
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { basename, join, resolve } from "node:path";
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
  sigint: 130,
  sigterm: 143,
} as const;

/** Every default, in one place. Times in milliseconds. */
export const DEFAULTS = {
  host: "localhost",
  port: 5432,
  user: "postgres",
  sslmode: "prefer" as SslMode,
  applicationName: "init-database",
  targetSessionAttrs: "any" as TargetSessionAttrs,
  timeoutMs: 120_000,
  connectTimeoutMs: 10_000,
  commandTimeoutMs: 60_000,
  ledgerTable: "schema_migrations",
  poolMax: 10,
  keepAliveSeconds: 30,
  /** Poll interval while nothing listens or the server is starting: 20 attempts a second at most. */
  pollMs: 50,
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
const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] as const;
const SESSION_ATTRS = ["any", "read-write", "primary", "read-only", "standby", "prefer-standby"] as const;
const URL_PARAMETERS = ["sslmode", "application_name", "connect_timeout", "target_session_attrs"] as const;
export type SslMode = (typeof SSL_MODES)[number];
export type TargetSessionAttrs = (typeof SESSION_ATTRS)[number];

/** The built-in Flow-Backend schema; `--schema FILE` or `--migrations DIR` replace it. */
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
// Configuration

/** What a caller may set; the CLI's flags map onto it one to one. Times in seconds. */
export interface Options {
  url?: string;
  timeout?: string | number;
  connectTimeout?: string | number;
  commandTimeout?: string | number;
  maxRetries?: string | number;
  applicationName?: string;
  createDatabase?: boolean;
  ledgerTable?: string;
}

export interface Target {
  host: string;
  port: number;
}

export interface Config {
  targets: Target[];
  user: string;
  password: string | undefined;
  database: string;
  sslmode: SslMode;
  applicationName: string;
  targetSessionAttrs: TargetSessionAttrs;
  timeoutMs: number;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  maxRetries: number | undefined;
  createDatabase: boolean;
  ledgerTable: string;
}

type Env = Record<string, string | undefined>;
type ReadFile = (path: string) => string;

/** A usage or configuration error: exit 2, one line, never the password. */
export class ConfigError extends Error {
  readonly code: KitErrorCode = "EINVALIDCONFIG";
  /** `fix`: the hint line, when there is something more precise to say than "see --help". */
  constructor(message: string, readonly fix = "see --help") {
    super(message);
  }
}

interface UrlParts {
  hosts?: string[];
  ports?: (number | undefined)[];
  user?: string;
  password?: string;
  database?: string;
  params: Partial<Record<(typeof URL_PARAMETERS)[number], string>>;
}

function decode(part: string, what: string, source: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new ConfigError(`${source}: the ${what} has a malformed %-escape; percent-encode special characters (e.g. @ as %40)`);
  }
}

function parsePort(text: string, source: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || port < 1 || port > 65535) {
    throw new ConfigError(`${source}: port "${text}" is not a number from 1 to 65535`);
  }
  return port;
}

/**
 * Parse `postgres://user:password@host1:port1,host2:port2/db?param=value`, libpq style.
 * The last `@` ends the credentials, so an unescaped `@` in a password still works.
 */
export function parseUrl(url: string, source: string): UrlParts {
  const scheme = /^postgres(?:ql)?:\/\//i.exec(url);
  if (!scheme) throw new ConfigError(`${source}: not a postgres:// or postgresql:// URL`);
  let rest = url.slice(scheme[0].length);
  const queryAt = rest.indexOf("?");
  const query = queryAt === -1 ? "" : rest.slice(queryAt + 1);
  if (queryAt !== -1) rest = rest.slice(0, queryAt);
  const at = rest.lastIndexOf("@");
  const credentials = at === -1 ? undefined : rest.slice(0, at);
  rest = rest.slice(at + 1);
  const slash = rest.indexOf("/");
  const hostList = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? "" : rest.slice(slash + 1);

  const parts: UrlParts = { params: {} };
  if (credentials !== undefined) {
    const colon = credentials.indexOf(":");
    const user = colon === -1 ? credentials : credentials.slice(0, colon);
    if (user) parts.user = decode(user, "user name", source);
    if (colon !== -1) parts.password = decode(credentials.slice(colon + 1), "password", source);
  }
  if (hostList) {
    const entries = hostList.split(",").map((entry) => {
      const match = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(entry)!;
      const host = decode(match[1]!.replace(/^\[(.*)\]$/, "$1"), "host", source);
      if (!host && match[2] === undefined) throw new ConfigError(`${source}: empty host in the host list`);
      return { host, port: match[2] === undefined ? undefined : parsePort(match[2], source) };
    });
    if (entries.some((entry) => entry.host)) parts.hosts = entries.map((entry) => entry.host || DEFAULTS.host);
    parts.ports = entries.map((entry) => entry.port);
  }
  if (path) parts.database = decode(path, "database name", source);
  for (const [key, value] of new URLSearchParams(query)) {
    if (!(URL_PARAMETERS as readonly string[]).includes(key)) {
      throw new ConfigError(`${source}: unsupported URL parameter "${key}"; supported: ${URL_PARAMETERS.join(", ")}`);
    }
    parts.params[key as (typeof URL_PARAMETERS)[number]] = value;
  }
  return parts;
}

/** Read a Docker-style secret file, dropping one trailing newline. */
function readSecret(variable: string, path: string, readFile: ReadFile): string {
  try {
    return readFile(path).replace(/\r?\n$/, "");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "unreadable";
    throw new ConfigError(`${variable}=${path} cannot be read (${code}); fix the path or its permissions, or unset ${variable}`);
  }
}

/** A password from VAR or VAR_FILE; setting both is ambiguous, as in the postgres image. */
function passwordFrom(variable: string, env: Env, readFile: ReadFile): string | undefined {
  const file = env[`${variable}_FILE`];
  if (env[variable] !== undefined && file) {
    throw new ConfigError(`both ${variable} and ${variable}_FILE are set; unset one of them`);
  }
  return file ? readSecret(`${variable}_FILE`, file, readFile) : env[variable];
}

function seconds(name: string, value: string | number | undefined, { allowZero = false } = {}): number | undefined {
  if (value === undefined || value === "") return undefined;
  const number = Number(value);
  if (!Number.isFinite(number) || number < 0 || (number === 0 && !allowZero)) {
    throw new ConfigError(`${name} "${value}" must be a ${allowZero ? "non-negative" : "positive"} number of seconds`);
  }
  return Math.round(number * 1000);
}

function oneOf<T extends string>(name: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined || value === "") return undefined;
  if (!(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(`${name} "${value}" is not one of ${allowed.join(", ")}`);
  }
  return value as T;
}

/** The first value that is set; the order of the arguments is the precedence. */
function first<T>(...candidates: (T | undefined)[]): T | undefined {
  return candidates.find((candidate) => candidate !== undefined && candidate !== "");
}

/**
 * Resolve the whole configuration once. Precedence, field by field:
 * options (flags) > the URL (`--url`, else DATABASE_URL) > libpq PG* variables >
 * the postgres image's POSTGRES_* variables > DEFAULTS.
 */
export function parseConfig(options: Options = {}, env: Env = process.env, readFile: ReadFile = (path) => readFileSync(path, "utf8")): Config {
  const urlSource = options.url !== undefined ? "--url" : "DATABASE_URL";
  const rawUrl = first(options.url, env.DATABASE_URL);
  const url: UrlParts = rawUrl ? parseUrl(rawUrl, urlSource) : { params: {} };

  const hosts = first(url.hosts, env.PGHOST?.split(","), env.POSTGRES_HOST?.split(",")) ?? [DEFAULTS.host];
  const fallbackPort = first(
    env.PGPORT ? parsePort(env.PGPORT, "PGPORT") : undefined,
    env.POSTGRES_PORT ? parsePort(env.POSTGRES_PORT, "POSTGRES_PORT") : undefined,
  ) ?? DEFAULTS.port;
  const targets = hosts.map((host, index) => ({ host, port: url.ports?.[index] ?? fallbackPort }));

  const user = first(url.user, env.PGUSER, env.POSTGRES_USER) ?? DEFAULTS.user;
  const password = first(url.password, passwordFrom("PGPASSWORD", env, readFile), passwordFrom("POSTGRES_PASSWORD", env, readFile));
  const database = first(url.database, env.PGDATABASE, env.POSTGRES_DB) ?? user;

  const config: Config = {
    targets,
    user,
    password,
    database,
    sslmode: oneOf("sslmode", first(url.params.sslmode, env.PGSSLMODE), SSL_MODES) ?? DEFAULTS.sslmode,
    applicationName: first(options.applicationName, url.params.application_name, env.PGAPPNAME) ?? DEFAULTS.applicationName,
    targetSessionAttrs:
      oneOf("target_session_attrs", first(url.params.target_session_attrs, env.PGTARGETSESSIONATTRS), SESSION_ATTRS) ??
      DEFAULTS.targetSessionAttrs,
    timeoutMs: seconds("--timeout", options.timeout) ?? DEFAULTS.timeoutMs,
    connectTimeoutMs:
      first(
        seconds("--connect-timeout", options.connectTimeout),
        seconds("connect_timeout", url.params.connect_timeout),
        seconds("PGCONNECT_TIMEOUT", env.PGCONNECT_TIMEOUT),
      ) ?? DEFAULTS.connectTimeoutMs,
    commandTimeoutMs: seconds("--command-timeout", options.commandTimeout, { allowZero: true }) ?? DEFAULTS.commandTimeoutMs,
    maxRetries: undefined,
    createDatabase: options.createDatabase ?? false,
    ledgerTable: options.ledgerTable ?? DEFAULTS.ledgerTable,
  };
  if (options.maxRetries !== undefined) {
    const retries = Number(options.maxRetries);
    if (!Number.isInteger(retries) || retries < 1) {
      throw new ConfigError(`--max-retries "${options.maxRetries}" must be a whole number of attempts, 1 or more`);
    }
    config.maxRetries = retries;
  }
  if (!/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/.test(config.ledgerTable)) {
    throw new ConfigError(`--ledger-table "${config.ledgerTable}" must be a plain table name, optionally schema-qualified`);
  }
  return config;
}

// ---------------------------------------------------------------------------------------
// Errors, retries, redaction

/**
 * Every error code the kit makes itself (the server's SQLSTATEs and the system's errno codes
 * come from elsewhere), each with what it means. Errors with these codes are made only by
 * `kitError` and the classes below, so this table is the whole list.
 */
export const KIT_ERRORS = {
  EINVALIDCONFIG: "a usage or configuration error (exit 2)",
  NOT_READY: "no host became ready before the deadline or the retry cap (exit 3)",
  SCHEMA_FAILED: "a schema step cannot be applied as it stands (exit 1)",
  MIGRATION_CHANGED: "an applied step's file changed since it was recorded (exit 1)",
  FOREIGN_TABLES: "the built-in schema was refused: the database holds other tables (exit 1)",
  CLIENT_DEADLINE: "the client gave up waiting for an answer; the client is dropped, not reused",
  CONNECTION_CLOSED: "the server closed the connection during start-up",
  POOLER_NO_SERVER: "the login was accepted but no session followed before the connect timeout: a pooler waiting for its PostgreSQL",
  WRONG_SESSION_ATTRS: "the session does not match target_session_attrs",
  NO_MAINTENANCE_DATABASE: "--create-database found no maintenance database to create the target from (exit 4)",
  SIGINT: "interrupted by SIGINT (exit 130)",
  SIGTERM: "interrupted by SIGTERM (exit 143)",
} as const;
export type KitErrorCode = keyof typeof KIT_ERRORS;

/** An error with one of the kit's own codes. */
export function kitError(code: KitErrorCode, message: string): Error & { code: KitErrorCode } {
  return Object.assign(new Error(message), { code });
}

/**
 * not-listening: nothing answers yet (poll fast, it costs the server nothing);
 * starting: the server answers "starting up" (poll fast, it will be ready soon);
 * busy: the server is there but overloaded, restarting or dropping us (back off);
 * fatal: retrying cannot help (exit 4).
 */
export type ErrorClass = "not-listening" | "starting" | "busy" | "fatal";

const NOT_LISTENING = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ENOENT"]);
const BUSY = new Set([
  "ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED",
  "CONNECT_TIMEOUT", "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED",
  "CLIENT_DEADLINE", "WRONG_SESSION_ATTRS", "POOLER_NO_SERVER",
  "57P01", "57P02", "53300",
]);

/**
 * PgBouncer answers very different situations with one SQLSTATE, 08P01, and fixed message
 * texts, so behind it the code alone cannot tell "fix your configuration" from "wait": these
 * prefixes split them. The one place the kit reads a message (taken from PgBouncer's source and
 * provoked for real against PgBouncer 1.18, see tests/init-database.pooler.test.ts).
 */
export const POOLER_MESSAGES: readonly { prefix: string; errorClass: ErrorClass; hint: string }[] = [
  { prefix: "unsupported startup parameter", errorClass: "fatal", hint: "the pooler refuses a start-up parameter the client sent: add it to PgBouncer's ignore_startup_parameters, or stop sending it" },
  { prefix: "no such database", errorClass: "fatal", hint: "the pooler has no such database: add it to the [databases] section of pgbouncer.ini (or a \"*\" fallback entry), or fix the name" },
  { prefix: "no such user", errorClass: "fatal", hint: "the pooler does not know this user: add it to PgBouncer's auth_file (userlist.txt) or fix auth_query" },
  { prefix: "SASL authentication failed", errorClass: "fatal", hint: "the pooler refused the password: check it, and the user's entry in PgBouncer's auth_file (userlist.txt) or auth_query" },
  { prefix: "password authentication failed", errorClass: "fatal", hint: "the pooler refused the password: check it, and the user's entry in PgBouncer's auth_file (userlist.txt) or auth_query" },
  { prefix: "server login has been failing", errorClass: "busy", hint: "the pooler cannot log in to PostgreSQL: is PostgreSQL up, and the password PgBouncer uses right? PgBouncer retries only every server_login_retry (default 15 s)" },
  { prefix: "pgbouncer cannot connect to server", errorClass: "busy", hint: "the pooler cannot reach PostgreSQL: is it up? PgBouncer retries only every server_login_retry (default 15 s)" },
  { prefix: "no more connections allowed", errorClass: "busy", hint: "the pooler is full: raise PgBouncer's max_client_conn (or max_db_connections / max_user_connections)" },
  { prefix: "query_wait_timeout", errorClass: "busy", hint: "no server connection became free in the pooler in time: raise PgBouncer's default_pool_size or query_wait_timeout" },
  { prefix: "server conn crashed", errorClass: "busy", hint: "PostgreSQL ended the pooler's server connection mid-query: a restart or a terminated session" },
  { prefix: "database does not allow connections", errorClass: "busy", hint: "the database is disabled in the pooler (PgBouncer's DISABLE): ENABLE it" },
];

/** The POOLER_MESSAGES entry for an 08P01 error, if it is one of PgBouncer's. */
export function poolerMessage(error: unknown): (typeof POOLER_MESSAGES)[number] | undefined {
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
  if (code === "57P03") return "starting";
  if (BUSY.has(code) || code.startsWith("08")) return "busy";
  return "fatal";
}

export function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" || typeof code === "number" ? String(code) : "UNKNOWN";
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

/** The target as a URL with the password hidden, for messages. */
export function describeTarget(config: Config): string {
  const user = encodeURIComponent(config.user);
  const credentials = config.password === undefined ? user : `${user}:***`;
  const hosts = config.targets.map(({ host, port }) => `${host.includes(":") ? `[${host}]` : host}:${port}`).join(",");
  return `postgres://${credentials}@${hosts}/${config.database}`;
}

/** One line saying what to do about an error, by code. */
export function hint(error: unknown, config: Config): string {
  if (error instanceof NotReadyError) return hint(error.lastError, config);
  const pooler = poolerMessage(error);
  if (pooler) return pooler.hint;
  const code = errorCode(error);
  const where = config.targets.map(({ host, port }) => `${host}:${port}`).join(", ");
  const hints: Record<string, string> = {
    "26000": "a prepared statement vanished: a transaction pooler (PgBouncer pool_mode=transaction) is in front; add pgbouncer=true to the URL, or use prepare: false",
    "28P01": "check the password (PGPASSWORD, POSTGRES_PASSWORD or the URL); in Compose an old volume may hold a different password (docker compose down -v resets it)",
    "28000": `the server refused user "${config.user}": check the user name and pg_hba.conf`,
    "3D000": `database "${config.database}" does not exist: fix the name, or create it with: bun run init-database.ts --create-database (same connection settings)`,
    NO_MAINTENANCE_DATABASE: `create it from a database you can reach, e.g. createdb --maintenance-db=THAT_DATABASE ${quoteIdent(config.database)}, then run without --create-database`,
    "42501": `user "${config.user}" lacks a privilege it needs (CONNECT on the database, CREATE on the schema)`,
    "53300": "the server is full: raise max_connections or shrink the pools of other clients",
    "57P03": "the server is still starting or recovering",
    ECONNREFUSED: `nothing listens on ${where}: is the server up and the port right?`,
    ENOTFOUND: `the host name does not resolve: in Compose use the service name, on the same network`,
    EAI_AGAIN: `the host name does not resolve yet: DNS is not answering`,
    CONNECT_TIMEOUT: `${where} accepts TCP but the server never answers: wrong port, a proxy, or a firewall?`,
    CLIENT_DEADLINE: "the server stopped answering mid-query; the client was replaced",
    POOLER_NO_SERVER: `${where} accepted the login but opened no session: a pooler (PgBouncer) whose PostgreSQL is down or unreachable? PgBouncer retries it every server_login_retry (default 15 s)`,
    CONNECTION_CLOSED: `${where} closed the connection: a server restarting or shutting down, a proxy with no backend, or a TLS mismatch?`,
    ECONNRESET: `${where} reset the connection: a server restarting, or a proxy or firewall cutting it`,
    WRONG_SESSION_ATTRS: `no host matched target_session_attrs=${config.targetSessionAttrs}: is the primary up?`,
    TLS: "TLS failed: fix the server's certificate or choose another sslmode (disable, prefer, require)",
  };
  return hints[code.startsWith("08") ? "CONNECTION_CLOSED" : code] ?? (isTlsError(error) ? hints.TLS! : "");
}

function isTlsError(error: unknown): boolean {
  const code = errorCode(error);
  return code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL") || /CERT|SELF_SIGNED|UNABLE_TO/.test(code);
}

// ---------------------------------------------------------------------------------------
// Deadlines and clients

/** Reject with code CLIENT_DEADLINE after `ms`, or with the abort reason when `signal` fires. */
export function withDeadline<T>(work: Promise<T>, ms: number, signal?: AbortSignal): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(kitError("CLIENT_DEADLINE", `no answer within ${ms} ms`)), ms);
    onAbort = () => reject(signal!.reason);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
  });
  return Promise.race([work, limit]).finally(() => {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  });
}

/** Sleep, but wake at once when `signal` fires. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return withDeadline(new Promise<never>(() => {}), ms, signal).catch((error) => {
    if (errorCode(error) !== "CLIENT_DEADLINE") throw error;
  });
}

/** Close a client without ever waiting on it for long: a broken one is dropped, not reused. */
export async function closeClient(sql: Sql | undefined): Promise<void> {
  if (!sql) return;
  await withDeadline(sql.end({ timeout: 0 }), 1_000).catch(() => {});
}

function sslOption(mode: SslMode): postgres.Options<{}>["ssl"] {
  const modes: Record<SslMode, postgres.Options<{}>["ssl"]> = {
    disable: false, allow: "allow", prefer: "prefer", require: "require", "verify-ca": "verify-full", "verify-full": "verify-full",
  };
  return modes[mode];
}

/**
 * The kit's session settings, run first in each of its own transactions. Not start-up
 * parameters, which PgBouncer refuses ("unsupported startup parameter"), nor a plain SET, which
 * in a transaction pool stays on the server session for whichever client gets it next.
 */
export function localSettings(config: Config): string {
  return `set local statement_timeout = ${config.commandTimeoutMs}`;
}

/** A postgres.js client for one host, with the kit's timeouts; `overrides` come from library users. */
export function createClient(config: Config, target: Target, overrides: postgres.Options<{}> = {}): Sql {
  const socketPath = target.host.startsWith("/") ? `${target.host}/.s.PGSQL.${target.port}` : undefined;
  return postgres({
    host: target.host,
    port: target.port,
    path: socketPath,
    user: config.user,
    password: config.password ?? "",
    database: config.database,
    ssl: sslOption(config.sslmode),
    max: DEFAULTS.poolMax,
    connect_timeout: config.connectTimeoutMs / 1000,
    keep_alive: DEFAULTS.keepAliveSeconds,
    fetch_types: false,
    onnotice: () => {},
    target_session_attrs: undefined,
    // Unnamed statements only: a transaction pooler hands each transaction a different server
    // session, where a named one does not exist (26000).
    prepare: false,
    // application_name only: PgBouncer refuses other start-up parameters (localSettings instead).
    connection: { application_name: config.applicationName },
    ...overrides,
  }) as Sql;
}

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

export interface Attempt {
  attempt: number;
  elapsedMs: number;
  error: unknown;
  errorClass: ErrorClass;
  delayMs: number;
}

export interface Ready {
  sql: Sql;
  target: Target;
  attempts: number;
  elapsedMs: number;
  serverVersion: string;
  /**
   * A pooler answered, not PostgreSQL itself: the cancel key it sent names another process than
   * pg_backend_pid() (PgBouncer makes up its own). Which pool mode cannot be told from outside.
   */
  pooled: boolean;
}

export class NotReadyError extends Error {
  readonly code: KitErrorCode = "NOT_READY";
  constructor(readonly lastError: unknown, readonly attempts: number, readonly elapsedMs: number, reason: string) {
    super(reason);
  }
}

/** Opens the socket for a target; the connectivity suite dials a forwarder in its place. */
export type Dial = (target: Target) => Socket;

/** A socket to the target over its own transport: a Unix socket for a directory, else TCP. */
export function dialTarget(target: Target): Socket {
  if (!target.host.startsWith("/")) return createConnection({ host: target.host, port: target.port });
  const path = `${target.host}/.s.PGSQL.${target.port}`;
  // Bun reports a missing socket file after the socket has closed, when postgres.js no longer
  // listens (an unhandled error, and CONNECTION_CLOSED instead of ENOENT): stat it first, which
  // throws the system's own ENOENT, and never leave a late error unhandled.
  statSync(path);
  return createConnection({ path }).on("error", () => {});
}

/**
 * postgres.js reconnects at once, in a tight loop, when a socket closes during start-up (a
 * port that accepts and hangs up: thousands of times a second). So attempts get their sockets
 * from here: until the session is proven, a second socket is refused, which ends the attempt.
 */
function oneSocketUntilProven(target: Target, dial: Dial): { socket: () => Socket; proven: () => void; explain: (error: unknown) => unknown } {
  let proving = true;
  let opened = 0;
  let received = Buffer.alloc(0);
  return {
    socket: () => {
      if (proving && ++opened > 1) {
        throw kitError("CONNECTION_CLOSED", `${target.host}:${target.port} closed the connection during start-up`);
      }
      const socket = dial(target);
      // What the server said last, in clear text (postgres.js drops this listener for TLS).
      socket.on("data", (chunk: Buffer) => {
        if (proving) received = Buffer.concat([received, chunk]).subarray(-4096);
      });
      // postgres.js reads host and port off its socket, for TLS server names and error messages.
      return Object.assign(socket, { host: target.host, port: target.port });
    },
    proven: () => {
      proving = false;
      received = Buffer.alloc(0);
    },
    /**
     * A pooler that refuses a query (PgBouncer's "server login has been failing") sends an error
     * and hangs up at once; postgres.js then reports only CONNECTION_CLOSED. Give the error back.
     */
    explain: (error) => {
      const said = errorCode(error) === "CONNECTION_CLOSED" ? trailingError(received) : undefined;
      // postgres.js's own error class takes the server's fields (its type declarations omit that).
      if (said) return new (postgres.PostgresError as unknown as new (fields: object) => Error)(said);
      if (errorCode(error) === "CONNECT_TIMEOUT" && loginWithoutSession(received)) {
        return kitError("POOLER_NO_SERVER", `${target.host}:${target.port} accepted the login but opened no session within the connect timeout`);
      }
      return error;
    },
  };
}

/**
 * Did these bytes (a server's answers during start-up) accept the login (SASLFinal or
 * AuthenticationOk) without a session following (ReadyForQuery)? PostgreSQL sends the session
 * at once; PgBouncer with no server connection yet authenticates the client itself, then waits.
 */
export function loginWithoutSession(bytes: Buffer): boolean {
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
export function trailingError(bytes: Buffer): { severity: string; code: string; message: string } | undefined {
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

/** Open a client on each host in turn until one answers a query and matches the session attributes. */
async function tryTargets(config: Config, deadlineAt: number, signal: AbortSignal | undefined, overrides: postgres.Options<{}>, dial: Dial = dialTarget) {
  let lastError: unknown;
  for (const [index, target] of config.targets.entries()) {
    // postgres.js's own connect timeout names the cause; the client deadline, a little later, catches a hang.
    // The attempt made at the deadline still gets time enough to succeed.
    const connectTimeoutMs = Math.min(config.connectTimeoutMs, Math.max(DEFAULTS.lastAttemptMs, deadlineAt - Date.now()));
    const sockets = oneSocketUntilProven(target, dial);
    // `socket` is a documented postgres.js option its type declarations leave out.
    const sql = createClient({ ...config, connectTimeoutMs }, target, { ...overrides, socket: sockets.socket } as postgres.Options<{}>);
    try {
      const rows = await withDeadline(
        sql<SessionState[]>`select pg_is_in_recovery() as in_recovery, current_setting('transaction_read_only') as read_only, current_setting('server_version') as server_version, pg_backend_pid() as backend_pid`,
        connectTimeoutMs + DEFAULTS.graceMs,
        signal,
      );
      const state = rows[0]!;
      if (sessionMatches(config.targetSessionAttrs, state, index === config.targets.length - 1)) {
        sockets.proven();
        // postgres.js keeps the BackendKeyData of the session on each result as `state`.
        const cancelKey = (rows as unknown as { state?: { pid?: number } }).state;
        return { sql, target, serverVersion: state.server_version, pooled: cancelKey?.pid !== state.backend_pid };
      }
      lastError = kitError("WRONG_SESSION_ATTRS", `${target.host}:${target.port} does not match target_session_attrs=${config.targetSessionAttrs}`);
    } catch (error) {
      lastError = sockets.explain(error);
    }
    await closeClient(sql);
    if (signal?.aborted) throw lastError;
  }
  throw lastError;
}

/**
 * Retry until a host answers an authenticated query: fast polls while nothing listens or the
 * server is starting, jittered exponential backoff while it is busy, never past the deadline.
 */
export async function waitUntilReady(
  config: Config,
  { signal, onAttempt, overrides = {}, startedAt = Date.now(), dial }: {
    signal?: AbortSignal; onAttempt?: (attempt: Attempt) => void; overrides?: postgres.Options<{}>; startedAt?: number; dial?: Dial;
  } = {},
): Promise<Ready> {
  const deadlineAt = startedAt + config.timeoutMs;
  let busyInARow = 0;
  let cause: unknown;
  for (let attempt = 1; ; attempt++) {
    const cutShort = deadlineAt - Date.now() < config.connectTimeoutMs;
    try {
      const found = await tryTargets(config, deadlineAt, signal, overrides, dial);
      return { ...found, attempts: attempt, elapsedMs: Date.now() - startedAt };
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      const errorClass = classifyError(error);
      if (errorClass === "fatal") throw error;
      // A timeout in an attempt the deadline cut short says nothing new: keep the cause before it.
      const timedOut = ["CONNECT_TIMEOUT", "CLIENT_DEADLINE"].includes(errorCode(error));
      if (!(cutShort && timedOut && cause)) cause = error;
      busyInARow = errorClass === "busy" ? busyInARow + 1 : 0;
      const delayMs = nextDelay(errorClass, busyInARow, deadlineAt - Date.now());
      const elapsedMs = Date.now() - startedAt;
      onAttempt?.({ attempt, elapsedMs, error, errorClass, delayMs: delayMs ?? 0 });
      if (delayMs === undefined) throw new NotReadyError(cause, attempt, elapsedMs, `not ready after ${formatMs(elapsedMs)}`);
      if (config.maxRetries !== undefined && attempt >= config.maxRetries) {
        throw new NotReadyError(cause, attempt, elapsedMs, `not ready after ${attempt} attempts`);
      }
      await sleep(delayMs, signal);
    }
  }
}

/**
 * Where a connect() pool over several hosts opens its connections: the host last found to
 * match target_session_attrs. Once a connection to that host closes (a failover kills them
 * all), the next one finds the host again, each session checked as in waitUntilReady, rather
 * than dialling a dead or demoted server. A new connection waits up to the connect timeout for
 * a matching host (a promotion), finding at most once per poll interval: no more than 20
 * attempts a second against a dead host, however many queries wait.
 */
export function followTarget(config: Config, found: Target): () => Promise<Socket> {
  let current: Target | undefined = found;
  let finding: Promise<unknown> | undefined;
  let lastFindAt = 0;
  const find = () => (finding ??= (async () => {
    await sleep(Math.max(0, lastFindAt + DEFAULTS.pollMs - Date.now()));
    lastFindAt = Date.now();
    const { sql, target } = await tryTargets(config, Date.now() + config.connectTimeoutMs, undefined, { max: 1 });
    await closeClient(sql);
    current = target;
  })().finally(() => (finding = undefined)));
  return async () => {
    const giveUpAt = Date.now() + config.connectTimeoutMs;
    while (!current) {
      await find().catch((error) => {
        if (Date.now() >= giveUpAt || classifyError(error) === "fatal") throw error;
      });
    }
    const target = current;
    const socket = Object.assign(dialTarget(target), { host: target.host, port: target.port });
    socket.once("close", () => {
      if (current === target) current = undefined;
    });
    return socket;
  };
}

/**
 * Wait for the database and return a ready postgres.js client (a pool; `clientOptions` go to
 * postgres.js). With several hosts or a target_session_attrs, the pool follows a failover (see
 * followTarget). `env` stands for process.env, as in parseConfig. Throws ConfigError,
 * NotReadyError, or the fatal error from the server.
 *
 * @example
 *   import { connect } from "./init-database.ts";
 *   const sql = await connect({ timeout: 30 }, { max: 20 });
 *   const [{ now }] = await sql`select now()`;
 */
export async function connect(options: Options = {}, clientOptions: postgres.Options<{}> = {}, env: Env = process.env): Promise<Sql> {
  const config = parseConfig(options, env);
  const overrides = { fetch_types: true, ...clientOptions };
  if (config.targets.length === 1 && config.targetSessionAttrs === "any") return (await waitUntilReady(config, { overrides })).sql;
  const { sql, target } = await waitUntilReady(config, { overrides: { max: 1 } });
  await closeClient(sql);
  // `socket` is a documented postgres.js option its type declarations leave out.
  return createClient(config, target, { ...overrides, socket: followTarget(config, target) } as postgres.Options<{}>);
}

/** Where --create-database connects to create the target: the ones createdb tries, in its order. */
const MAINTENANCE_DATABASES = ["postgres", "template1"] as const;

/**
 * With --create-database: make sure the target database exists, creating it from a maintenance
 * database (as createdb does). Waits like any run (with `onAttempt` progress) up to the same
 * deadline. With `dryRun` nothing is created: a missing database is "would create".
 */
export async function ensureDatabase(
  config: Config,
  { signal, onAttempt, startedAt, dryRun = false }: { signal?: AbortSignal; onAttempt?: (attempt: Attempt) => void; startedAt?: number; dryRun?: boolean } = {},
): Promise<"exists" | "created" | "would create"> {
  let sql: Sql | undefined;
  for (const database of MAINTENANCE_DATABASES) {
    try {
      ({ sql } = await waitUntilReady({ ...config, database }, { signal, onAttempt, startedAt, overrides: { max: 1 } }));
      break;
    } catch (error) {
      if (errorCode(error) !== "3D000") throw error;
    }
  }
  if (!sql) {
    throw kitError("NO_MAINTENANCE_DATABASE", `cannot create database "${config.database}": neither maintenance database ${MAINTENANCE_DATABASES.map((name) => `"${name}"`).join(" nor ")} exists to connect to`);
  }
  try {
    const deadline = config.commandTimeoutMs + DEFAULTS.graceMs;
    const existing = await withDeadline(sql`select 1 from pg_database where datname = ${config.database}`, deadline, signal);
    if (existing.length > 0) return "exists";
    if (dryRun) return "would create";
    await withDeadline(sql.unsafe(`create database ${quoteIdent(config.database)}`), deadline, signal).catch((error) => {
      // Another replica won the race: the database exists, which is all we wanted.
      if (errorCode(error) !== "42P04" && errorCode(error) !== "23505") throw error;
    });
    return "created";
  } finally {
    await closeClient(sql);
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

// ---------------------------------------------------------------------------------------
// Schema

export interface SchemaStep {
  name: string;
  sql: string;
  checksum: string;
}

export class SchemaError extends Error {
  constructor(message: string, readonly code: KitErrorCode = "SCHEMA_FAILED") {
    super(message);
  }
}

function step(name: string, sql: string): SchemaStep {
  return { name, sql, checksum: createHash("sha256").update(sql).digest("hex") };
}

/** The steps to apply: the built-in schema, a user's file, or a folder of migrations in name order. */
export function schemaPlan(source: { schema?: string; migrations?: string }, readFile: ReadFile = (path) => readFileSync(path, "utf8")): SchemaStep[] {
  const read = (path: string, flag: string) => {
    try {
      return readFile(path);
    } catch (error) {
      const code = errorCode(error);
      throw new ConfigError(`${flag} ${path} cannot be read (${code})`, `${resolve(path)} ${code === "ENOENT" ? "does not exist" : "is not a readable file"}; a relative path starts at the current directory, ${process.cwd()}`);
    }
  };
  if (source.schema && source.migrations) throw new ConfigError("--schema and --migrations exclude each other; choose one");
  if (source.schema) return [step(basename(source.schema), read(source.schema, "--schema"))];
  if (source.migrations) {
    let names: string[];
    try {
      names = readdirSync(source.migrations).filter((name) => name.endsWith(".sql")).sort();
    } catch (error) {
      throw new ConfigError(`--migrations ${source.migrations} cannot be read (${errorCode(error)}); fix the path`);
    }
    if (names.length === 0) throw new ConfigError(`--migrations ${source.migrations} holds no *.sql files`);
    return names.map((name) => step(name, read(join(source.migrations!, name), "--migrations")));
  }
  return [step("flow-backend", FLOW_BACKEND_SCHEMA)];
}

export interface StepResult {
  name: string;
  status: "applied" | "already applied" | "pending";
  ms: number;
}

type Cancellable = Promise<unknown> & { cancel(): unknown };

/**
 * On SIGINT/SIGTERM the server must stop the running statement now: closing our socket alone
 * leaves it running (and its locks held) until it next talks to us. postgres.js on Bun settles
 * a cancel request's promise before the request has left the process, so `release` waits for
 * the statement itself to end (bounded).
 */
function cancelOnAbort(signal: AbortSignal | undefined) {
  let inflight: { query: Cancellable; ended: Promise<unknown> } | undefined;
  let cancelling: Promise<unknown> | undefined;
  const cancel = () => {
    if (inflight) cancelling = Promise.all([Promise.resolve(inflight.query.cancel()).catch(() => {}), inflight.ended]);
  };
  signal?.addEventListener("abort", cancel, { once: true });
  return {
    track<Query extends Cancellable>(query: Query): Query {
      inflight = { query, ended: query.then(() => {}, () => {}) };
      return query;
    },
    async release(): Promise<void> {
      signal?.removeEventListener("abort", cancel);
      if (cancelling) await withDeadline(cancelling, DEFAULTS.graceMs).catch(() => {});
    },
  };
}

/**
 * Apply each pending step in its own transaction under an advisory lock, recording it in the
 * ledger, so that replicas starting together apply it exactly once. An up-to-date database
 * costs one query and takes no lock.
 */
export async function applySchema(
  sql: Sql,
  steps: SchemaStep[],
  config: Config,
  { signal, onStep, dryRun = false }: { signal?: AbortSignal; onStep?: (result: StepResult) => void; dryRun?: boolean } = {},
): Promise<StepResult[]> {
  const deadline = config.commandTimeoutMs === 0 ? 24 * 3600_000 : config.commandTimeoutMs + DEFAULTS.graceMs;
  const applied = await readLedger(sql, config, deadline, signal);
  const results: StepResult[] = [];
  const statements = cancelOnAbort(signal);
  try {
    for (const step of steps) {
      assertUnchanged(step.name, applied[step.name], step.checksum);
      if (applied[step.name] || dryRun) {
        const result = { name: step.name, status: applied[step.name] ? "already applied" as const : "pending" as const, ms: 0 };
        results.push(result);
        if (dryRun) onStep?.(result);
        continue;
      }
      const startedAt = performance.now();
      const status = await withDeadline(applyStep(sql, step, config, statements.track), deadline, signal);
      const result = { name: step.name, status, ms: Math.round(performance.now() - startedAt) };
      results.push(result);
      onStep?.(result);
    }
  } finally {
    await statements.release();
  }
  if (!dryRun && steps.length === 1 && steps[0]!.name === "flow-backend") await verifyTables(sql, FLOW_BACKEND_TABLES, deadline, signal);
  return results;
}

/** The ledger table's name, quoted for SQL. */
export function ledgerIdent(config: Config): string {
  return config.ledgerTable.split(".").map(quoteIdent).join(".");
}

/** What the ledger records, step name to checksum; empty when there is no ledger yet. One query. */
export async function readLedger(sql: Sql, config: Config, deadline: number, signal?: AbortSignal): Promise<Record<string, string>> {
  const query = sql.unsafe(`select coalesce(json_object_agg(name, checksum), '{}') as applied from ${ledgerIdent(config)}`);
  const rows = await withDeadline(query, deadline, signal).catch((error) => {
    if (errorCode(error) === "42P01") return [{ applied: {} }];
    throw error;
  });
  return (rows[0]?.applied ?? {}) as Record<string, string>;
}

/** One step in one transaction: lock, re-check the ledger inside the lock, apply, record. */
function applyStep(sql: Sql, { name, sql: text, checksum }: SchemaStep, config: Config, track: <Query extends Cancellable>(query: Query) => Query) {
  const ledger = ledgerIdent(config);
  const [ledgerSchema] = config.ledgerTable.split(".").slice(-2, -1);
  return sql.begin(async (tx) => {
    await tx.unsafe(localSettings(config));
    await tx`select pg_advisory_xact_lock(hashtext(${"pg-startup-kit:" + config.ledgerTable}))`;
    if (ledgerSchema) await tx.unsafe(`create schema if not exists ${quoteIdent(ledgerSchema)}`);
    await tx.unsafe(`create table if not exists ${ledger} (name text primary key, checksum text not null, applied_at timestamptz not null default now())`);
    const [row] = await tx.unsafe(`select checksum from ${ledger} where name = $1`, [name]);
    assertUnchanged(name, row?.checksum, checksum);
    if (row) return "already applied" as const;
    await track(tx.unsafe(text)).catch((error) => {
      throw Object.assign(error, { step: name, where: lineAndColumn(text, Number(error.position)) });
    });
    await tx.unsafe(`insert into ${ledger} (name, checksum) values ($1, $2)`, [name, checksum]);
    return "applied" as const;
  });
}

/** Where a server error's character position (1-based) falls in a file: "line 3, column 14". */
export function lineAndColumn(text: string, position: number): string | undefined {
  if (!Number.isInteger(position) || position < 1) return undefined;
  const before = [...text].slice(0, position - 1).join("").split("\n");
  return `line ${before.length}, column ${before.at(-1)!.length + 1}`;
}

function assertUnchanged(name: string, recorded: string | undefined, checksum: string): void {
  if (recorded && recorded !== checksum) {
    throw new SchemaError(`${name} was applied with checksum ${recorded.slice(0, 12)}… but the file now has ${checksum.slice(0, 12)}…: never edit an applied migration, add a new one`, "MIGRATION_CHANGED");
  }
}

async function verifyTables(sql: Sql, tables: readonly string[], deadline: number, signal?: AbortSignal): Promise<void> {
  const rows = await withDeadline(
    sql`select t as name from unnest(string_to_array(${tables.join(",")}, ',')) t where to_regclass(t) is null`,
    deadline,
    signal,
  );
  if (rows.length > 0) {
    throw new SchemaError(`tables missing after the schema ran: ${rows.map((row) => row.name).join(", ")} (were they dropped? delete the ledger row to re-apply)`);
  }
}

/** The step name the built-in schema is recorded under in the ledger. */
export const BUILT_IN_STEP = "flow-backend";

/**
 * The built-in schema is demo tables: written into a project's own database it mixes with
 * (or fails on) that project's tables. So it is applied only where the schema it lands in
 * holds nothing but its own four tables (a database the original scripts made qualifies),
 * or where the ledger already records it; anything else is refused before any change.
 * Costs one catalog query; the ledger is read only when other tables are found.
 */
export async function guardBuiltInSchema(sql: Sql, steps: SchemaStep[], config: Config, signal?: AbortSignal): Promise<void> {
  if (steps.length !== 1 || steps[0]!.name !== BUILT_IN_STEP) return;
  const deadline = config.commandTimeoutMs + DEFAULTS.graceMs;
  const [ledgerSchema, ledgerName] = config.ledgerTable.includes(".") ? config.ledgerTable.split(".").slice(-2) : [undefined, config.ledgerTable];
  const others = await withDeadline(sql<{ name: string; schema: string }[]>`
    select c.relname as name, n.nspname as schema
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = current_schema()
       and c.relkind in ('r', 'p', 'v', 'm', 'f')
       and c.relname <> all(string_to_array(${FLOW_BACKEND_TABLES.join(",")}, ','))
       and not (c.relname = ${ledgerName!} and n.nspname = coalesce(${ledgerSchema ?? null}, current_schema()))
     order by c.relname`, deadline, signal);
  if (others.length === 0) return;
  const applied = await readLedger(sql, config, deadline, signal);
  if (applied[BUILT_IN_STEP]) return;
  const shown = others.slice(0, 5).map((row) => row.name).join(", ") + (others.length > 5 ? `, … (${others.length} in all)` : "");
  throw new SchemaError(
    `refusing to write the built-in Flow-Backend demo schema into ${config.database}: schema "${others[0]!.schema}" already holds other tables (${shown}); nothing was changed`,
    "FOREIGN_TABLES",
  );
}

// ---------------------------------------------------------------------------------------
// Output

export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Human lines on stderr, results on stdout, NDJSON with --json; everything redacted. */
export class Reporter {
  private progressShown = false;
  private lastPlainAt = 0;
  private lastCause = "";
  constructor(
    private readonly mode: { json: boolean; quiet: boolean; tty: boolean; color: boolean },
    private readonly secrets: (string | undefined)[] = [],
  ) {}

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

/**
 * The schema needs a writable primary whatever the URL says: "any" and "prefer-standby"
 * become "read-write" (so a standby listed first is skipped, or promotion is awaited until the
 * deadline), and asking for a standby is a contradiction.
 */
export function writableSessionAttrs(attrs: TargetSessionAttrs): TargetSessionAttrs {
  if (attrs === "read-only" || attrs === "standby") {
    throw new ConfigError(`target_session_attrs=${attrs} cannot apply a schema, which needs a writable primary; use --wait-only, or read-write`);
  }
  return attrs === "primary" ? attrs : "read-write";
}

/** The first line of an error's message: parseArgs explains at length. */
export function firstLine(error: unknown): string {
  return String(error instanceof Error ? error.message : error).split("\n")[0]!;
}

/** A short, redacted description of an error: its code and the server's or system's message. */
export function explain(error: unknown): string {
  if (error instanceof NotReadyError) return `${error.message}: ${explain(error.lastError)}`;
  const code = errorCode(error);
  const message = error instanceof Error ? error.message : String(error);
  const { where, position } = error as { where?: string; position?: string };
  const location = where ? ` (${where})` : position ? ` (at character ${position})` : "";
  return `${code === "UNKNOWN" ? "" : code + ": "}${message}${location}`;
}

// ---------------------------------------------------------------------------------------
// CLI

const FLAGS = {
  url: { type: "string" },
  "wait-only": { type: "boolean" },
  schema: { type: "string" },
  migrations: { type: "string" },
  "ledger-table": { type: "string" },
  "create-database": { type: "boolean" },
  "dry-run": { type: "boolean" },
  timeout: { type: "string" },
  "connect-timeout": { type: "string" },
  "command-timeout": { type: "string" },
  "max-retries": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

/** Turn SIGINT/SIGTERM into an abort, so every wait ends at once and clients are closed. */
export function abortOnSignals(controller: AbortController): () => void {
  const handlers = (["SIGINT", "SIGTERM"] as const).map((name) => {
    const handler = () => controller.abort(kitError(name, `interrupted by ${name}`));
    process.on(name, handler);
    return () => process.off(name, handler);
  });
  return () => handlers.forEach((remove) => remove());
}

/**
 * Parse flags strictly. Returns the values, or the exit code to return at once: 0 after
 * printing `usage` for --help, 2 after a one-line error for a bad flag.
 */
export function parseFlags<Flags extends ParseArgsOptionsConfig>(argv: string[], flags: Flags, usage: string) {
  try {
    const { values } = parseArgs({ args: argv, options: flags, strict: true, allowPositionals: false });
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

export async function main(argv: string[], env: Env = process.env): Promise<number> {
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

  let config: Config;
  let steps: SchemaStep[] = [];
  try {
    config = parseConfig({
      url: values.url,
      timeout: values.timeout,
      connectTimeout: values["connect-timeout"],
      commandTimeout: values["command-timeout"],
      maxRetries: values["max-retries"],
      createDatabase: values["create-database"],
      ledgerTable: values["ledger-table"],
    }, env);
    if (!values["wait-only"]) {
      steps = schemaPlan({ schema: values.schema, migrations: values.migrations });
      config.targetSessionAttrs = writableSessionAttrs(config.targetSessionAttrs);
    }
  } catch (error) {
    // The password may sit in a malformed URL: hide anything that looks like one.
    reporter.addSecret(values.url);
    reporter.addSecret(env.DATABASE_URL);
    reporter.error(error instanceof ConfigError ? error.message : explain(error), error instanceof ConfigError ? error.fix : "see --help");
    return summary("usage error", EXIT.usage, { code: errorCode(error), message: firstLine(error) });
  }
  reporter.addSecret(config.password);
  const target = describeTarget(config);

  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  const signal = controller.signal;
  let sql: Sql | undefined;
  let phase: "connect" | "schema" = "connect";
  try {
    reporter.info(`waiting for ${target} (timeout ${formatMs(config.timeoutMs)})`);
    const onAttempt = ({ attempt, elapsedMs, error, errorClass, delayMs }: Attempt) => {
      reporter.event({ event: "attempt", attempt, elapsed_ms: elapsedMs, code: errorCode(error), class: errorClass, delay_ms: delayMs, message: explain(error) });
      reporter.progress(`attempt ${attempt}, ${formatMs(elapsedMs)}: ${explain(error)}`, errorCode(error));
    };
    const dryRun = Boolean(values["dry-run"]);
    if (config.createDatabase && values["wait-only"]) reporter.info("--create-database ignored: --wait-only only waits and changes nothing");
    if (config.createDatabase && !values["wait-only"]) {
      const outcome = await ensureDatabase(config, { signal, onAttempt, startedAt, dryRun });
      reporter.event({ event: "database", name: config.database, status: outcome });
      if (outcome === "created") reporter.info(`created database ${config.database}`);
      if (outcome === "would create") {
        const pending = steps.map((step) => step.name);
        reporter.result(`dry run: ${target}: would create database ${config.database}, then apply ${pending.join(", ")}`);
        return summary("dry run", EXIT.ok, { pending, create_database: true });
      }
    }
    // A retryable failure while applying the schema (a restart, a terminated session) drops
    // the client and starts over from waiting: the schema step is one transaction, so redoing it is safe.
    for (;;) {
      const ready = await waitUntilReady(config, { signal, onAttempt, startedAt });
      sql = ready.sql;
      reporter.event({ event: "ready", attempts: ready.attempts, elapsed_ms: ready.elapsedMs, host: ready.target.host, port: ready.target.port, server_version: ready.serverVersion, pooled: ready.pooled });
      if (values["wait-only"]) {
        reporter.result(`ready: ${target} (PostgreSQL ${ready.serverVersion}${ready.pooled ? " through a pooler" : ""}) after ${ready.attempts} attempt${ready.attempts === 1 ? "" : "s"} in ${formatMs(ready.elapsedMs)}`);
        return summary("ready", EXIT.ok, { attempts: ready.attempts });
      }
      reporter.info(`ready after ${ready.attempts} attempt${ready.attempts === 1 ? "" : "s"} in ${formatMs(ready.elapsedMs)}; ${dryRun ? "checking what the schema would apply" : "applying the schema"}`);
      phase = "schema";
      try {
        await guardBuiltInSchema(sql, steps, config, signal);
        const results = await applySchema(sql, steps, config, {
          signal,
          dryRun,
          onStep: (result) => {
            reporter.event({ event: "schema", step: result.name, status: result.status, ms: result.ms });
            reporter.info(`${result.status}: ${result.name}${dryRun ? "" : ` (${formatMs(result.ms)})`}`);
          },
        });
        if (dryRun) {
          const pending = results.filter((result) => result.status === "pending").map((result) => result.name);
          reporter.result(`dry run: ${target}: ${pending.length === 0 ? "nothing to apply" : `would apply ${pending.join(", ")}`}`);
          return summary("dry run", EXIT.ok, { pending });
        }
        const appliedCount = results.filter((result) => result.status === "applied").length;
        reporter.result(`done: ${target}: ${appliedCount === 0 ? "schema already up to date" : `applied ${appliedCount} of ${results.length} schema step${results.length === 1 ? "" : "s"}`} in ${formatMs(Date.now() - startedAt)}`);
        return summary("done", EXIT.ok, { applied: appliedCount, steps: results.length });
      } catch (error) {
        if (signal.aborted || classifyError(error) === "fatal" || Date.now() >= startedAt + config.timeoutMs) throw error;
        reporter.info(`schema interrupted (${explain(error)}); reconnecting`);
        await closeClient(sql);
        sql = undefined;
        phase = "connect";
      }
    }
  } catch (error) {
    if (signal.aborted) {
      const name = errorCode(signal.reason);
      reporter.error(`interrupted by ${name}; connections closed, nothing half-applied`);
      return summary("interrupted", name === "SIGINT" ? EXIT.sigint : EXIT.sigterm);
    }
    if (error instanceof NotReadyError) {
      reporter.error(`${target} ${explain(error)}`, hint(error, config));
      return summary("not ready", EXIT.notReady, { attempts: error.attempts, code: errorCode(error.lastError), message: explain(error) });
    }
    if (phase === "schema" && classifyError(error) === "fatal") {
      const step = (error as { step?: string }).step;
      reporter.error(`schema failed${step ? ` in ${step}` : ""}: ${explain(error)}`, schemaHint(error));
      return summary("schema failed", EXIT.schemaFailed, { code: errorCode(error), step, message: explain(error), where: (error as { where?: string }).where });
    }
    if (phase === "schema") {
      reporter.error(`${target} went away while applying the schema and the deadline has passed: ${explain(error)}`, hint(error, config));
      return summary("not ready", EXIT.notReady, { code: errorCode(error), message: explain(error) });
    }
    reporter.error(`cannot connect to ${target}: ${explain(error)}`, hint(error, config));
    return summary("fatal", EXIT.fatal, { code: errorCode(error), message: explain(error) });
  } finally {
    removeSignalHandlers();
    await closeClient(sql);
  }
}

function schemaHint(error: unknown): string {
  const code = errorCode(error);
  if (code === "FOREIGN_TABLES") return "apply your own schema with --schema FILE or --migrations DIR, or pass --wait-only to only wait for the database";
  if (code === "MIGRATION_CHANGED") return "restore the file as it was applied (e.g. git checkout -- FILE) and put the change in a new migration file";
  if (code === "57014" || code === "55P03") return "a statement ran past --command-timeout: is another session holding a lock? raise --command-timeout or end that session";
  if (code === "42501") return "the user lacks a privilege the schema needs (CREATE on the schema?)";
  if (code === "26000") return "a prepared statement vanished between transactions: a transaction pooler is in front; run schema work directly (--direct-url / DIRECT_URL)";
  return "fix the SQL; nothing of this step was applied (it ran in one transaction)";
}

const USAGE = `Wait until PostgreSQL accepts queries, then apply the schema exactly once.

Usage: bun run init-database.ts [options]

Connection (first found wins): --url, DATABASE_URL, PG* variables, POSTGRES_* variables, localhost:5432
  --url URL               postgres://user:pass@host:port/db (several hosts: h1:5432,h2:5432)
  --create-database       create the database if it does not exist (from the "postgres" or
                          "template1" database; with --dry-run only say so; ignored with --wait-only)

What to do:
  --wait-only             only wait until an authenticated query succeeds
  --schema FILE           apply this SQL file instead of the built-in Flow-Backend schema
  --migrations DIR        apply DIR/*.sql in name order, each once, recorded in the ledger
  --ledger-table NAME     the ledger table (default ${DEFAULTS.ledgerTable})
  --dry-run               list the steps that would be applied, apply nothing

Timeouts (seconds):
  --timeout S             overall deadline for becoming ready (default ${DEFAULTS.timeoutMs / 1000})
  --connect-timeout S     per connection attempt (default ${DEFAULTS.connectTimeoutMs / 1000})
  --command-timeout S     statement_timeout for every statement, 0 for none (default ${DEFAULTS.commandTimeoutMs / 1000})
  --max-retries N         give up after N attempts even before the deadline

Output:
  --json                  NDJSON events on stdout, ending in a summary object
  -q, --quiet             errors only
  -h, --help              this text

Exit codes: 0 ready/done, 1 schema failed, 2 usage, 3 not ready in time, 4 fatal connection error,
            130/143 interrupted.
`;

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
