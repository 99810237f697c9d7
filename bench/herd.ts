#!/usr/bin/env bun
/**
 * A thundering herd: 50 init-database.ts processes start together against a database that
 * comes up after 2 s and allows fewer than 50 connections. Reports whether all succeeded,
 * how often the schema was applied, and the time from "database ready" (a reference poller)
 * to the last process finishing, with the kit's jitter and without it.
 *
 * Usage: bun bench/herd.ts [--processes N] [--max-connections N] [--rounds N]
 *        (writes bench/results/herd.json)
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Cluster } from "../tests/cluster.ts";
import { machine, ROOT, summarise, table, timed } from "./support.ts";

const START_DELAY_MS = 2_000;

async function herd(processes: number, maxConnections: number, jitter: boolean, round: number) {
  const cluster = await Cluster.create({ start: false, settings: { max_connections: String(maxConnections) } });
  try {
    await cluster.start();
    await cluster.createDatabase("herd");
    await cluster.stop();
    const env = { DATABASE_URL: cluster.url({ database: "herd" }) };
    const preload = jitter ? [] : ["--preload", "./bench/no-jitter.ts"];
    const reference = timed([process.execPath, "bench/reference-poller.ts"], env);
    const runs = Array.from({ length: processes }, () => timed([process.execPath, ...preload, "init-database.ts", "--json", "--timeout", "60"], env));
    await Bun.sleep(START_DELAY_MS);
    await cluster.start({ wait: false });
    const readyAt = Number((await reference).stdout.trim());
    const ended = await Promise.all(runs);
    const events = ended.flatMap((run) => run.stdout.trim().split("\n").filter(Boolean).map((line) => JSON.parse(line)));
    const result = {
      round,
      succeeded: ended.filter((run) => run.code === 0).length,
      appliedSchema: events.filter((event) => event.event === "schema" && event.status === "applied").length,
      tooManyClients: events.filter((event) => event.event === "attempt" && event.code === "53300").length,
      lastDoneAfterReadyMs: Math.max(...ended.map((run) => run.endedAt)) - readyAt,
    };
    console.error(`${jitter ? "jitter" : "no jitter"}, round ${round}: ${JSON.stringify(result)}`);
    return result;
  } finally {
    await cluster.destroy();
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv, strict: true,
    options: { processes: { type: "string", default: "50" }, "max-connections": { type: "string", default: "20" }, rounds: { type: "string", default: "3" } },
  });
  const processes = Number(values.processes);
  const maxConnections = Number(values["max-connections"]);
  const rounds = Number(values.rounds);
  const outcome: Record<string, Awaited<ReturnType<typeof herd>>[]> = { jitter: [], "no jitter": [] };
  for (let round = 1; round <= rounds; round++) {
    outcome.jitter!.push(await herd(processes, maxConnections, true, round));
    outcome["no jitter"]!.push(await herd(processes, maxConnections, false, round));
  }
  console.log(`herd: ${processes} processes, max_connections=${maxConnections}, database up after ${START_DELAY_MS / 1000} s (${machine()}, ${new Date().toISOString().slice(0, 10)}, ${rounds} rounds)`);
  console.log(table([
    ["variant", "all succeeded", "schema applied", "53300 refusals (mean)", "ready -> last done, median ms", "worst ms"],
    ...Object.entries(outcome).map(([variant, results]) => {
      const done = summarise(results.map((result) => result.lastDoneAfterReadyMs));
      return [
        variant,
        results.every((result) => result.succeeded === processes) ? "yes" : "NO",
        results.map((result) => result.appliedSchema).join("/"),
        (results.reduce((sum, result) => sum + result.tooManyClients, 0) / results.length).toFixed(0),
        done.median.toFixed(0),
        done.worst.toFixed(0),
      ];
    }),
  ]));
  writeFileSync(join(ROOT, "bench", "results", "herd.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), processes, maxConnections, startDelayMs: START_DELAY_MS, outcome }, null, 2) + "\n");
  const ok = Object.values(outcome).flat().every((result) => result.succeeded === processes && result.appliedSchema === 1);
  return ok ? 0 : 1;
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
