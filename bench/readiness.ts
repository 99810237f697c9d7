#!/usr/bin/env bun
/**
 * How soon does each waiter notice that PostgreSQL is ready? A throwaway server is started
 * after a series of delays while the waiters run side by side; each waiter's lag is measured
 * from the first success of a reference poller (an authenticated SELECT 1 every 2 ms) to the
 * moment the waiter's process exits. Also: connection attempts a second against a closed port.
 *
 * Waiters: init-database.ts --wait-only; `until pg_isready; do sleep 1; done`; the original
 * script's schedule (1 s, x1.5, cap 30 s, 10 attempts); Compose health checks computed from
 * their timing rules (interval 10 s as in the original; start_interval 1 s as in ours).
 *
 * With --pooler the waiters are init-database.ts --wait-only directly and through a PgBouncer
 * (tests/pgbouncer.ts, transaction mode, started with the server down) with its stock
 * server_login_retry (15 s) and with server_login_retry = 1: the pooler decides when it tries
 * PostgreSQL again, so that setting bounds how soon anything behind it can notice.
 *
 * Usage: bun bench/readiness.ts [--rounds N]    (writes bench/results/readiness.json and bench/readiness.svg)
 *        bun bench/readiness.ts --pooler [--rounds N]   (writes bench/results/readiness-pooler.json)
 *        bun bench/readiness.ts --chart-only     (redraws the chart from the saved results)
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Cluster, freePort } from "../tests/cluster.ts";
import { PgBouncer } from "../tests/pgbouncer.ts";
import { chart, machine, ROOT, summarise, table, timed, wallClock } from "./support.ts";

const DELAYS_S = [0.7, 1.0, 1.6, 2.3, 3.2, 4.1, 5.2, 6.4];
const CLOSED_PORT_SECONDS = 3;
const CHART_TITLE = 'Time from "database can answer" to "waiter noticed" (bar: mean, whisker: worst; log scale)';
/** The real binary: Debian's /usr/bin/pg_isready is a Perl wrapper that adds about 20 ms a call. */
const PG_ISREADY = [...new Bun.Glob("/usr/lib/postgresql/*/bin/pg_isready").scanSync("/")].sort().at(-1) ?? Bun.which("pg_isready") ?? "pg_isready";

interface Waiter {
  name: string;
  command: (port: number) => string[];
  /** Wait through a PgBouncer with these settings, started for the trial before the server. */
  pooler?: Record<string, string>;
}

const WAITERS: Waiter[] = [
  { name: "init-database.ts --wait-only", command: () => [process.execPath, "init-database.ts", "--wait-only", "--quiet", "--timeout", "60"] },
  { name: "until pg_isready; sleep 1", command: (port) => ["bash", "-c", `until "${PG_ISREADY}" -q -h 127.0.0.1 -p ${port}; do echo attempt; sleep 1; done`] },
  { name: "original schedule (1 s x1.5)", command: () => [process.execPath, "bench/original-schedule.ts"] },
];

const POOLER_WAITERS: Waiter[] = [
  WAITERS[0]!,
  { ...WAITERS[0]!, name: "--wait-only through PgBouncer, stock (server_login_retry 15 s)", pooler: {} },
  { ...WAITERS[0]!, name: "--wait-only through PgBouncer, server_login_retry = 1", pooler: { server_login_retry: "1" } },
];

/** A Compose health check notices at its first run after the server is ready. */
function healthCheckLag(readyAfterMs: number, intervalMs: number): number {
  return Math.ceil(readyAfterMs / intervalMs) * intervalMs - readyAfterMs;
}

async function trial(cluster: Cluster, delayS: number, waiters: Waiter[]) {
  const env = { DATABASE_URL: cluster.url() };
  const bouncers = await Promise.all(waiters.map((waiter) => (waiter.pooler ? PgBouncer.start({ cluster, poolMode: "transaction", settings: waiter.pooler }) : undefined)));
  try {
    const startedAt = wallClock();
    const reference = timed([process.execPath, "bench/reference-poller.ts"], env);
    const running = waiters.map((waiter, index) => timed(waiter.command(cluster.port), bouncers[index] ? { DATABASE_URL: bouncers[index].url() } : env));
    await Bun.sleep(delayS * 1000);
    await cluster.start({ wait: false });
    const readyAt = Number((await reference).stdout.trim());
    const ended = await Promise.all(running);
    await cluster.stop("fast");
    const lags: Record<string, number> = {};
    waiters.forEach((waiter, index) => (lags[waiter.name] = ended[index]!.endedAt - readyAt));
    if (waiters === WAITERS) {
      lags["Compose health check, interval 10 s"] = healthCheckLag(readyAt - startedAt, 10_000);
      lags["Compose health check, start_interval 1 s"] = healthCheckLag(readyAt - startedAt, 1_000);
    }
    return lags;
  } finally {
    await Promise.all(bouncers.map((bouncer) => bouncer?.destroy()));
  }
}

