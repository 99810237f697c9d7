#!/usr/bin/env bun
/**
 * What a re-run costs: `init-database.ts` against an already initialised database (what
 * happens at every service start) against `psql -f` applying the same idempotent schema, and
 * against the floor of the kit's own stack (bench/floor.ts: Bun starts, postgres.js connects,
 * one query), each timed from spawn to exit, alternating, over many runs. Beside them the
 * shipped form: the executable the Dockerfile's build line makes (`bun build --compile
 * --bytecode`, tests/executable.ts), and the same without --bytecode.
 *
 * The psql baseline is the real binary, /usr/lib/postgresql/15/bin/psql: /usr/bin/psql on
 * Debian is a Perl wrapper (pg_wrapper) that adds about 20 ms to every start.
 *
 * Usage: bun bench/rerun.ts [--runs N]    (writes bench/results/rerun.json)
 * Needs: Debian's postgresql-client-15 (apt-get install postgresql-client-15).
 * Exit codes: 0 measured, 1 a run failed, 2 psql is missing.
 * Example: bun bench/rerun.ts --runs 40
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { FLOW_BACKEND_SCHEMA } from "../init-database.ts";
import { Cluster } from "../tests/cluster.ts";
import { buildExecutables } from "../tests/executable.ts";
import { machine, ROOT, summarise, table, timed } from "./support.ts";

const PSQL = "/usr/lib/postgresql/15/bin/psql";
const TARGET_RATIO = 1.5;

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: "string", default: "40" } }, strict: true });
  const runs = Number(values.runs);
  if (!existsSync(PSQL)) {
    console.error(`error: ${PSQL} is missing: apt-get install postgresql-client-15`);
    return 2;
  }
  const cluster = await Cluster.create({ database: "rerun" });
  const dir = mkdtempSync(join(tmpdir(), "rerun-"));
  const dirs = [dir];
  try {
    const schemaFile = join(dir, "schema.sql");
    writeFileSync(schemaFile, FLOW_BACKEND_SCHEMA);
    const env = { DATABASE_URL: cluster.url(), PGPASSWORD: cluster.password };
    const kit = [process.execPath, "init-database.ts", "--quiet"];
    const baseline = [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", cluster.host, "-p", String(cluster.port), "-U", cluster.user, "-d", "rerun", "-f", schemaFile];
    const floor = [process.execPath, "bench/floor.ts"];
    const compiled = buildExecutables();
    const plain = buildExecutables({ transform: (line) => line.replaceAll(" --bytecode", "") });
    dirs.push(compiled.dir, plain.dir);
    const shipped = [compiled.initDatabase, "--quiet"];
    // The shipped form's own floor: bench/floor.ts compiled the same way.
    const floorExecutable = join(compiled.dir, "floor");
    const floorBuild = Bun.spawnSync([process.execPath, "build", "--compile", "--bytecode", "--format", "esm", "--outfile", floorExecutable, "bench/floor.ts"], { cwd: ROOT, stderr: "pipe" });
    if (floorBuild.exitCode !== 0) throw new Error(`bun build of bench/floor.ts failed: ${floorBuild.stderr}`);
    const compiledFloor = [floorExecutable];
    const noBytecode = [plain.initDatabase, "--quiet"];
    const psqlEnv = { ...env, PGOPTIONS: "--client-min-messages=warning" };
    const load = loadavg().map((value) => value.toFixed(2)).join(", ");
    const first = await timed(kit, env);
    if (first.code !== 0) throw new Error("the first init-database.ts run failed");
    for (let warmup = 0; warmup < 3; warmup++) {
      for (const [command, environment] of [[kit, env], [baseline, psqlEnv], [floor, env], [shipped, env], [noBytecode, env], [compiledFloor, env]] as const) await timed([...command], environment);
    }
    const kitMs: number[] = [];
    const psqlMs: number[] = [];
    const floorMs: number[] = [];
    const shippedMs: number[] = [];
    const noBytecodeMs: number[] = [];
    const compiledFloorMs: number[] = [];
    for (let run = 0; run < runs; run++) {
      const ours = await timed(kit, env);
      const theirs = await timed(baseline, psqlEnv);
      const bare = await timed(floor, env);
      const executable = await timed(shipped, env);
      const withoutBytecode = await timed(noBytecode, env);
      const bareExecutable = await timed(compiledFloor, env);
      if ([ours, theirs, bare, executable, withoutBytecode, bareExecutable].some((result) => result.code !== 0)) {
        throw new Error(`run ${run} failed: init ${ours.code}, psql ${theirs.code}, floor ${bare.code}, executable ${executable.code}, without bytecode ${withoutBytecode.code}`);
      }
      kitMs.push(ours.ms);
      psqlMs.push(theirs.ms);
      floorMs.push(bare.ms);
      shippedMs.push(executable.ms);
      noBytecodeMs.push(withoutBytecode.ms);
      compiledFloorMs.push(bareExecutable.ms);
    }
    const ours = summarise(kitMs);
    const theirs = summarise(psqlMs);
    const stack = summarise(floorMs);
    const executable = summarise(shippedMs);
    const withoutBytecode = summarise(noBytecodeMs);
    const executableFloor = summarise(compiledFloorMs);
    const shippedRatio = executable.median / theirs.median;
    const ratio = ours.median / theirs.median;
    const row = (name: string, figures: typeof ours) => [name, figures.median.toFixed(1), figures.mean.toFixed(1), figures.worst.toFixed(1), `${(figures.median / theirs.median).toFixed(2)}x`];
    console.log(`re-run on an initialised database (${machine()}, ${new Date().toISOString().slice(0, 10)}, ${runs} runs each)`);
    console.log(table([
      ["command", "median ms", "mean ms", "worst ms", "vs psql"],
      row("init-database.ts (re-run)", ours),
      row("shipped: compiled executable, --bytecode", executable),
      row("compiled executable, no --bytecode", withoutBytecode),
      row("floor compiled: postgres.js, one query", executableFloor),
      row("floor: bun + postgres.js, one query", stack),
      row(`psql -f schema.sql (${PSQL})`, theirs),
    ]));
    console.log(`the shipped executable over psql: ${shippedRatio.toFixed(2)}x (target <= ${TARGET_RATIO}x: ${shippedRatio <= TARGET_RATIO ? "met" : "NOT met"}); over bun run: ${(executable.median / ours.median).toFixed(2)}x; over its compiled floor: +${(executable.median - executableFloor.median).toFixed(1)} ms`);
    console.log(`load average before the runs: ${load}`);
    console.log(`ratio of medians (bun run): ${ratio.toFixed(2)}x (target <= ${TARGET_RATIO}x: ${ratio <= TARGET_RATIO ? "met" : "NOT met"}); the kit over its own floor: ${(ours.median / stack.median).toFixed(2)}x, +${(ours.median - stack.median).toFixed(1)} ms`);
    writeFileSync(join(ROOT, "bench", "results", "rerun.json"), JSON.stringify({ date: new Date().toISOString(), machine: machine(), load, runs, psql: PSQL, init_database: ours, floor: stack, psql_f: theirs, ratio, shipped_executable: executable, executable_without_bytecode: withoutBytecode, compiled_floor: executableFloor, shipped_ratio: shippedRatio }, null, 2) + "\n");
    return 0;
  } finally {
    for (const made of dirs) rmSync(made, { recursive: true, force: true });
    await cluster.destroy();
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
