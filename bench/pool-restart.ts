#!/usr/bin/env bun
/**
 * How long is a service down after its database restarts? A loop runs `select 1` every 10 ms
 * on a pool of 4, and the server is restarted once (`pg_ctl restart -m fast`, or `-m immediate`)
 * after the loop has had 100 answers. Two pools, one per round, alternating: the kit's
 * `connect({ url, timeout: 30 }, { max: 4 })` (default --command-timeout, 60 s) and a plain
 * `postgres(url, { max: 4 })`. Per round: the outage (from the first failed query to the next
 * answer), the failed queries, the queries answered in the window (the restart plus `--window`
 * seconds), the slowest query, and how many queries waited past the kit's deadline
 * (--command-timeout plus its grace) for a server that was back.
 *
 * Usage: bun bench/pool-restart.ts [--rounds N] [--mode fast|immediate] [--window S]
 *   (writes bench/results/pool-restart-MODE.json)
 * Exit codes: 0 measured (whether or not the target was met), 1 a round failed, 2 usage.
 * Example: bun bench/pool-restart.ts --rounds 6 --mode immediate
 * Target: the kit's pool down no longer than postgres.js alone, no query past its deadline.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { absorbDroppedClientErrors, connect, DEFAULTS, errorCode } from "../init-database.ts";
import { Cluster } from "../tests/cluster.ts";
import { machine, ROOT, summarise, table } from "./support.ts";

const PASSWORD = "bench-pool-restart";
const PACE_MS = 10;
const WARM_ANSWERS = 100;
/** Give up on a round whose pool has not answered this long after the restart. */
const GIVE_UP_MS = 120_000;
const DEADLINE_MS = DEFAULTS.commandTimeoutMs + DEFAULTS.graceMs;

interface Round {
  pool: "kit connect()" | "postgres.js";
  outageMs: number;
  failed: number;
  answeredInWindow: number;
  slowestMs: number;
  pastDeadline: number;
  codes: string[];
}

async function round(cluster: Cluster, pool: Round["pool"], mode: "fast" | "immediate", windowMs: number): Promise<Round> {
  const url = cluster.url();
  const sql = pool === "postgres.js" ? postgres(url, { max: 4, onnotice: () => {} }) : await connect({ url, timeout: 30 }, { max: 4 });
  const outcomes: { startedAt: number; endedAt: number; code?: string }[] = [];
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const startedAt = performance.now();
      try {
        await sql`select 1`;
        outcomes.push({ startedAt, endedAt: performance.now() });
      } catch (error) {
        outcomes.push({ startedAt, endedAt: performance.now(), code: errorCode(error) });
      }
      await Bun.sleep(PACE_MS);
    }
  })();
  const waitFor = async (what: string, done: () => boolean, ms: number) => {
    const giveUpAt = performance.now() + ms;
    while (!done()) {
      if (performance.now() > giveUpAt) throw new Error(`${pool}: ${what} did not happen within ${ms} ms`);
      await Bun.sleep(5);
    }
  };
  try {
    await waitFor("warm-up", () => outcomes.filter((outcome) => !outcome.code).length >= WARM_ANSWERS, 30_000);
    const restartAt = performance.now();
    await cluster.restart(mode);
    const backAt = performance.now();
    const answeredAfter = (at: number) => outcomes.some((outcome) => !outcome.code && outcome.startedAt > at);
    await waitFor("an answer after the restart", () => answeredAfter(backAt) && performance.now() > restartAt + windowMs, GIVE_UP_MS);
    stop = true;
    await loop;
    const firstFailure = outcomes.find((outcome) => outcome.code && outcome.endedAt >= restartAt);
    const from = firstFailure?.endedAt ?? restartAt;
    const recovered = outcomes.find((outcome) => !outcome.code && outcome.endedAt > from && outcome.startedAt >= from);
    const since = outcomes.filter((outcome) => outcome.endedAt >= restartAt);
    return {
      pool,
      outageMs: firstFailure ? recovered!.endedAt - from : 0,
      failed: since.filter((outcome) => outcome.code).length,
      answeredInWindow: since.filter((outcome) => !outcome.code && outcome.endedAt <= restartAt + windowMs).length,
      slowestMs: Math.max(...since.map((outcome) => outcome.endedAt - outcome.startedAt)),
      pastDeadline: since.filter((outcome) => outcome.endedAt - outcome.startedAt >= DEADLINE_MS && outcome.endedAt > backAt).length,
      codes: [...new Set(since.flatMap((outcome) => (outcome.code ? [outcome.code] : [])))],
    };
  } finally {
    stop = true;
    await loop;
    await sql.end({ timeout: 1 });
  }
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ options: { rounds: { type: "string", default: "6" }, mode: { type: "string", default: "fast" }, window: { type: "string", default: "10" } } }));
  } catch (error) {
    console.error(`pool-restart: ${(error as Error).message}`);
    return 2;
  }
  const rounds = Number(values.rounds);
  const mode = values.mode;
  const windowMs = Number(values.window) * 1000;
  if (!(rounds >= 2) || (mode !== "fast" && mode !== "immediate") || !(windowMs > 0)) {
    console.error("usage: bun bench/pool-restart.ts [--rounds N (2 or more)] [--mode fast|immediate] [--window S]");
    return 2;
  }
  // postgres.js on Bun can throw from a timer after a connection closed (see absorbDroppedClientErrors).
  absorbDroppedClientErrors();
  const cluster = await Cluster.create({ password: PASSWORD });
  const version = cluster.version;
  const results: Round[] = [];
  try {
    for (let index = 0; index < rounds; index++) {
      const pool = index % 2 === 0 ? "kit connect()" : "postgres.js";
      const result = await round(cluster, pool, mode, windowMs);
      results.push(result);
      console.error(`round ${index + 1}/${rounds}: ${pool}: down ${Math.round(result.outageMs)} ms, ${result.failed} failed (${result.codes.join(", ") || "none"}), ${result.answeredInWindow} answered`);
    }
  } catch (error) {
    console.error(`pool-restart: ${(error as Error).message}\n${cluster.logTail()}`);
    return 1;
  } finally {
    await cluster.destroy();
  }
  const rows: (string | number)[][] = [["round", "pool", "outage ms", "failed", `answered in ${windowMs / 1000} s`, "slowest ms", "past deadline", "errors"]];
  results.forEach((result, index) => rows.push([index + 1, result.pool, Math.round(result.outageMs), result.failed, result.answeredInWindow, Math.round(result.slowestMs), result.pastDeadline, result.codes.join(" ")]));
  console.log(`pg_ctl restart -m ${mode}, select 1 every ${PACE_MS} ms on a pool of 4; ${machine()}, PostgreSQL ${version}`);
  console.log(table(rows));
  for (const pool of ["kit connect()", "postgres.js"] as const) {
    const outage = summarise(results.filter((result) => result.pool === pool).map((result) => result.outageMs));
    console.log(`${pool}: outage mean ${Math.round(outage.mean)} ms, median ${Math.round(outage.median)}, worst ${Math.round(outage.worst)} (${outage.n} rounds)`);
  }
  writeFileSync(join(ROOT, "bench", "results", `pool-restart-${mode}.json`), JSON.stringify({ mode, machine: machine(), results }, null, 2) + "\n");
  return 0;
}

if (import.meta.main) process.exit(await main());
