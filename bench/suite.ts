#!/usr/bin/env bun
/**
 * The whole test suite (`npm test`: tsc, shellcheck, every bun test file) several times in a
 * row on this machine, optionally beside CPU-bound processes: whether every run passes, how
 * long each takes, and whether any leaves a PostgreSQL server, a PgBouncer or a temporary
 * directory behind. Flaky tests show up here, not in one green run.
 *
 * Usage: bun bench/suite.ts [--runs N] [--cpu-hogs N]
 *   --cpu-hogs N   keep N cores busy the whole time, one `sha256sum /dev/zero` each (default 0)
 * Writes bench/results/suite.json, or suite-cpu-hogs-N.json beside hogs.
 * Exit codes: 0 every run passed and left nothing behind, 1 otherwise (a failed run's output is
 *   kept in a temporary file, named on stderr).
 * Example: bun bench/suite.ts --runs 10
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { machine, ROOT, summarise, table, wallClock } from "./support.ts";

interface SuiteRun {
  code: number;
  passed: number;
  failed: number;
  skipped: number;
  seconds: number;
  /** The 1-minute load average when the run ended. */
  load: number;
  /** Servers, poolers and temporary entries the run started or made and left there. */
  leftovers: string[];
}

/** The last "N pass" (fail, skip) line bun test printed. */
function count(output: string, word: string): number {
  return Number([...output.matchAll(new RegExp(`^\\s*(\\d+) ${word}$`, "gm"))].at(-1)?.[1] ?? 0);
}

function runningServers(): string[] {
  const found = Bun.spawnSync(["pgrep", "-a", "-f", "postgres -D|pgbouncer"]).stdout.toString().trim();
  return found ? found.split("\n") : [];
}

async function runSuite(): Promise<SuiteRun> {
  // Only what appeared during the run counts: a system PostgreSQL already running is not a leftover.
  const before = new Set([...runningServers(), ...readdirSync(tmpdir()).map((entry) => join(tmpdir(), entry))]);
  const startedAt = wallClock();
  const child = Bun.spawn(["npm", "test"], { cwd: ROOT, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  const seconds = (wallClock() - startedAt) / 1000;
  const output = stdout + stderr;
  const leftovers = [...runningServers(), ...readdirSync(tmpdir()).map((entry) => join(tmpdir(), entry))].filter((found) => !before.has(found));
  const run = { code, passed: count(output, "pass"), failed: count(output, "fail"), skipped: count(output, "skip"), seconds, load: Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]), leftovers };
  if (code !== 0) {
    const log = join(tmpdir(), `suite-failed-${Date.now()}.log`);
    writeFileSync(log, output);
    console.error(`run exited ${code}: its output is in ${log}`);
  }
  return run;
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: "string", default: "10" }, "cpu-hogs": { type: "string", default: "0" } }, strict: true });
  const runs = Number(values.runs);
  const hogCount = Number(values["cpu-hogs"]);
  const hogs = Array.from({ length: hogCount }, () => Bun.spawn(["sha256sum", "/dev/zero"], { stdout: "ignore", stderr: "ignore" }));
  const results: SuiteRun[] = [];
  try {
    for (let index = 1; index <= runs; index++) {
      const run = await runSuite();
      results.push(run);
      console.error(`run ${index}/${runs}: exit ${run.code}, ${run.passed} passed, ${run.failed} failed, ${run.skipped} skipped in ${run.seconds.toFixed(0)} s (load ${run.load})${run.leftovers.length ? `; left behind: ${run.leftovers.join(", ")}` : ""}`);
    }
  } finally {
    for (const hog of hogs) hog.kill();
  }
  const seconds = summarise(results.map((run) => run.seconds));
  const green = results.filter((run) => run.code === 0 && run.failed === 0 && run.leftovers.length === 0).length;
  console.log(`test suite ${runs} times in a row${hogCount ? ` beside ${hogCount} CPU-bound process${hogCount === 1 ? "" : "es"}` : ""} (${machine()}, ${new Date().toISOString().slice(0, 10)})`);
  console.log(table([
    ["runs", "green", "tests per run", "median s", "worst s", "total s"],
    [runs, green, results[0] ? results[0].passed + results[0].failed + results[0].skipped : 0, seconds.median.toFixed(0), seconds.worst.toFixed(0), results.reduce((sum, run) => sum + run.seconds, 0).toFixed(0)],
  ]));
  writeFileSync(join(ROOT, "bench", "results", hogCount ? `suite-cpu-hogs-${hogCount}.json` : "suite.json"),
    JSON.stringify({ date: new Date().toISOString(), machine: machine(), cpu_hogs: hogCount, runs: results }, null, 2) + "\n");
  return green === runs ? 0 : 1;
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
