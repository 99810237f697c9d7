#!/usr/bin/env bun
/**
 * What applying a real dump costs: `init-database.ts --schema dump.sql` against
 * `psql -1 -v ON_ERROR_STOP=1 -f dump.sql` (the real binary, /usr/lib/postgresql/15/bin/psql)
 * on the same file, each into a fresh database, alternating, timed from spawn to exit, with
 * each process's peak memory (max RSS). The dump is made here by pg_dump 15 from a database the
 * bench fills: tables with keys, foreign keys, indexes, an enum, functions and a view, plus a
 * few MB of COPY data.
 *
 * Usage: bun bench/apply.ts [--runs N] [--rows N]    (writes bench/results/apply.json)
 * Needs: Debian's postgresql-client-15 and GNU time (apt-get install postgresql-client-15 time).
 * Exit codes: 0 measured, 1 a run failed, 2 psql, pg_dump or GNU time is missing.
 * Example: bun bench/apply.ts --runs 10
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Cluster } from "../tests/cluster.ts";
import { machine, ROOT, summarise, table } from "./support.ts";

const PG15 = "/usr/lib/postgresql/15/bin";
const GNU_TIME = "/usr/bin/time";
const TARGET_RATIO = 1.5;

/** A schema like a small service's, filled by the server itself (generate_series). */
const SOURCE = (rows: number) => `
create type order_status as enum ('pending', 'paid', 'shipped', 'cancelled');
create table customers (
  id bigint generated always as identity primary key,
  email text not null unique,
  name text not null,
  bio text,
  created_at timestamptz not null default now()
);
create table orders (
  id bigint generated always as identity primary key,
  customer_id bigint not null references customers (id),
  status order_status not null default 'pending',
  total_cents bigint not null check (total_cents >= 0),
  note text,
  created_at timestamptz not null default now()
);
create index orders_customer_idx on orders (customer_id);
create index orders_status_created_idx on orders (status, created_at);
create table events (id bigint generated always as identity primary key, order_id bigint references orders (id), payload jsonb not null);
create function order_total(c bigint) returns bigint language sql stable as $$ select coalesce(sum(total_cents), 0) from orders where customer_id = c $$;
create function touch() returns trigger language plpgsql as $fn$ begin new.created_at := now(); return new; end; $fn$;
create trigger orders_touch before update on orders for each row execute function touch();
create view big_spenders as select c.id, c.email, order_total(c.id) as total from customers c where order_total(c.id) > 100000;
insert into customers (email, name, bio)
  select 'user' || g || '@example.com', 'Name ' || g, E'line one\\tand a tab; and a backslash \\\\ and a quote '' ' || md5(g::text)
    from generate_series(1, ${rows}) g;
insert into orders (customer_id, status, total_cents, note)
  select 1 + (g % ${rows}), (array['pending', 'paid', 'shipped', 'cancelled']::order_status[])[1 + g % 4], g * 7 % 100000,
         case when g % 5 = 0 then null else 'note ' || md5(g::text) end
    from generate_series(1, ${rows * 2}) g;
insert into events (order_id, payload) select g, jsonb_build_object('kind', 'created', 'n', g, 'tags', jsonb_build_array('a', 'b')) from generate_series(1, ${rows}) g;
`;

interface Measured {
  ms: number;
  maxRssKb: number;
  /** User plus system CPU of the client process: what load changes least. */
  cpuMs: number;
}

/**
 * Run to exit, timed from spawn. Peak memory and CPU come from GNU time (%M: the process's own
 * max RSS in KB; %U %S: its CPU seconds): Bun's resourceUsage() reported the largest RSS of all
 * children so far.
 */
