/**
 * Shared test support: run a script as a real process with a clean environment, and check
 * that nothing it printed holds a secret.
 */
import { expect } from "bun:test";
import { join } from "node:path";

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
 * Run `bun <script> ...args`; a process still running after `killAfterMs` is killed and the
 * run fails, so a hang shows up as a failure and not as a stuck suite.
 */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string | undefined> = {},
  { killAfterMs = 60_000, signalAfterMs, signal = "SIGTERM", onStart, onStdout }: {
    killAfterMs?: number; signalAfterMs?: number; signal?: NodeJS.Signals; onStart?: (child: Bun.Subprocess) => void;
    /** Called with everything printed so far, as it comes: to act on what the process says it did. */
    onStdout?: (soFar: string) => void;
  } = {},
): Promise<Run> {
  const startedAt = performance.now();
  const child = Bun.spawn([process.execPath, join(ROOT, script), ...args], {
    cwd: ROOT, env: cleanEnv(env), stdout: "pipe", stderr: "pipe", stdin: "ignore",
  });
  onStart?.(child);
  const killer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
  const signaller = signalAfterMs === undefined ? undefined : setTimeout(() => child.kill(signal), signalAfterMs);
  const readStdout = async () => {
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      text += decoder.decode(chunk, { stream: true });
      onStdout?.(text);
    }
    return text + decoder.decode();
  };
  const [stdout, stderr, code] = await Promise.all([readStdout(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(killer);
  clearTimeout(signaller);
  const ms = performance.now() - startedAt;
  if (child.signalCode === "SIGKILL") throw new Error(`${script} ${args.join(" ")} hung: killed after ${killAfterMs} ms\n${stderr}`);
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
