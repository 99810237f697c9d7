#!/usr/bin/env bun
/**
 * How soon after a failover do the kit's users write again? Each round: a primary and a
 * streaming standby (pg_basebackup), a connect() pool writing through
 * `PRIMARY,STANDBY?target_session_attrs=read-write`; the primary is stopped with -m immediate,
 * `init-database.ts --wait-only` starts waiting with the same URL, and the standby is promoted
 * 0.5 to 1.5 s later. Measured from the promoted server's first possible write (a reference
 * session on the standby trying `select txid_current()` every 2 ms) to (a) --wait-only exiting,
 * (b) the pool's first successful insert. Also: attempts a second against the dead host, for
 * (a) from its --json attempt events (each attempt tries the dead host first), for (b) by a
 * proxy in front of the primary that counts the connections it accepts.
 * The promoted standby is the next round's primary, with a new standby made from it.
 *
 * Usage: bun bench/failover.ts [--rounds N]    (writes bench/results/failover.json and bench/failover.svg)
 *        bun bench/failover.ts --chart-only    (redraws the chart from the saved results)
 * Exit codes: 0 measured (whether or not the targets were met), 1 a round failed, 2 usage.
 * Example: bun bench/failover.ts --rounds 12
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { connect } from "../init-database.ts";
import { Cluster } from "../tests/cluster.ts";
import { FaultProxy } from "../tests/proxy.ts";
import { chart, machine, ROOT, summarise, table, timed, wallClock, type Summary } from "./support.ts";

const REFERENCE_POLL_MS = 2;
const PASSWORD = "bench-failover";
const TARGETS = { waitMeanMs: 40, waitWorstMs: 75, poolWorstMs: 150, deadHostAttemptsPerS: 20 };
const RESULTS_FILE = join(ROOT, "bench", "results", "failover.json");
const CHART_FILE = join(ROOT, "bench", "failover.svg");

/** Both lags as bars (mean) with whiskers (worst), on the readiness chart's log scale. */
function draw(wait: Summary, pool: Summary): string {
  return chart(
    { "(a) init-database.ts --wait-only exits": wait, "(b) first write through connect()": pool },
    "Failover: time from the promoted server's first possible write (bar: mean, whisker: worst; log scale)",
  );
}

/** The first moment the promoted standby accepts a write, from one session polling every 2 ms. */
async function firstPossibleWrite(standby: Cluster): Promise<number> {
  const sql = postgres({ host: standby.host, port: standby.port, user: standby.user, password: PASSWORD, database: "postgres", max: 1, fetch_types: false, onnotice: () => {} });
  try {
    for (;;) {
      const ok = await sql`select txid_current()`.then(() => true, () => false);
      if (ok) return wallClock();
      await Bun.sleep(REFERENCE_POLL_MS);
    }
  } finally {
    await sql.end({ timeout: 0 });
  }
}

/** Insert through the pool as fast as it answers; resolves with the first success after `after`. */
function firstPoolWrite(sql: postgres.Sql, after: number, stop: { stopped: boolean }): Promise<number | undefined> {
  return (async () => {
    while (!stop.stopped) {
      const startedAt = wallClock();
      const ok = await sql`insert into ticks default values`.then(() => true, () => false);
      if (ok && startedAt > after) return wallClock();
      await Bun.sleep(1);
    }
    return undefined;
  })();
}

interface Round {
  waitLagMs: number;
  poolLagMs: number;
  waitAttemptsPerS: number;
  poolAttemptsPerS: number;
  promotedAfterMs: number;
}

