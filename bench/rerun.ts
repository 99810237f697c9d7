#!/usr/bin/env bun
/**
 * What a re-run costs: `init-database.ts` against an already initialised database (what
 * happens at every service start) against `psql -f` applying the same idempotent schema,
 * both timed from spawn to exit, alternating, over many runs.
 *
 * Usage: bun bench/rerun.ts [--runs N]    (needs psql on PATH; writes bench/results/rerun.json)
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { FLOW_BACKEND_SCHEMA } from "../init-database.ts";
import { Cluster } from "../tests/cluster.ts";
import { machine, ROOT, summarise, table, timed } from "./support.ts";

const TARGET_RATIO = 1.5;

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: "string", default: "40" } }, strict: true });
  const runs = Number(values.runs);
  const psql = Bun.which("psql");
  if (!psql) {
    console.error("error: psql is not installed: apt-get install postgresql-client");
    return 2;
  }
  const cluster = await Cluster.create({ database: "rerun" });
  const dir = mkdtempSync(join(tmpdir(), "rerun-"));
  try {
    const schemaFile = join(dir, "schema.sql");
    writeFileSync(schemaFile, FLOW_BACKEND_SCHEMA);
    const env = { DATABASE_URL: cluster.url(), PGPASSWORD: cluster.password };
    const kit = [process.execPath, "init-database.ts", "--quiet"];
    const baseline = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", cluster.host, "-p", String(cluster.port), "-U", cluster.user, "-d", "rerun", "-f", schemaFile];
    const first = await timed(kit, env);
    if (first.code !== 0) throw new Error("the first init-database.ts run failed");
    for (let warmup = 0; warmup < 3; warmup++) await Promise.all([timed(kit, env), timed(baseline, env)]);
    const kitMs: number[] = [];
    const psqlMs: number[] = [];
    for (let run = 0; run < runs; run++) {
      const ours = await timed(kit, env);
      const theirs = await timed(baseline, { ...env, PGOPTIONS: "--client-min-messages=warning" });
      if (ours.code !== 0 || theirs.code !== 0) throw new Error(`run ${run} failed: init ${ours.code}, psql ${theirs.code}`);
      kitMs.push(ours.ms);
      psqlMs.push(theirs.ms);
    }
    const ours = summarise(kitMs);
    const theirs = summarise(psqlMs);
    const ratio = ours.median / theirs.median;
    console.log(`re-run on an initialised database (${machine()}, ${new Date().toISOString().slice(0, 10)}, ${runs} runs each)`);
    console.log(table([
      ["command", "median ms", "mean ms", "worst ms"],
      ["init-database.ts (re-run)", ours.median.toFixed(1), ours.mean.toFixed(1), ours.worst.toFixed(1)],
      ["psql -f schema.sql", theirs.median.toFixed(1), theirs.mean.toFixed(1), theirs.worst.toFixed(1)],
    ]));
    console.log(`ratio of medians: ${ratio.toFixed(2)}x (target <= ${TARGET_RATIO}x: ${ratio <= TARGET_RATIO ? "met" : "NOT met"})`);
    writeFileSync(join(ROOT, "bench", "results", "rerun.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), runs, init_database: ours, psql: theirs, ratio }, null, 2) + "\n");
    return 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await cluster.destroy();
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