async function measure(command: string[], env: Record<string, string>): Promise<Measured> {
  const startedAt = performance.now();
  const child = Bun.spawn([GNU_TIME, "-f", "%M %U %S", ...command], { cwd: ROOT, env: { ...process.env, ...env }, stdout: "ignore", stderr: "pipe", stdin: "ignore" });
  const [stderr, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
  const ms = performance.now() - startedAt;
  if (code !== 0) throw new Error(`${command[0]} exited ${code}: ${stderr.slice(0, 2000)}`);
  const [maxRssKb, user, system] = stderr.trim().split("\n").at(-1)!.split(" ").map(Number);
  return { ms, maxRssKb: maxRssKb!, cpuMs: (user! + system!) * 1000 };
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: "string", default: "10" }, rows: { type: "string", default: "20000" } }, strict: true });
  const runs = Number(values.runs);
  for (const [tool, from] of [[join(PG15, "psql"), "postgresql-client-15"], [join(PG15, "pg_dump"), "postgresql-client-15"], [GNU_TIME, "time"]] as const) {
    if (!existsSync(tool)) {
      console.error(`error: ${tool} is missing: apt-get install ${from}`);
      return 2;
    }
  }
  const cluster = await Cluster.create({ database: "source" });
  const dir = mkdtempSync(join(tmpdir(), "apply-"));
  try {
    await cluster.query(SOURCE(Number(values.rows)));
    const dumpFile = join(dir, "dump.sql");
    const pgEnv = { PGPASSWORD: cluster.password };
    const connection = ["-h", cluster.host, "-p", String(cluster.port), "-U", cluster.user];
    writeFileSync(dumpFile, execFileSync(join(PG15, "pg_dump"), [...connection, "source"], { env: { ...process.env, ...pgEnv }, maxBuffer: 1 << 30 }));
    const bytes = statSync(dumpFile).size;
    const kit = (database: string) => measure([process.execPath, "init-database.ts", "--quiet", "--schema", dumpFile], { DATABASE_URL: cluster.url({ database }) });
    const psql = (database: string) =>
      measure([join(PG15, "psql"), "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", ...connection, "-d", database, "-f", dumpFile], { ...pgEnv, PGOPTIONS: "--client-min-messages=warning" });
    let made = 0;
    /** Time `apply` into a new, empty database, made and dropped outside the timing. */
    const fresh = async (apply: (database: string) => Promise<Measured>) => {
      const database = `apply_${++made}`;
      await cluster.createDatabase(database);
      try {
        return await apply(database);
      } finally {
        await cluster.query(`drop database ${database}`, "postgres");
      }
    };
    await fresh(kit);
    await fresh(psql);
    const ours: Measured[] = [];
    const theirs: Measured[] = [];
    for (let run = 0; run < runs; run++) {
      // Alternate which goes first, so neither always follows the other's checkpoint or cache.
      if (run % 2 === 0) {
        ours.push(await fresh(kit));
        theirs.push(await fresh(psql));
      } else {
        theirs.push(await fresh(psql));
        ours.push(await fresh(kit));
      }
    }
    const time = [summarise(ours.map((run) => run.ms)), summarise(theirs.map((run) => run.ms))] as const;
    const memory = [summarise(ours.map((run) => run.maxRssKb / 1024)), summarise(theirs.map((run) => run.maxRssKb / 1024))] as const;
    const cpu = [summarise(ours.map((run) => run.cpuMs)), summarise(theirs.map((run) => run.cpuMs))] as const;
    const ratio = time[0].median / time[1].median;
    console.log(`apply a pg_dump file of ${(bytes / 1e6).toFixed(1)} MB (schema + COPY data) into a fresh database, ${runs} runs each, alternating (${machine()}, load average ${(await Bun.file("/proc/loadavg").text()).split(" ")[0]})`);
    console.log(table([
      ["command", "median ms", "mean ms", "worst ms", "client CPU ms (median)", "peak RSS MB (median)", "vs psql"],
      ["init-database.ts --schema dump.sql", time[0].median.toFixed(0), time[0].mean.toFixed(0), time[0].worst.toFixed(0), cpu[0].median.toFixed(0), memory[0].median.toFixed(0), `${ratio.toFixed(2)}x`],
      ["psql -1 -v ON_ERROR_STOP=1 -f dump.sql", time[1].median.toFixed(0), time[1].mean.toFixed(0), time[1].worst.toFixed(0), cpu[1].median.toFixed(0), memory[1].median.toFixed(0), "1.00x"],
    ]));
    console.log(`target: at most ${TARGET_RATIO}x psql: ${ratio <= TARGET_RATIO ? "met" : "NOT met"}`);
    writeFileSync(join(ROOT, "bench", "results", "apply.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), bytes, runs, kit: ours, psql: theirs, ratio }, null, 2) + "\n");
    return 0;
  } catch (error) {
    console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
    return 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await cluster.destroy();
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
