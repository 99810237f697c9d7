/**
 * A throwaway PgBouncer (Debian's /usr/sbin/pgbouncer, installed by tests/system-tools.sh) in
 * front of a throwaway cluster: its own ini file and auth file in a temporary directory, a free
 * loopback port, `auth_type = scram-sha-256`, stock settings otherwise (no
 * `ignore_startup_parameters`). As root it runs as `nobody`, like the servers of tests/cluster.ts.
 * The tests and bench/readiness.ts start their poolers here, so there is one way to do it.
 *
 * Usage:
 *   const bouncer = await PgBouncer.start({ cluster, poolMode: "transaction" });
 *   bouncer.url()            // postgres://postgres:…@127.0.0.1:PORT/postgres through the pooler
 *   await bouncer.destroy();
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, type Cluster } from "./cluster.ts";

const PGBOUNCER = process.env.PGBOUNCER_BIN ?? "/usr/sbin/pgbouncer";
const RUN_AS_WHEN_ROOT = "nobody";
const START_TIMEOUT_MS = 10_000;

export type PoolMode = "session" | "transaction";

export interface PgBouncerOptions {
  cluster: Cluster;
  poolMode: PoolMode;
  /** Databases the pooler knows (each the server's database of that name); the cluster's own by default. */
  databases?: string[];
  /** Extra [pgbouncer] settings (e.g. server_login_retry); none by default: stock behaviour. */
  settings?: Record<string, string>;
  /** More users for the auth file, name to password, besides the cluster's own. */
  users?: Record<string, string>;
}

function identity(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const id = (flag: string) => Number(execFileSync("id", [flag, RUN_AS_WHEN_ROOT], { encoding: "utf8" }));
  return { uid: id("-u"), gid: id("-g") };
}

/** A quoted value for PgBouncer's auth file: `"` doubled. */
function quoted(text: string): string {
  return `"${text.replaceAll('"', '""')}"`;
}

export class PgBouncer {
  readonly host = "127.0.0.1";
  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly cluster: Cluster,
    readonly poolMode: PoolMode,
    private readonly child: ChildProcess,
  ) {}

  get logFile(): string { return join(this.dir, "pgbouncer.log"); }

  /** A URL through the pooler (same user and password as the cluster); `overrides` swap any part. */
  url(overrides: { database?: string; user?: string; password?: string; query?: string } = {}): string {
    const base = this.cluster.url({ ...overrides, host: this.host, port: this.port });
    return overrides.query ? `${base}?${overrides.query}` : base;
  }

  static async version(): Promise<string> {
    return execFileSync(PGBOUNCER, ["--version"], { encoding: "utf8" }).split("\n")[0]!.trim();
  }

  static async start({ cluster, poolMode, databases = [cluster.database], settings = {}, users = {} }: PgBouncerOptions): Promise<PgBouncer> {
    if (!existsSync(PGBOUNCER)) throw new Error(`${PGBOUNCER} is missing: run bash tests/system-tools.sh (apt-get install pgbouncer)`);
    const runAs = identity();
    const dir = mkdtempSync(join(tmpdir(), "pgbouncer-kit-"));
    const port = await freePort();
    const ini = [
      "[databases]",
      ...databases.map((name) => `${name} = host=${cluster.host} port=${cluster.port} dbname=${name}`),
      "[pgbouncer]",
      `listen_addr = 127.0.0.1`,
      `listen_port = ${port}`,
      `unix_socket_dir =`,
      `auth_type = scram-sha-256`,
      `auth_file = ${join(dir, "userlist.txt")}`,
      `logfile = ${join(dir, "pgbouncer.log")}`,
      `pool_mode = ${poolMode}`,
      ...Object.entries(settings).map(([name, value]) => `${name} = ${value}`),
    ];
    writeFileSync(join(dir, "pgbouncer.ini"), ini.join("\n") + "\n");
    const userlist = Object.entries({ [cluster.user]: cluster.password, ...users }).map(([user, password]) => `${quoted(user)} ${quoted(password)}\n`);
    writeFileSync(join(dir, "userlist.txt"), userlist.join(""), { mode: 0o600 });
    if (runAs.uid !== undefined) {
      for (const path of [dir, join(dir, "pgbouncer.ini"), join(dir, "userlist.txt")]) chownSync(path, runAs.uid, runAs.gid!);
    }
    const child = spawn(PGBOUNCER, [join(dir, "pgbouncer.ini")], { ...runAs, stdio: ["ignore", "ignore", "pipe"] });
    const bouncer = new PgBouncer(dir, port, cluster, poolMode, child);
    try {
      await new Promise<void>((resolve, reject) => {
        let output = "";
        const timer = setTimeout(() => reject(new Error(`pgbouncer did not start in ${START_TIMEOUT_MS} ms:\n${output}`)), START_TIMEOUT_MS);
        const done = (error?: Error) => {
          clearTimeout(timer);
          child.stderr!.removeAllListeners("data");
          if (error) reject(error);
          else resolve();
        };
        child.stderr!.on("data", (chunk) => {
          output += chunk;
          // The log line PgBouncer writes once its listening socket is open.
          if (output.includes(`listening on 127.0.0.1:${port}`)) done();
        });
        child.once("exit", (code) => done(new Error(`pgbouncer exited ${code}:\n${output}`)));
      });
      child.stderr!.resume();
    } catch (error) {
      await bouncer.destroy();
      throw error;
    }
    return bouncer;
  }

  /** Stop PgBouncer (SIGINT: at once, connections closed) and delete its directory. */
  async destroy(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((resolve) => this.child.once("exit", resolve));
      this.child.kill("SIGINT");
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  logTail(lines = 20): string {
    try {
      return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no pgbouncer log)";
    }
  }
}
