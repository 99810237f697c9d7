#!/usr/bin/env bun
/**
 * Real projects' migration folders, each applied by the kit on a throwaway PostgreSQL 15 and
 * set beside what its own tool does. Not a test: the folders come from public repositories
 * (copied by hand to a scratch place, never into this one) and CI has no network.
 *
 * For each `LAYOUT=PATH` given:
 *   - the layout the kit recognises (its `layout` event), against the one expected;
 *   - the kit's apply into an empty database: exit, steps applied, time; then a re-run, which
 *     must apply nothing;
 *   - where the tool runs here (dbmate and drizzle-kit, from npm): the tool applies the same
 *     folder into another database and the two schemas are compared (the real pg_dump 15,
 *     `--schema-only`, history tables left out); then the tool applies the first half, the kit
 *     the rest, and the tool must find nothing pending;
 *   - elsewhere, what the tool's documentation predicts: the count of up parts it would apply
 *     (counted here from the file names, apart from the kit's reading), and no object that a
 *     down part drops missing (unless an up part drops it too).
 * `LAYOUT=PATH,SETUP.sql` runs SETUP.sql first in every database (what the project's own set-up
 * makes before its migrations: a schema, roles, extensions). `LAYOUT@TABLE=PATH` is a project
 * that keeps its tool's history under another name (dbmate's --migrations-table): the kit is
 * given `--history-table TABLE`, dbmate `--migrations-table TABLE`.
 *
 * Usage: bun bench/real-folders.ts LAYOUT[@TABLE]=PATH[,SETUP.sql] ...   (writes bench/results/real-folders.json)
 * Exit codes: 0 every folder as expected, 1 one was not, 2 bad arguments.
 * Example: bun bench/real-folders.ts dbmate@dbmate.schema_migrations=/work/scratch20/dbmate-measure,/work/scratch20/measure-setup.sql
 */
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { LAYOUT_NAMES } from "../init-database.ts";
import { Cluster } from "../tests/cluster.ts";
import { machine, ROOT, table, timed } from "./support.ts";

const PG_BIN = "/usr/lib/postgresql/15/bin";
const DBMATE = join(ROOT, "node_modules", "@dbmate", "linux-x64", "bin", "dbmate");
const DRIZZLE_KIT = join(ROOT, "node_modules", ".bin", "drizzle-kit");
/** Tables the tools and the kit keep their records in: left out of the schema comparison. */
const HISTORY_TABLES = ["schema_migrations", "init_database_migrations", "drizzle.__drizzle_migrations"];
/** With a history under another name, only that name is left out: a default-named table made by mistake shows in the comparison. */
const historyTables = (history: string | undefined) => (history ? [history, "init_database_migrations"] : HISTORY_TABLES);

/**
 * Each tool's documented file rules, kept apart from MIGRATION_LAYOUTS so that the kit's reading
 * is checked, not repeated: which entries are up parts, and where the down parts are.
 */
const DOCUMENTED: Record<string, { ups: (dir: string) => string[]; downs: (dir: string) => string[] }> = {
  "golang-migrate": { ups: (dir) => files(dir).filter((file) => /^\d+_.*\.up\.sql$/.test(file)), downs: (dir) => files(dir).filter((file) => file.endsWith(".down.sql")).map((file) => read(dir, file)) },
  dbmate: { ups: (dir) => files(dir).filter((file) => /^\d+.*\.sql$/.test(file)), downs: (dir) => files(dir).map((file) => read(dir, file).split(/^--\s*migrate:down.*$/m)[1] ?? "") },
  goose: { ups: (dir) => files(dir).filter((file) => /^\d+_.*\.sql$/.test(file)), downs: (dir) => files(dir).map((file) => read(dir, file).split(/^--\s*\+goose\s+Down.*$/im)[1] ?? "") },
  flyway: { ups: (dir) => files(dir).filter((file) => /^(V\d+([._]\d+)*|R)__.+\.sql$/.test(file)), downs: (dir) => files(dir).filter((file) => /^U\d/.test(file)).map((file) => read(dir, file)) },
  prisma: { ups: (dir) => dirs(dir).filter((sub) => existsSync(join(dir, sub, "migration.sql"))), downs: (dir) => dirs(dir).filter((sub) => existsSync(join(dir, sub, "down.sql"))).map((sub) => read(dir, sub, "down.sql")) },
  diesel: { ups: (dir) => dirs(dir).filter((sub) => existsSync(join(dir, sub, "up.sql"))), downs: (dir) => dirs(dir).filter((sub) => existsSync(join(dir, sub, "down.sql"))).map((sub) => read(dir, sub, "down.sql")) },
  supabase: { ups: (dir) => files(dir).filter((file) => /^\d+_.*\.sql$/.test(file)), downs: () => [] },
  drizzle: { ups: (dir) => JSON.parse(read(dir, "meta", "_journal.json")).entries.map((entry: { tag: string }) => entry.tag), downs: () => [] },
};

