#!/usr/bin/env bun
/**
 * End to end: `./test-database-fix.sh --provider embedded` from start to exit (dependencies
 * installed), and with --fresh also `npm ci` in a fresh clone of this repository (the registry
 * answers over the network, so that figure depends on it).
 *
 * Usage: bun bench/end-to-end.ts [--runs N] [--fresh]    (writes bench/results/end-to-end.json)
 * Exit codes: 0 measured, 1 a run failed.
 * Example: bun bench/end-to-end.ts --runs 5 --fresh
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { machine, ROOT, summarise, table, timed } from "./support.ts";

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: "string", default: "5" }, fresh: { type: "boolean" } }, strict: true });
  const runs = Number(values.runs);
  const ms: number[] = [];
  for (let run = 0; run < runs; run++) {
    const result = await timed([join(ROOT, "test-database-fix.sh"), "--provider", "embedded"], { DATABASE_URL: undefined });
    if (result.code !== 0) {
      console.error(`error: run ${run + 1} exited ${result.code}`);
      return 1;
    }
    ms.push(result.ms);
  }
  const fix = summarise(ms);
  const rows: (string | number)[][] = [["what", "median ms", "mean ms", "worst ms"], ["./test-database-fix.sh --provider embedded", fix.median.toFixed(0), fix.mean.toFixed(0), fix.worst.toFixed(0)]];
  let npmCiMs: number | undefined;
  if (values.fresh) {
    const dir = mkdtempSync(join(tmpdir(), "fresh-clone-"));
    try {
      const clone = Bun.spawnSync(["git", "clone", "-q", ROOT, join(dir, "kit")]);
      if (clone.exitCode !== 0) throw new Error(`git clone failed: ${clone.stderr}`);
      const install = await timed(["sh", "-c", `cd '${join(dir, "kit")}' && npm ci --no-audit --no-fund --loglevel=error`]);
      if (install.code !== 0) throw new Error(`npm ci exited ${install.code}`);
      npmCiMs = install.ms;
      rows.push(["npm ci in a fresh clone (once)", npmCiMs.toFixed(0), "-", "-"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  console.log(`end to end (${machine()}, ${new Date().toISOString().slice(0, 10)}, ${runs} runs)`);
  console.log(table(rows));
  writeFileSync(join(ROOT, "bench", "results", "end-to-end.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), runs, test_database_fix: fix, npm_ci_ms: npmCiMs }, null, 2) + "\n");
  return 0;
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
