/**
 * No Docker engine runs here or in CI, so the Compose files are checked by what can be
 * checked for real: their structure, the Compose Specification's schema (where ../shared
 * holds it), their server settings on a real PostgreSQL, and their health check command
 * against a real server.
 */
import { describe, expect, test } from "bun:test";
import Ajv2020 from "ajv/dist/2020";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Cluster } from "./cluster.ts";
import { ROOT, useCluster } from "./helpers.ts";

type Service = Record<string, any>;
type ComposeFile = { services: Record<string, Service>; networks?: Record<string, any>; secrets?: Record<string, any>; volumes?: Record<string, any> };

const baseText = readFileSync(join(ROOT, "docker-compose.yml"), "utf8");
const securityText = readFileSync(join(ROOT, "docker-compose.security.yml"), "utf8");
const base = Bun.YAML.parse(baseText) as ComposeFile;
const security = Bun.YAML.parse(securityText) as ComposeFile;
const SPEC_SCHEMA = join(ROOT, "..", "shared", "data", "compose-spec.json");

/** ["postgres", "-c", "a=1", "-c", "b=2"] -> { a: "1", b: "2" } */
function settingsOf(command: string[]): Record<string, string> {
  expect(command[0]).toBe("postgres");
  const settings: Record<string, string> = {};
  for (let i = 1; i < command.length; i += 2) {
    expect(command[i]).toBe("-c");
    const [name, ...value] = command[i + 1]!.split("=");
    settings[name!] = value.join("=");
  }
  return settings;
}

/** "256MB" -> bytes, "60s" -> ms, "0.9" -> 0.9: so "1min" and "60s" compare equal, as the server sees them. */
function normalise(value: string): number | string {
  const match = /^(-?[\d.]+)\s*(kB|MB|GB|TB|ms|s|min|h|d)?$/.exec(value);
  if (!match) return value;
  const factors: Record<string, number> = { kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4, ms: 1, s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 };
  return Number(match[1]) * (match[2] ? factors[match[2]]! : 1);
}

/** Run a CMD-SHELL health check the way Docker does: `$$` in the file is a literal `$` in the shell. */
function runHealthCheck(test: string[], env: Record<string, string>) {
  expect(test[0]).toBe("CMD-SHELL");
  const command = test[1]!.replaceAll("$$", "$");
  const serverBinDirs = [...new Bun.Glob("/usr/lib/postgresql/*/bin").scanSync({ onlyFiles: false })];
  return Bun.spawnSync(["sh", "-c", command], { env: { PATH: [process.env.PATH, ...serverBinDirs].join(":"), ...env } });
}

describe("docker-compose.yml", () => {
  const postgres = base.services.postgres!;

  test("runs postgres:${POSTGRES_VERSION:-15} with credentials only from the environment", () => {
    expect(postgres.image).toBe("postgres:${POSTGRES_VERSION:-15}");
    for (const service of Object.values(base.services)) {
      for (const [name, value] of Object.entries((service.environment ?? {}) as Record<string, string>)) {
        if (/PASSWORD|USER|_DB$/.test(name)) expect(value).toMatch(/^\$\{[A-Z_]+(:\?[^}]*|:-)?\}$/);
      }
    }
    expect(existsSync(join(ROOT, ".env.example"))).toBe(true);
  });

  test("has a TCP health check to 127.0.0.1 with a fast start_interval", () => {
    const check = postgres.healthcheck;
    expect(check.test[1]).toContain("pg_isready");
    expect(check.test[1]).toContain("-h 127.0.0.1");
    expect(check.start_interval).toBe("1s");
    expect(check.start_period).toBeDefined();
    expect(base.services.redis!.healthcheck.test).toEqual(["CMD", "redis-cli", "ping"]);
  });

  test("publishes the database on 127.0.0.1 only and keeps data in a named volume", () => {
    expect(postgres.ports).toEqual(["127.0.0.1:${POSTGRES_PORT:-5432}:5432"]);
    expect(postgres.volumes).toEqual(["postgres-data:/var/lib/postgresql/data"]);
    expect(base.volumes).toHaveProperty("postgres-data");
  });

  test("starts db-init after a healthy postgres, and the suite and services after db-init succeeded", () => {
    expect(base.services["db-init"]!.depends_on).toEqual({ postgres: { condition: "service_healthy" } });
    expect(base.services["db-init"]!.build).toBe("."); // the Dockerfile's ENTRYPOINT: tests/offline-image.test.ts
    expect(base.services["db-test"]!.profiles).toEqual(["test"]);
    for (const name of ["db-test", "app"]) {
      expect(base.services[name]!.depends_on["db-init"]).toEqual({ condition: "service_completed_successfully" });
    }
  });

  test("carries the seed's tuning", () => {
    expect(settingsOf(postgres.command)).toMatchObject({
      max_connections: "200", shared_buffers: "256MB", effective_cache_size: "1GB", work_mem: "4MB",
    });
  });
});

