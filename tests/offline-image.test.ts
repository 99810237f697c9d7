/**
 * The Compose db-init boots with no package registry: its image holds the executables the
 * Dockerfile's build stage makes, and nothing is installed at start. No Docker engine runs in
 * CI, so the image's contents are made here by that stage's own build line (tests/executable.ts)
 * and run as the container would run them, with less than a container has: in a network
 * namespace with no network at all (not even loopback) and a read-only root filesystem
 * (`unshare --net --mount`), no Bun, no node_modules and no PATH, against a test server reached
 * over its Unix socket, with the password from a secret file as the security override gives it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXIT } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { buildExecutables, dockerfileBuildLine, type Executables } from "./executable.ts";
import { expectNoSecret, ROOT, useCluster } from "./helpers.ts";

type Service = Record<string, any>;
const compose = (file: string) => (Bun.YAML.parse(readFileSync(join(ROOT, file), "utf8")) as { services: Record<string, Service> }).services;

/** Can this process make a namespace with no network and a read-only root (root, with unshare)? */
const isolation = Bun.spawnSync(["unshare", "--net", "--mount", "sh", "-c", "mount -o remount,bind,ro /"], { stderr: "pipe" });
const canIsolate = isolation.exitCode === 0;
if (!canIsolate) console.warn(`offline-image.test.ts: the no-network runs do not run: unshare --net --mount failed (needs root): ${isolation.stderr.toString().trim()}`);

describe("docker-compose.yml", () => {
  test("builds the kit's services from the Dockerfile, and none installs anything when it starts", () => {
    const services = compose("docker-compose.yml");
    for (const name of ["db-init", "db-test", "app"]) {
      expect(services[name]!.build, name).toBe(".");
      expect(JSON.stringify([services[name]!.entrypoint, services[name]!.command]), name).not.toMatch(/\b(bun|npm|npx|yarn|pnpm) (install|add|ci|x)\b/);
      expect(services[name]!.volumes, name).toBeUndefined();
    }
    expect(readFileSync(join(ROOT, "Dockerfile"), "utf8")).toContain('ENTRYPOINT ["/usr/local/bin/init-database"]');
    expect(services["db-test"]!.entrypoint).toEqual(["/usr/local/bin/test-db-connectivity"]);
    expect(dockerfileBuildLine()).toContain("--bytecode");
  });

  test("the security override keeps db-init and db-test on the internal network alone, read-only, with no capabilities", () => {
    const services = compose("docker-compose.security.yml");
    for (const name of ["db-init", "db-test"]) {
      expect(services[name], name).toMatchObject({
        networks: ["db"], read_only: true, cap_drop: ["ALL"], security_opt: ["no-new-privileges:true"],
        environment: { POSTGRES_PASSWORD_FILE: "/run/secrets/postgres_password" }, secrets: ["postgres_password"],
      });
    }
  });
});

describe.if(canIsolate)(`the executables, with no network and a read-only root${canIsolate ? "" : " (not run: unshare --net --mount needs root)"}`, () => {
  let cluster: Cluster;
  let built: Executables;
  let empty: string;
  let secretFile: string;
  let scratch: string;
  useCluster({ database: "offline", password: "off-line:Pa55@w0rd" }, (made) => {
    cluster = made.cluster;
  });
  beforeAll(() => {
    built = buildExecutables();
    empty = mkdtempSync(join(tmpdir(), "kit-offline-cwd-"));
    scratch = mkdtempSync(join(tmpdir(), "kit-offline-tmp-"));
    secretFile = join(empty, "postgres_password");
    writeFileSync(secretFile, cluster.password + "\n", { mode: 0o644 });
  });
  afterAll(() => {
    rmSync(built.dir, { recursive: true, force: true });
    rmSync(empty, { recursive: true, force: true });
    rmSync(scratch, { recursive: true, force: true });
  });

  /** Run an executable as the container would, in an empty directory, with only the Compose variables (host: the socket directory). */
  function isolated(executable: string, args: string[], env: Record<string, string> = {}, { tmpfs = false } = {}) {
    // PATH is emptied only for the executable: unshare, sh and mount need theirs. With `tmpfs`,
    // a writable TMPDIR, as the security override's tmpfs gives db-test (its relay socket).
    const setup = tmpfs ? `mount -t tmpfs -o mode=1777 tmpfs ${scratch} && ` : "";
    const run = Bun.spawnSync(["unshare", "--net", "--mount", "sh", "-c", `${setup}mount -o remount,bind,ro / && PATH=/nonexistent exec "$@"`, "isolated", executable, ...args], {
      cwd: empty, stdout: "pipe", stderr: "pipe", timeout: 60_000,
      env: {
        PATH: process.env.PATH, HOME: "/nonexistent", NO_COLOR: "1",
        POSTGRES_HOST: cluster.dir, POSTGRES_PORT: String(cluster.port), POSTGRES_USER: cluster.user,
        POSTGRES_PASSWORD_FILE: secretFile, POSTGRES_DB: cluster.database, ...(tmpfs ? { TMPDIR: scratch } : {}), ...env,
      },
    });
    const result = { code: run.exitCode, stdout: run.stdout.toString(), stderr: run.stderr.toString() };
    expectNoSecret(result, cluster.password);
    return result;
  }

  test("there is no network in there: TCP to the server's own loopback port fails (exit 3)", () => {
    const run = isolated(built.initDatabase, ["--wait-only", "--timeout", "0.5"], { POSTGRES_HOST: "127.0.0.1" });
    expect(run.code).toBe(EXIT.notReady);
    expect(run.stderr).toMatch(/ENETUNREACH|ECONNREFUSED|EADDRNOTAVAIL/);
  });

  test("db-init initialises the database, re-runs as a no-op, checks it read-only and starts a command", () => {
    const first = isolated(built.initDatabase, ["--timeout", "30"]);
    expect([first.code, first.stderr]).toEqual([EXIT.ok, expect.stringContaining("applied: flow-backend")]);
    const again = isolated(built.initDatabase, ["--timeout", "30"]);
    expect([again.code, again.stdout]).toEqual([EXIT.ok, expect.stringContaining("schema already up to date")]);
    expect(isolated(built.initDatabase, ["--check"]).code).toBe(EXIT.ok);
    expect(isolated(built.initDatabase, ["--wait-for-schema", "--timeout", "10"]).code).toBe(EXIT.ok);
    // `-- COMMAND` with no PATH: a full path, as in the Compose app example.
    const gated = isolated(built.initDatabase, ["--check", "--quiet", "--", built.connectivity, "--quiet"], {}, { tmpfs: true });
    expect([gated.code, gated.stderr]).toEqual([EXIT.ok, ""]);
  });

  test("db-test: the connectivity suite passes over the socket (with the tmpfs the security override gives it)", () => {
    const run = isolated(built.connectivity, [], {}, { tmpfs: true });
    expect(run.stdout).toMatch(/\b7 passed, 0 failed\b/);
    expect(run.code).toBe(0);
  });
});