const files = (dir: string) => readdirSync(dir).filter((name) => statSync(join(dir, name)).isFile()).sort();
const dirs = (dir: string) => readdirSync(dir).filter((name) => statSync(join(dir, name)).isDirectory()).sort();
const read = (...path: string[]) => readFileSync(join(...path), "utf8");
const TABLE_NAME = String.raw`((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)`;
/** A table name as PostgreSQL folds it: unquoted parts lower-cased, quoted ones kept. */
const folded = (name: string) => name.replace(/"[^"]+"|[^".]+/g, (part) => (part.startsWith('"') ? part : part.toLowerCase()));
/** Tables a script drops, schema-qualified as written. */
const droppedTables = (sql: string) => [...sql.matchAll(new RegExp(String.raw`\bdrop\s+table\s+(?:if\s+exists\s+)?` + TABLE_NAME, "gi"))].map((match) => folded(match[1]!));
/** Tables an up part removes: dropped, or renamed away. */
const removedTables = (sql: string) => [...droppedTables(sql), ...[...sql.matchAll(new RegExp(String.raw`\balter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?` + TABLE_NAME + String.raw`\s+rename\s+to\b`, "gi"))].map((match) => folded(match[1]!))];

interface Result {
  layout: string;
  path: string;
  recognised: string;
  migrations: number;
  predicted: number;
  apply: { code: number; applied: number; ms: number };
  rerunApplied: number;
  /** dbmate and drizzle: the tool's schema is the kit's; after half by the tool and the rest by the kit, nothing pending. */
  sameSchema?: boolean;
  toolFindsNothingPending?: boolean;
  /** Elsewhere: tables a down part drops that an up part does not, missing after the kit's apply. */
  missingDownDropped?: string[];
  ok: boolean;
  note: string;
}

