/**
 * Shared test support: a throwaway cluster and scratch directory per test file or block, run a
 * script as a real process with a clean environment, and check that nothing it printed holds
 * a secret.
 */
import { afterAll, beforeAll, expect } from "bun:test";
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Cluster, type ClusterOptions } from "./cluster.ts";

export const ROOT = join(import.meta.dir, "..");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Only what a process needs to run: no PG*, DATABASE_URL or POSTGRES_* leaks in from the caller. */
export function cleanEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const base: Record<string, string | undefined> = { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: process.env.TMPDIR, NO_COLOR: "1" };
  return Object.fromEntries(Object.entries({ ...base, ...extra }).filter((entry): entry is [string, string] => entry[1] !== undefined));
}

/**
 * Run `bun <script> ...args` (or, with `executable`, the file itself: a shell script); a process
 * still running after `killAfterMs` is killed and the run fails, so a hang shows up as a failure
 * and not as a stuck suite. `group` runs it in its own process group, as a terminal runs a
 * foreground job: the hang guard then ends the whole group, and so does the signal unless
 * `signalGroup` is false (a `kill` of the script alone).
 */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string | undefined> = {},
  { killAfterMs = 60_000, signalOn, signal = "SIGTERM", onStart, onStdout, executable = false, group = false, signalGroup = group }: {
    killAfterMs?: number;
    /** Send `signal` once stderr shows this text (observable state, not a guess at timing); the run fails if it never does. */
    signalOn?: string;
    signal?: NodeJS.Signals;
    onStart?: (child: Bun.Subprocess) => void;
    /** Called with everything printed so far, as it comes: to act on what the process says it did. */
    onStdout?: (soFar: string) => void;
    executable?: boolean;
    group?: boolean;
    signalGroup?: boolean;
  } = {},
): Promise<Run> {
  const startedAt = performance.now();
  const path = resolve(ROOT, script);
  const child = Bun.spawn(executable ? [path, ...args] : [process.execPath, path, ...args], {
    cwd: ROOT, env: cleanEnv(env), stdout: "pipe", stderr: "pipe", stdin: "ignore", detached: group,
  });
  onStart?.(child);
  let hung = false;
  const killer = setTimeout(() => {
    hung = true;
    if (group) process.kill(-child.pid, "SIGKILL");
    else child.kill("SIGKILL");
  }, killAfterMs);
  /** Read a stream to its end, telling `onText` everything read so far as it comes. */
  const readAll = async (stream: ReadableStream<Uint8Array>, onText: (soFar: string) => void) => {
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      onText(text);
    }
    return text + decoder.decode();
  };
  let signalled = false;
  const onStderr = (soFar: string) => {
    if (signalOn && !signalled && soFar.includes(signalOn)) {
      signalled = true;
      if (signalGroup) process.kill(-child.pid, signal);
      else child.kill(signal);
    }
  };
  const [stdout, stderr, code] = await Promise.all([readAll(child.stdout, (soFar) => onStdout?.(soFar)), readAll(child.stderr, onStderr), child.exited]);
  clearTimeout(killer);
  const ms = performance.now() - startedAt;
  if (hung) throw new Error(`${script} ${args.join(" ")} hung: killed after ${killAfterMs} ms\n${stderr}`);
  if (signalOn && !signalled) throw new Error(`${script} ${args.join(" ")} never printed "${signalOn}", so no ${signal} was sent:\n${stderr}`);
  return { code, stdout, stderr, ms };
}

/** Fail if any secret, raw or percent-encoded, appears in anything the run printed. */
export function expectNoSecret(run: Pick<Run, "stdout" | "stderr">, ...secrets: string[]): void {
  for (const secret of secrets) {
    for (const form of [secret, encodeURIComponent(secret)]) {
      expect(run.stdout).not.toContain(form);
      expect(run.stderr).not.toContain(form);
    }
  }
}

/** Parse NDJSON output, failing on any line that is not JSON. */
export function events(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split("\n").filter(Boolean).map((line) => JSON.parse(line));
}