async function round(primary: Cluster, standby: Cluster): Promise<Round> {
  const proxy = await FaultProxy.start({ host: primary.host, port: primary.port });
  const hosts = (first: number) => `postgres://${primary.user}:${PASSWORD}@127.0.0.1:${first},127.0.0.1:${standby.port}/postgres?target_session_attrs=read-write`;
  const pool = await connect({ url: hosts(proxy.port), timeout: 10, connectTimeout: 5 }, { max: 4 }, {});
  const stop = { stopped: false };
  try {
    await pool`insert into ticks default values`;
    await primary.stop("immediate");
    const killedAt = wallClock();
    const acceptedBefore = proxy.accepted;
    const poolWrite = firstPoolWrite(pool, killedAt, stop);
    const waiter = timed([process.execPath, "init-database.ts", "--wait-only", "--json", "--timeout", "30"], { DATABASE_URL: hosts(primary.port) });
    const reference = firstPossibleWrite(standby);
    const promotedAfterMs = 500 + Math.random() * 1000;
    await Bun.sleep(promotedAfterMs);
    await standby.promote();
    const writableAt = await reference;
    const [waited, poolWroteAt] = await Promise.all([waiter, poolWrite]);
    if (waited.code !== 0 || poolWroteAt === undefined) throw new Error(`--wait-only exited ${waited.code}`);
    const attempts = waited.stdout.split("\n").filter((line) => line.includes(`"event":"attempt"`)).length;
    return {
      waitLagMs: waited.endedAt - writableAt,
      poolLagMs: poolWroteAt - writableAt,
      waitAttemptsPerS: attempts / ((waited.endedAt - killedAt) / 1000),
      poolAttemptsPerS: (proxy.accepted - acceptedBefore) / ((poolWroteAt - killedAt) / 1000),
      promotedAfterMs,
    };
  } finally {
    stop.stopped = true;
    await pool.end({ timeout: 1 }).catch(() => {});
    await proxy.close();
  }
}

export async function main(argv: string[]): Promise<number> {
  let rounds: number;
  try {
    const { values } = parseArgs({ args: argv, options: { rounds: { type: "string", default: "10" }, "chart-only": { type: "boolean" } }, strict: true });
    if (values["chart-only"]) {
      const saved = JSON.parse(readFileSync(RESULTS_FILE, "utf8"));
      writeFileSync(CHART_FILE, draw(saved.wait, saved.pool));
      return 0;
    }
    rounds = Number(values.rounds);
    if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds ${values.rounds}: a whole number, 1 or more`);
  } catch (error) {
    console.error(`error: ${(error as Error).message}\nusage: bun bench/failover.ts [--rounds N] | --chart-only`);
    return 2;
  }
  let primary = await Cluster.create({ password: PASSWORD });
  const version = primary.version;
  let standby: Cluster | undefined;
  const results: Round[] = [];
  try {
    await primary.query("create table ticks (at timestamptz not null default clock_timestamp())");
    for (let index = 0; index < rounds; index++) {
      standby = await primary.createStandby();
      results.push(await round(primary, standby));
      await primary.destroy();
      primary = standby;
      standby = undefined;
      const last = results.at(-1)!;
      console.error(`round ${index + 1}/${rounds}: --wait-only ${last.waitLagMs.toFixed(0)} ms, pool ${last.poolLagMs.toFixed(0)} ms after the first possible write`);
    }
  } catch (error) {
    console.error(`error: ${(error as Error).message}`);
    return 1;
  } finally {
    await standby?.destroy();
    await primary.destroy();
  }
  const wait = summarise(results.map((result) => result.waitLagMs));
  const pool = summarise(results.map((result) => result.poolLagMs));
  const rate = (values: number[]) => Math.max(...values).toFixed(1);
  console.log(`failover, ${rounds} rounds, ${machine()}, PostgreSQL ${version}`);
  console.log(table([
    ["after the first possible write", "mean ms", "median ms", "worst ms", "attempts/s on the dead host (worst round)"],
    ["(a) init-database.ts --wait-only exits", wait.mean.toFixed(0), wait.median.toFixed(0), wait.worst.toFixed(0), rate(results.map((result) => result.waitAttemptsPerS))],
    ["(b) first write through a connect() pool", pool.mean.toFixed(0), pool.median.toFixed(0), pool.worst.toFixed(0), rate(results.map((result) => result.poolAttemptsPerS))],
  ]));
  console.log(`targets: (a) ${TARGETS.waitMeanMs} ms mean, ${TARGETS.waitWorstMs} ms worst; (b) ${TARGETS.poolWorstMs} ms worst; at most ${TARGETS.deadHostAttemptsPerS} attempts/s on a dead host`);
  writeFileSync(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), machine: machine(), rounds, wait, pool, targets: TARGETS, results }, null, 2) + "\n");
  writeFileSync(CHART_FILE, draw(wait, pool));
  return 0;
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