export async function main(argv: string[]): Promise<number> {
  const folders = argv.map((arg) => {
    const match = /^([\w-]+)(?:@([\w.]+))?=([^,]+)(?:,(.+))?$/.exec(arg);
    if (!match || !(LAYOUT_NAMES as readonly string[]).includes(match[1]!) || !existsSync(match[3]!)) return undefined;
    return { layout: match[1]!, history: match[2], path: match[3]!, setup: match[4] ? readFileSync(match[4], "utf8") : "" };
  });
  if (folders.length === 0 || folders.some((folder) => !folder) || folders.some((folder) => folder!.history && folder!.layout !== "dbmate")) {
    console.error(`usage: bun bench/real-folders.ts LAYOUT[@TABLE]=PATH[,SETUP.sql] ... (LAYOUT one of ${LAYOUT_NAMES.join(", ")}; @TABLE for dbmate only; PATH an existing folder)`);
    return 2;
  }
  const cluster = await Cluster.create({ database: "postgres" });
  const scratch = mkdtempSync(join(tmpdir(), "real-folders-"));
  let databases = 0;
  const fresh = async (setup: string) => {
    const name = `real_${++databases}`;
    await cluster.createDatabase(name);
    if (setup) await cluster.query(setup, name);
    return name;
  };
  const kit = async (database: string, path: string, history: string | undefined) => {
    const run = await timed([process.execPath, "init-database.ts", "--json", "--migrations", path, ...(history ? ["--history-table", history] : [])], { DATABASE_URL: cluster.url({ database }) });
    const events = run.stdout.trim().split("\n").filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
    return { ...run, layout: String(events.find((event) => event.event === "layout")?.layout ?? "none"), migrations: Number(events.find((event) => event.event === "layout")?.migrations ?? 0),
      applied: events.filter((event) => event.event === "schema" && event.status === "applied").length };
  };
  const schemaOf = async (database: string, history: string | undefined) => {
    const dump = Bun.spawnSync([join(PG_BIN, "pg_dump"), "--schema-only", "--no-owner", "--no-privileges", ...historyTables(history).flatMap((name) => ["--exclude-table", name]), "--exclude-schema", "drizzle", cluster.url({ database })]);
    if (dump.exitCode !== 0) throw new Error(`pg_dump ${database}: ${dump.stderr.toString().trim()}`);
    // pg_dump 15.x names the server's version and a per-run \restrict key: not the schema.
    return dump.stdout.toString().replace(/^-- Dumped (from|by).*$/gm, "").replace(/^\\(un)?restrict .*$/gm, "");
  };
  const dbmate = (database: string, dir: string, history: string | undefined, ...command: string[]) =>
    timed([DBMATE, "--url", `${cluster.url({ database })}?sslmode=disable`, "--migrations-dir", dir, ...(history ? ["--migrations-table", history] : []), "--no-dump-schema", ...command]);
  const drizzle = (database: string, dir: string) => {
    const config = join(scratch, `drizzle-${++databases}.config.mjs`);
    writeFileSync(config, `export default { dialect: "postgresql", out: ${JSON.stringify(dir)}, dbCredentials: { url: process.env.DATABASE_URL } };\n`);
    return timed([DRIZZLE_KIT, "migrate", "--config", config], { DATABASE_URL: cluster.url({ database }) });
  };
  /** The folder with only its first `count` migrations, as the tool would have met it earlier. */
  const firstPart = (layout: string, dir: string, count: number) => {
    const to = join(scratch, `half-${++databases}`);
    cpSync(dir, to, { recursive: true });
    if (layout === "dbmate") for (const file of DOCUMENTED.dbmate!.ups(dir).slice(count)) rmSync(join(to, file));
    else {
      const journal = JSON.parse(read(dir, "meta", "_journal.json"));
      writeFileSync(join(to, "meta", "_journal.json"), JSON.stringify({ ...journal, entries: journal.entries.slice(0, count) }, null, 2));
    }
    return to;
  };

  const results: Result[] = [];
  try {
    for (const { layout, history, path, setup } of folders as NonNullable<(typeof folders)[number]>[]) {
      const documented = DOCUMENTED[layout]!;
      const predicted = documented.ups(path).length;
      const database = await fresh(setup);
      const apply = await kit(database, path, history);
      const rerun = await kit(database, path, history);
      const result: Result = {
        layout, path, recognised: apply.layout, migrations: apply.migrations, predicted,
        apply: { code: apply.code, applied: apply.applied, ms: Math.round(apply.ms) }, rerunApplied: rerun.applied, ok: false, note: "",
      };
      const basic = apply.layout === layout && apply.code === 0 && apply.applied === predicted && rerun.code === 0 && rerun.applied === 0;
      if (layout === "dbmate" || layout === "drizzle") {
        const byTool = await fresh(setup);
        const run = layout === "dbmate" ? await dbmate(byTool, path, history, "up") : await drizzle(byTool, path);
        result.sameSchema = run.code === 0 && (await schemaOf(byTool, history)) === (await schemaOf(database, history));
        const half = await fresh(setup);
        const part = firstPart(layout, path, Math.floor(predicted / 2));
        const first = layout === "dbmate" ? await dbmate(half, part, history, "up") : await drizzle(half, part);
        const rest = await kit(half, path, history);
        if (layout === "dbmate") {
          const status = await dbmate(half, path, history, "status", "--exit-code");
          result.toolFindsNothingPending = first.code === 0 && rest.code === 0 && status.code === 0 && status.stdout.includes("Pending: 0");
        } else {
          const journalRows = async () => (await cluster.query<{ n: number }>(`select count(*)::int as n from drizzle.__drizzle_migrations`, half))[0]!.n;
          const n = await journalRows();
          const again = await drizzle(half, path);
          const after = await journalRows();
          result.toolFindsNothingPending = first.code === 0 && rest.code === 0 && again.code === 0 && n === predicted && after === n;
        }
        result.note = `${layout} ${run.code === 0 ? "applied it" : `exit ${run.code}`}; half by ${layout} (${Math.floor(predicted / 2)}), the rest by the kit (${rest.applied})`;
        result.ok = basic && result.sameSchema && result.toolFindsNothingPending;
      } else {
        const ups = new Set(documented.ups(path).flatMap((entry) => {
          const file = statSync(join(path, entry)).isDirectory() ? join(path, entry, layout === "prisma" ? "migration.sql" : "up.sql") : join(path, entry);
          const text = readFileSync(file, "utf8");
          return removedTables(layout === "goose" ? text.split(/^--\s*\+goose\s+Down.*$/im)[0]! : text);
        }));
        const candidates = [...new Set(documented.downs(path).flatMap(droppedTables))].filter((name) => !ups.has(name));
        const present = await cluster.query<{ name: string; found: boolean }>(
          `select name, to_regclass(name) is not null as found from unnest(array[${candidates.map((name) => `'${name.replaceAll("'", "''")}'`).join(", ")}]::text[]) name`, database);
        result.missingDownDropped = present.filter((row) => !row.found).map((row) => row.name);
        result.note = `${candidates.length} tables dropped by down parts checked present`;
        result.ok = basic && result.missingDownDropped.length === 0;
      }
      results.push(result);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
    await cluster.destroy();
  }

  const load = loadavg().map((value) => value.toFixed(2)).join(", ");
  console.log(`real migration folders on PostgreSQL 15 (${machine()}, load ${load}, ${new Date().toISOString().slice(0, 10)})`);
  console.log(table([
    ["layout", "recognised", "migrations (documented)", "kit apply", "applied", "re-run applied", "beside the tool", "as expected"],
    ...results.map((result) => [
      result.layout, result.recognised, `${result.migrations} (${result.predicted})`, `exit ${result.apply.code}, ${result.apply.ms} ms`, result.apply.applied, result.rerunApplied,
      result.sameSchema === undefined ? `missing after apply: ${result.missingDownDropped!.length ? result.missingDownDropped!.join(" ") : "none"}` : `same schema: ${result.sameSchema}; nothing pending: ${result.toolFindsNothingPending}`,
      result.ok ? "yes" : "NO",
    ]),
  ]));
  writeFileSync(join(ROOT, "bench", "results", "real-folders.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), load, results }, null, 2) + "\n");
  return results.every((result) => result.ok) ? 0 : 1;
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
