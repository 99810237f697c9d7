/**
 * The README's examples work as pasted: the Compose snippet under "Adopting" builds and runs
 * db-init the way docker-compose.yml does (the image itself: tests/offline-image.test.ts), and the library example type-checks in a fresh project with
 * exactly the tsconfig.json the README gives.
 */
import { afterAll, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./helpers.ts";

const readme = readFileSync(join(ROOT, "README.md"), "utf8");
/** The section under "## Adopting", up to the next section. */
const adopting = ((): string => {
  const start = readme.indexOf("\n## Adopting");
  if (start < 0) throw new Error('README.md has no "## Adopting" section');
  const end = readme.indexOf("\n## ", start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
})();

/** The first fenced block of `language` in `text`, its indentation removed. */
function block(text: string, language: string): string {
  const match = new RegExp("^( *)```" + language + "\\n([\\s\\S]*?)^\\1```", "m").exec(text);
  if (!match) throw new Error(`no \`\`\`${language} block under "Adopting"`);
  return match[2]!.split("\n").map((line) => line.slice(match[1]!.length)).join("\n");
}

const temps: string[] = [];
afterAll(() => temps.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

test("the Compose snippet under Adopting runs db-init as docker-compose.yml does", () => {
  type Service = Record<string, any>;
  const snippet = (Bun.YAML.parse(block(adopting, "yaml")) as { services: Record<string, Service>; volumes: Record<string, unknown> });
  const shipped = (Bun.YAML.parse(readFileSync(join(ROOT, "docker-compose.yml"), "utf8")) as { services: Record<string, Service> }).services["db-init"]!;
  const ours = snippet.services["db-init"]!;
  // Both build the kit's Dockerfile (its ENTRYPOINT is init-database): nothing installed at start.
  expect(ours.build).toBe("./db-init");
  expect(shipped.build).toBe(".");
  expect([ours.entrypoint, shipped.entrypoint]).toEqual([undefined, undefined]);
  expect(ours.command.slice(0, shipped.command.length)).toEqual(shipped.command);
  expect(Object.keys(ours.environment).sort()).toEqual(Object.keys(shipped.environment).sort());
  expect(ours.depends_on).toEqual({ postgres: { condition: "service_healthy" } });
  expect(shipped.depends_on).toEqual({ postgres: { condition: "service_healthy" } });
  const migrations = ours.command.indexOf("--migrations");
  expect(ours.volumes).toEqual([`./migrations:${ours.command[migrations + 1]}:ro`]);
  expect(snippet.services.api!.depends_on).toEqual({ "db-init": { condition: "service_completed_successfully" } });
});

test("the library example type-checks under the README's tsconfig (strict, noUncheckedIndexedAccess)", () => {
  // Inside the repository, so that node_modules (postgres, @types/bun) resolves as in a project that installed them.
  const project = mkdtempSync(join(ROOT, ".readme-example-"));
  temps.push(project);
  copyFileSync(join(ROOT, "init-database.ts"), join(project, "init-database.ts"));
  writeFileSync(join(project, "service.ts"), block(adopting, "ts"));
  const tsconfig = JSON.parse(block(adopting, "json"));
  writeFileSync(join(project, "tsconfig.json"), JSON.stringify({ ...tsconfig, include: ["*.ts"] }));
  expect(tsconfig.compilerOptions).toMatchObject({ strict: true, noUncheckedIndexedAccess: true });
  const check = Bun.spawnSync([join(ROOT, "node_modules", ".bin", "tsc"), "-p", project], { cwd: project });
  expect(check.stdout.toString() + check.stderr.toString()).toBe("");
  expect(check.exitCode).toBe(0);
});
