#!/usr/bin/env bun
/**
 * The kit against dbmate on one folder in dbmate's layout: `init-database.ts --migrations DIR`
 * and the real dbmate binary (the npm package's Linux build), on the same server, alternating,
 * timed from spawn to exit. dbmate twice: `dbmate up` as its defaults run it (it then writes
 * db/schema.sql with pg_dump, here the real PostgreSQL 15 binary, not Debian's wrapper), and
 * `dbmate --no-dump-schema up`, dbmate's floor. The kit twice too: `bun run init-database.ts`
 * and its shipped form, the executable the Dockerfile's build line makes (`bun build --compile
 * --bytecode`, built once per run into a temp dir). The targets are against `dbmate up`.
 *   - first apply, each run into a fresh empty database;
 *   - re-run on an up-to-date database (what every service start costs);
 *   - ten processes at once on an empty database: how many exit 0, and whether every
 *     migration was applied exactly once.
 * The folder (--migrations N files, 39 by default) is made here: tables with keys and foreign
 * keys, indexes (one built concurrently, in a transaction:false file), added columns, seed rows
 * and a view, each file with a down section that would drop what it built.
 *
 * Usage: bun bench/vs-dbmate.ts [--runs N] [--migrations N]    (writes bench/results/vs-dbmate.json)
 * Exit codes: 0 measured, 1 a run failed, 2 dbmate's binary is missing (npm ci).
 * Example: bun bench/vs-dbmate.ts --runs 15
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Cluster } from "../tests/cluster.ts";
import { buildExecutables } from "../tests/executable.ts";
import { machine, ROOT, summarise, table, timed, type Summary } from "./support.ts";

const DBMATE = join(ROOT, "node_modules", "@dbmate", "linux-x64", "bin", "dbmate");
const PG_BIN = "/usr/lib/postgresql/15/bin";
const TARGETS = { firstApply: 1.0, rerun: 0.5 };

/** Migration `index` of a folder like a small service's, in dbmate's layout. */
function migration(index: number): { name: string; text: string } {
  const table = `t${String(Math.floor(index / 3)).padStart(2, "0")}`;
  const version = `2024${String(1 + Math.floor(index / 28)).padStart(2, "0")}${String(1 + (index % 28)).padStart(2, "0")}093000`;
  const kinds = [
    {
      name: `create_${table}`,
      up: `create table ${table} (\n  id bigint generated always as identity primary key,\n  ${index >= 3 ? `parent_id bigint references t${String(Math.floor(index / 3) - 1).padStart(2, "0")} (id),\n  ` : ""}name text not null,\n  created_at timestamptz not null default now()\n);\ninsert into ${table} (name) select 'row ' || g from generate_series(1, 50) g;`,
      down: `drop table ${table};`,
    },
    { name: `index_${table}_name`, up: `create index ${table}_name_idx on ${table} (name);`, down: `drop index ${table}_name_idx;` },
    {
      name: `add_${table}_status`,
      up: `alter table ${table} add column status text not null default 'active'\n  check (status in ('active', 'archived'));\ncreate view ${table}_active as select id, name from ${table} where status = 'active';`,
      down: `drop view ${table}_active;\nalter table ${table} drop column status;`,
    },
  ];
  const kind = kinds[index % 3]!;
  // One file in the folder builds its index concurrently, outside a transaction, as teams do on big tables.
  if (index === 7) return { name: `${version}_${kind.name}.sql`, text: `-- migrate:up transaction:false\ncreate index concurrently ${table}_created_idx on ${table} (created_at);\n\n-- migrate:down transaction:false\ndrop index concurrently ${table}_created_idx;\n` };
  return { name: `${version}_${kind.name}.sql`, text: `-- migrate:up\n${kind.up}\n\n-- migrate:down\n${kind.down}\n` };
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: "string", default: "15" }, migrations: { type: "string", default: "39" } }, strict: true });
  const runs = Number(values.runs);
  const count = Number(values.migrations);
  if (!existsSync(DBMATE)) {
    console.error(`error: ${DBMATE} is missing: run npm ci (dbmate is a dev dependency)`);
    return 2;
  }
  const shipped = buildExecutables();
  const cluster = await Cluster.create({ database: "postgres" });
  const dir = mkdtempSync(join(tmpdir(), "vs-dbmate-"));
  try {
    const folder = join(dir, "db", "migrations");
    mkdirSync(folder, { recursive: true });
    for (let index = 0; index < count; index++) {
      const { name, text } = migration(index);
      writeFileSync(join(folder, name), text);
    }
    let databases = 0;
    const fresh = async () => {
      const name = `bench_${++databases}`;
      await cluster.createDatabase(name);
      return name;
    };
    const kit = (database: string) => timed([process.execPath, "init-database.ts", "--quiet", "--migrations", folder], { DATABASE_URL: cluster.url({ database }) });
    const kitShipped = (database: string) => timed([shipped.initDatabase, "--quiet", "--migrations", folder], { DATABASE_URL: cluster.url({ database }) });
    const dbmateRun = (database: string, ...flags: string[]) =>
      timed([DBMATE, "--url", `${cluster.url({ database })}?sslmode=disable`, "--migrations-dir", folder, "--schema-file", join(dir, "schema.sql"), ...flags, "up"], { PATH: `${PG_BIN}:${process.env.PATH}` });
    const dbmate = (database: string) => dbmateRun(database);
    const dbmateNoDump = (database: string) => dbmateRun(database, "--no-dump-schema");
    const applied = async (database: string) => (await cluster.query<{ n: number; distinct: number }>(`select count(*)::int as n, count(distinct version)::int as distinct from schema_migrations`, database))[0]!;
    const check = async (what: string, run: { code: number }, database: string) => {
      const rows = await applied(database);
      if (run.code !== 0 || rows.n !== count || rows.distinct !== count) throw new Error(`${what}: exit ${run.code}, ${rows.n} rows in schema_migrations (${count} expected)`);
    };

    const tools = { kit, kitShipped, dbmate, dbmateNoDump };
    type Name = keyof typeof tools;
    const names = Object.keys(tools) as Name[];
    // Warm the page cache and the binaries once.
    for (const name of names) {
      const database = await fresh();
      await check("warm-up", await tools[name](database), database);
    }

    const first = { kit: [] as number[], kitShipped: [] as number[], dbmate: [] as number[], dbmateNoDump: [] as number[] };
    const upToDate = { kit: await fresh(), kitShipped: await fresh(), dbmate: await fresh(), dbmateNoDump: await fresh() };
    for (let run = 0; run < runs; run++) {
      for (const name of names) {
        const database = run === 0 ? upToDate[name] : await fresh();
        const result = await tools[name](database);
        await check(`first apply (${name}, run ${run})`, result, database);
        first[name].push(result.ms);
      }
    }

    const rerun = { kit: [] as number[], kitShipped: [] as number[], dbmate: [] as number[], dbmateNoDump: [] as number[] };
    for (let run = 0; run < runs; run++) {
      for (const name of names) {
        const result = await tools[name](upToDate[name]);
        if (result.code !== 0) throw new Error(`re-run ${run}: ${name} exit ${result.code}`);
        rerun[name].push(result.ms);
      }
    }

    const replicas = async (tool: typeof kit) => {
      const database = await fresh();
      const results = await Promise.all(Array.from({ length: 10 }, () => tool(database)));
      const rows = await applied(database).catch(() => ({ n: 0, distinct: 0 }));
      return { ok: results.filter((result) => result.code === 0).length, appliedOnce: rows.n === count && rows.distinct === count };
    };
    const crowd = { kit: await replicas(kit), dbmate: await replicas(dbmateNoDump) };

    const summaries = (times: Record<Name, number[]>) => Object.fromEntries(names.map((name) => [name, summarise(times[name])])) as Record<Name, Summary>;
    const figures = { first: summaries(first), rerun: summaries(rerun) };
    const ratio = (set: Record<Name, Summary>, baseline: Name = "dbmate", kitForm: Name = "kit") => set[kitForm].median / set[baseline].median;
    const row = (what: string, set: Record<Name, Summary>, target: number, kitForm: Name) => [
      `${what}, ${kitForm === "kit" ? "bun run" : "shipped executable"}`, set[kitForm].median.toFixed(1), set.dbmate.median.toFixed(1), set.dbmateNoDump.median.toFixed(1),
      `${ratio(set, "dbmate", kitForm).toFixed(2)}x`, `${ratio(set, "dbmateNoDump", kitForm).toFixed(2)}x`, `<= ${target}x: ${ratio(set, "dbmate", kitForm) <= target ? "met" : "NOT met"}`,
    ];
    const load = loadavg().map((value) => value.toFixed(2)).join(", ");
    console.log(`init-database.ts vs dbmate ${DBMATE.includes("linux-x64") ? "(npm @dbmate/linux-x64)" : ""} on ${count} migrations (${machine()}, load ${load}, ${new Date().toISOString().slice(0, 10)}, ${runs} runs each, medians)`);
    console.log(table([
      ["case", "kit ms", "dbmate up ms", "--no-dump-schema ms", "kit / dbmate up", "kit / --no-dump-schema", "target (vs dbmate up)"],
      row("first apply, empty database", figures.first, TARGETS.firstApply, "kit"),
      row("first apply, empty database", figures.first, TARGETS.firstApply, "kitShipped"),
      row("re-run, up to date", figures.rerun, TARGETS.rerun, "kit"),
      row("re-run, up to date", figures.rerun, TARGETS.rerun, "kitShipped"),
    ]));
    console.log(`ten at once on an empty database: kit ${crowd.kit.ok} of 10 exit 0${crowd.kit.appliedOnce ? ", each migration once" : ", NOT each once"}; dbmate ${crowd.dbmate.ok} of 10 exit 0${crowd.dbmate.appliedOnce ? ", each migration once" : ""}`);
    writeFileSync(join(ROOT, "bench", "results", "vs-dbmate.json"), JSON.stringify({
      date: new Date().toISOString(), machine: machine(), load, runs, migrations: count, ...figures,
      ratios: {
        first: ratio(figures.first), rerun: ratio(figures.rerun), first_no_dump: ratio(figures.first, "dbmateNoDump"), rerun_no_dump: ratio(figures.rerun, "dbmateNoDump"),
        first_shipped: ratio(figures.first, "dbmate", "kitShipped"), rerun_shipped: ratio(figures.rerun, "dbmate", "kitShipped"),
        rerun_shipped_no_dump: ratio(figures.rerun, "dbmateNoDump", "kitShipped"),
      },
      ten_at_once: crowd,
    }, null, 2) + "\n");
    return crowd.kit.ok === 10 && crowd.kit.appliedOnce ? 0 : 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(shipped.dir, { recursive: true, force: true });
    await cluster.destroy();
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