describe("docker-compose.security.yml", () => {
  const postgres = security.services.postgres!;

  test("takes the password from a secret file, never from the environment", () => {
    expect(postgres.environment.POSTGRES_PASSWORD_FILE).toBe("/run/secrets/postgres_password");
    expect(postgres.secrets).toEqual(["postgres_password"]);
    expect(security.secrets!.postgres_password.file).toMatch(/^\$\{POSTGRES_PASSWORD_FILE_HOST:-/);
    expect(securityText).toMatch(/POSTGRES_PASSWORD: !reset null/);
    for (const service of ["db-init", "db-test", "app"]) {
      expect(security.services[service]!.environment.POSTGRES_PASSWORD_FILE).toBe("/run/secrets/postgres_password");
    }
  });

  test("uses scram-sha-256 everywhere and never md5", () => {
    expect(JSON.stringify([base, security]).toLowerCase()).not.toContain("md5");
    expect(postgres.environment.POSTGRES_INITDB_ARGS).toBe("--auth-host=scram-sha-256 --auth-local=scram-sha-256");
    expect(postgres.environment.POSTGRES_HOST_AUTH_METHOD).toBe("scram-sha-256");
    expect(settingsOf(postgres.command)).toMatchObject({ password_encryption: "scram-sha-256", log_connections: "on", log_disconnections: "on" });
  });

  test("keeps every base setting, so the override cannot drift from the tuning", () => {
    expect(settingsOf(postgres.command)).toMatchObject(settingsOf(base.services.postgres!.command));
  });

  test("confines the container: no published port, internal network, read-only, no capabilities beyond need, limits", () => {
    expect(postgres.ports ?? []).toEqual([]);
    expect(postgres.networks).toEqual(["db"]);
    expect(security.networks!.db.internal).toBe(true);
    expect(postgres.read_only).toBe(true);
    expect(postgres.tmpfs.map((mount: string) => mount.split(":")[0])).toEqual(["/var/run/postgresql", "/tmp"]);
    expect(postgres.cap_drop).toEqual(["ALL"]);
    expect(postgres.cap_add).toEqual(["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]);
    expect(postgres.security_opt).toEqual(["no-new-privileges:true"]);
    expect(postgres.mem_limit).toBeDefined();
    expect(postgres.pids_limit).toBeGreaterThan(0);
    expect(postgres.restart).toMatch(/^on-failure:\d+$/);
  });
});

// Outside this repository's workspace the schema file is absent: say so, in the output and in
// the test's name, rather than skipping in silence.
const specPresent = existsSync(SPEC_SCHEMA);
if (!specPresent) console.warn(`compose.test.ts: the Compose Specification schema check does not run: ${SPEC_SCHEMA} is absent (put compose-spec.json from https://github.com/compose-spec/compose-spec there to run it)`);

describe.if(specPresent)(`the Compose Specification schema${specPresent ? "" : ` (not run: ${SPEC_SCHEMA} is absent)`}`, () => {
  test("accepts both files", () => {
    const validate = new Ajv2020({ strict: false, allErrors: true }).compile(JSON.parse(readFileSync(SPEC_SCHEMA, "utf8")));
    for (const file of [base, security]) {
      const valid = validate(file);
      expect(validate.errors ?? []).toEqual([]);
      expect(valid).toBe(true);
    }
  });
});

/** `docker compose config` needs only the Compose plugin, not an engine. */
function composeAvailable(): boolean {
  try {
    return Bun.spawnSync(["docker", "compose", "version"]).exitCode === 0;
  } catch {
    return false;
  }
}

const composePresent = composeAvailable();
if (!composePresent) console.warn("compose.test.ts: the `docker compose config` check does not run: the Docker Compose plugin is not installed");

describe.if(composePresent)(`docker compose config${composePresent ? "" : " (not run: no Docker Compose plugin)"}`, () => {
  test("accepts both files together with the shipped .env.example", () => {
    const config = Bun.spawnSync([
      "docker", "compose", "--env-file", ".env.example", "-f", "docker-compose.yml", "-f", "docker-compose.security.yml", "config", "--quiet",
    ], { cwd: ROOT });
    expect(config.stderr.toString()).toBe("");
    expect(config.exitCode).toBe(0);
  });
});

describe("against a real PostgreSQL", () => {
  let cluster: Cluster;
  const settings = settingsOf(security.services.postgres!.command);

  useCluster({ settings, database: "flow_backend" }, (made) => (cluster = made.cluster));

  test("the server accepts every -c setting of both files, with the values given", async () => {
    const rows = await cluster.query<{ name: string; value: string; source: string }>(
      `select name, current_setting(name) as value, source from pg_settings where name in (${Object.keys(settings).map((name) => `'${name}'`).join(", ")})`);
    expect(rows.map((row) => row.name).sort()).toEqual(Object.keys(settings).sort());
    for (const row of rows) {
      expect(row.source).toBe("configuration file");
      expect(normalise(row.value)).toEqual(normalise(settings[row.name]!));
    }
  });

  test("the health check passes on a server that listens on TCP", () => {
    const check = runHealthCheck(base.services.postgres!.healthcheck.test, {
      POSTGRES_USER: cluster.user, POSTGRES_DB: cluster.database, PGPORT: String(cluster.port),
    });
    expect(check.exitCode).toBe(0);
  });

  test("the health check fails while only the socket listens, as during the image's init server", async () => {
    const initServer = await Cluster.create({ settings: { listen_addresses: "''" } });
    try {
      const check = runHealthCheck(base.services.postgres!.healthcheck.test, {
        POSTGRES_USER: initServer.user, POSTGRES_DB: initServer.database, PGPORT: String(initServer.port),
      });
      expect(check.exitCode).not.toBe(0);
    } finally {
      await initServer.destroy();
    }
  });
});