/** Attempts a second each waiter makes while nothing listens. */
async function closedPortRates(): Promise<Record<string, number>> {
  const port = await freePort();
  const env = { DATABASE_URL: `postgres://nobody:x@127.0.0.1:${port}/none` };
  const rates: Record<string, number> = {};
  await Promise.all(WAITERS.map(async (waiter) => {
    const command = waiter.name.startsWith("init-database")
      ? [process.execPath, "init-database.ts", "--wait-only", "--json", "--timeout", String(CLOSED_PORT_SECONDS)]
      : ["timeout", String(CLOSED_PORT_SECONDS), ...waiter.command(port)];
    const run = await timed(command, env);
    const attempts = run.stdout.split("\n").filter((line) => line.includes("attempt")).length;
    rates[waiter.name] = attempts / CLOSED_PORT_SECONDS;
  }));
  return rates;
}


export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { rounds: { type: "string", default: "1" }, "chart-only": { type: "boolean" }, pooler: { type: "boolean" } }, strict: true });
  const rounds = Number(values.rounds);
  if (values.pooler) return poolerMain(rounds);
  const resultsFile = join(ROOT, "bench", "results", "readiness.json");
  const chartFile = join(ROOT, "bench", "readiness.svg");
  if (values["chart-only"]) {
    writeFileSync(chartFile, chart(JSON.parse(readFileSync(resultsFile, "utf8")).results, CHART_TITLE));
    return 0;
  }
  const cluster = await Cluster.create({ start: false });
  try {
    const results = await startUps(cluster, rounds, WAITERS);
    const rates = await closedPortRates();
    console.log(`readiness lag after the reference poller (${machine()}, ${new Date().toISOString().slice(0, 10)}, ${DELAYS_S.length * rounds} start-ups from ${DELAYS_S[0]} to ${DELAYS_S.at(-1)} s)`);
    console.log(table([
      ["waiter", "mean ms", "median ms", "worst ms", "attempts/s on a closed port"],
      ...Object.entries(results).map(([name, summary]) => [
        name, summary.mean.toFixed(0), summary.median.toFixed(0), summary.worst.toFixed(0),
        rates[name] === undefined ? "-" : rates[name]!.toFixed(1),
      ]),
    ]));
    writeFileSync(resultsFile, JSON.stringify({ date: new Date().toISOString(), machine: machine(), delays_s: DELAYS_S, rounds, results, closed_port_attempts_per_s: rates }, null, 2) + "\n");
    writeFileSync(chartFile, chart(results, CHART_TITLE));
    const ours = results[WAITERS[0]!.name]!;
    const rate = rates[WAITERS[0]!.name]!;
    const met = ours.mean <= 40 && ours.worst <= 75 && rate <= 20;
    console.log(`target (mean <= 40 ms, worst <= 75 ms, <= 20 attempts/s): ${met ? "met" : "NOT met"}`);
    return 0;
  } finally {
    await cluster.destroy();
  }
}

/** Every delay of DELAYS_S, `rounds` times: each waiter's lags, summarised per waiter. */
async function startUps(cluster: Cluster, rounds: number, waiters: Waiter[]) {
  const samples: Record<string, number[]> = {};
  for (let round = 0; round < rounds; round++) {
    for (const delayS of DELAYS_S) {
      const lags = await trial(cluster, delayS, waiters);
      for (const [name, lag] of Object.entries(lags)) (samples[name] ??= []).push(lag);
      console.error(`delay ${delayS} s: ${Object.entries(lags).map(([name, lag]) => `${name} ${Math.round(lag)} ms`).join(", ")}`);
    }
  }
  return Object.fromEntries(Object.entries(samples).map(([name, values]) => [name, summarise(values)]));
}

/** --pooler: the same start-ups, waiting directly and through PgBouncer. */
async function poolerMain(rounds: number): Promise<number> {
  const cluster = await Cluster.create({ start: false });
  try {
    const results = await startUps(cluster, rounds, POOLER_WAITERS);
    console.log(`readiness lag through ${await PgBouncer.version()} after the reference poller (${machine()}, ${new Date().toISOString().slice(0, 10)}, ${DELAYS_S.length * rounds} start-ups from ${DELAYS_S[0]} to ${DELAYS_S.at(-1)} s)`);
    console.log(table([
      ["waiter", "mean ms", "median ms", "worst ms"],
      ...Object.entries(results).map(([name, summary]) => [name, summary.mean.toFixed(0), summary.median.toFixed(0), summary.worst.toFixed(0)]),
    ]));
    writeFileSync(join(ROOT, "bench", "results", "readiness-pooler.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), pgbouncer: await PgBouncer.version(), delays_s: DELAYS_S, rounds, results }, null, 2) + "\n");
    return 0;
  } finally {
    await cluster.destroy();
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