/** Poll until `probe` returns true (observable state, not a sleep), failing after `ms`. */
export async function until(what: string, probe: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const giveUpAt = Date.now() + ms;
  while (!(await probe().catch(() => false))) {
    if (Date.now() > giveUpAt) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/**
 * A CA, a server certificate for DNS:localhost and a client certificate for the user
 * "certuser" signed by it, a revocation list of that CA revoking the server certificate, and
 * a second, unrelated CA.
 */
export interface Certificates { ca: string; otherCa: string; cert: string; key: string; clientCert: string; clientKey: string; revoked: string }

export function makeCertificates(dir: string): Certificates {
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kit test CA");
  openssl("req", "-x509", ...ec, "-keyout", "other.key", "-out", "other.crt", "-days", "2", "-subj", "/CN=another CA");
  openssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
  writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:localhost\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext");
  openssl("req", ...ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=certuser");
  openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "client.crt", "-days", "2");
  chmodSync(join(dir, "client.key"), 0o600);
  writeFileSync(join(dir, "ca.cnf"), "[ca]\ndefault_ca = kit\n[kit]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n");
  writeFileSync(join(dir, "index.txt"), "");
  writeFileSync(join(dir, "crlnumber"), "01\n");
  openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-revoke", "server.crt");
  openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-gencrl", "-out", "revoked.crl");
  return {
    revoked: join(dir, "revoked.crl"),
    ca: join(dir, "ca.crt"), otherCa: join(dir, "other.crt"), cert: join(dir, "server.crt"), key: join(dir, "server.key"),
    clientCert: join(dir, "client.crt"), clientKey: join(dir, "client.key"),
  };
}

/**
 * Turn TLS on in a stopped cluster with makeCertificates' files (a server certificate for
 * DNS:localhost), readable by the server's user; `settings` may add to the server settings
 * (given the files) and `hba` replaces pg_hba.conf, as Cluster.configure takes them.
 */
export function configureTls(cluster: Cluster, settings: (files: Certificates) => Record<string, string> = () => ({}), hba?: string[]): Certificates {
  const certs = join(cluster.dir, "certs");
  mkdirSync(certs);
  const files = makeCertificates(certs);
  if (cluster.identity.uid !== undefined) {
    for (const path of [certs, files.cert, files.key]) chownSync(path, cluster.identity.uid, cluster.identity.gid!);
  }
  chmodSync(files.key, 0o600);
  cluster.configure({ ssl: "on", ssl_cert_file: `'${files.cert}'`, ssl_key_file: `'${files.key}'`, ...settings(files) }, hba);
  return files;
}

/** What `useCluster` made: the server, a scratch directory, and what was asked for besides. */
export interface Fixture {
  cluster: Cluster;
  /** An empty temporary directory for the tests' files; removed with the cluster. */
  dir: string;
  /** A streaming standby of `cluster`, when `standby: true`. */
  standby?: Cluster;
}

/**
 * One throwaway cluster and scratch directory for the tests of a file or describe block: made
 * before they run, destroyed after them whatever happened, so no test leaves a server behind
 * and every run starts from nothing. `ready` receives them (assign them to the tests' variables).
 * `standby`: a streaming standby as well; `prepare`: what to do to the stopped cluster before
 * it starts (configureTls, say).
 */
export function useCluster(
  options: ClusterOptions & { standby?: boolean; prepare?: (cluster: Cluster) => void },
  ready: (fixture: Fixture) => unknown,
): void {
  const made: Partial<Fixture> = {};
  beforeAll(async () => {
    made.dir = mkdtempSync(join(tmpdir(), "kit-test-"));
    const { standby, prepare, ...clusterOptions } = options;
    const start = clusterOptions.start !== false;
    const cluster = (made.cluster = await Cluster.create({ ...clusterOptions, start: start && !prepare }));
    if (prepare) {
      prepare(cluster);
      if (start) {
        await cluster.start();
        if (cluster.database !== "postgres") await cluster.createDatabase(cluster.database);
      }
    }
    if (standby) made.standby = await cluster.createStandby();
    await ready(made as Fixture);
  });
  afterAll(async () => {
    try {
      await made.standby?.destroy();
      await made.cluster?.destroy();
    } finally {
      if (made.dir) rmSync(made.dir, { recursive: true, force: true });
    }
  });
}

/** A name no earlier run (nor a parallel one) has used: for objects a test makes on a shared server. */
export const uniqueName = (prefix: string) => `${prefix}_${process.pid}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`;
