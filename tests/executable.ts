/**
 * The kit's shipped form: the executables the Dockerfile's build stage makes, made here by
 * running that stage's very `bun build` line (read from the Dockerfile, so the tests cannot
 * drift from it) in a scratch copy of the sources, with this checkout's node_modules.
 * tests/offline-image.test.ts and tests/kubernetes.test.ts run what it makes; bench/rerun.ts times it.
 */
import { copyFileSync, mkdtempSync, readFileSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");

/** The Dockerfile's RUN instruction that compiles the kit, continuation lines joined. */
export function dockerfileBuildLine(dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8")): string {
  const instructions = dockerfile.replace(/\\\n/g, " ").split("\n").filter((line) => /^RUN\s/.test(line));
  const build = instructions.find((line) => line.includes("bun build --compile"));
  if (!build) throw new Error("the Dockerfile has no RUN line with bun build --compile");
  return build.replace(/^RUN\s+/, "");
}

export interface Executables {
  dir: string;
  initDatabase: string;
  connectivity: string;
}

/** Run the Dockerfile's build line in a new scratch directory (`extra` appended to each bun build, e.g. to drop --bytecode). */
export function buildExecutables({ transform = (line: string) => line }: { transform?: (line: string) => string } = {}): Executables {
  const dir = mkdtempSync(join(tmpdir(), "kit-executable-"));
  for (const file of ["init-database.ts", "test-db-connectivity.ts", "package.json"]) copyFileSync(join(ROOT, file), join(dir, file));
  symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
  const build = Bun.spawnSync(["sh", "-c", transform(dockerfileBuildLine())], { cwd: dir, stdout: "pipe", stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(`the Dockerfile's build line failed:\n${build.stderr.toString()}`);
  return { dir, initDatabase: join(dir, "dist", "init-database"), connectivity: join(dir, "dist", "test-db-connectivity") };
}
