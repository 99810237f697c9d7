/**
 * No Docker engine runs here or in CI, so the Compose files are checked by what can be
 * checked for real: what Compose makes of them (variables substituted as Compose does, the
 * Compose Specification's schema where ../shared holds it), a real PostgreSQL started with
 * exactly their settings and authentication, and their health check command run against real
 * servers. Requirements (127.0.0.1 only, scram-sha-256, start order) are asserted as such, not
 * as the files' text, so a file may change in any way that keeps them.
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

/**
 * Compose's variable substitution: `$$` is a literal `$`, `${NAME}` and `$NAME` the variable or
 * "", `${NAME:-default}`/`${NAME-default}` a default when unset (or empty, with `:`),
 * `${NAME:?message}`/`${NAME?message}` an error when unset, `${NAME:+other}` a replacement when set.
 */
function interpolate(text: string, env: Record<string, string>): string {
  return text.replace(/\$\$|\$\{([A-Za-z_]\w*)(?:(:?)([-?+])([^}]*))?\}|\$([A-Za-z_]\w*)/g, (whole, name, colon, operator, argument, bare) => {
    if (whole === "$$") return "$";
    if (bare) return env[bare] ?? "";
    const value = env[name];
    const unset = colon ? !value : value === undefined;
    if (operator === "-") return unset ? argument : value!;
    if (operator === "?" && unset) throw new Error(`required variable ${name} is missing a value: ${argument}`);
    if (operator === "+") return unset ? "" : argument;
    return value ?? "";
  });
}

/** A Compose file as Compose sees it given `env`: every string interpolated. */
function resolved<T>(value: T, env: Record<string, string>): T {
  if (typeof value === "string") return interpolate(value, env) as T;
  if (Array.isArray(value)) return value.map((item) => resolved(item, env)) as T;
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, resolved(item, env)])) as T;
  return value;
}

/** NAME=value lines of a .env file, as Compose reads them (comments and blank lines skipped). */
function dotenv(text: string): Record<string, string> {
  return Object.fromEntries(text.split("\n").filter((line) => /^[A-Za-z_]\w*=/.test(line)).map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]));
}

const envExample = dotenv(readFileSync(join(ROOT, ".env.example"), "utf8"));

/** The host address each published port binds to, from the short ("ip:host:container") or long syntax. */
function publishedOn(ports: (string | { host_ip?: string })[] = []): string[] {
  return ports.map((port) => (typeof port === "string" ? (port.split(":").length === 3 ? port.split(":")[0]! : "0.0.0.0") : port.host_ip ?? "0.0.0.0"));
}

/** The services that talk to PostgreSQL: those given its host in their environment. */
function databaseClients(file: ComposeFile): string[] {
  return Object.entries(file.services).filter(([, service]) => service.environment?.POSTGRES_HOST).map(([name]) => name);
}

/** Run a CMD-SHELL health check the way Docker does: interpolated by Compose, then run by a shell in the container's environment. */
function runHealthCheck(test: string[], env: Record<string, string>) {
  expect(test[0]).toBe("CMD-SHELL");
  const command = interpolate(test[1]!, {});
  const serverBinDirs = [...new Bun.Glob("/usr/lib/postgresql/*/bin").scanSync({ onlyFiles: false })];
  return Bun.spawnSync(["sh", "-c", command], { env: { PATH: [process.env.PATH, ...serverBinDirs].join(":"), ...env } });
}

describe("docker-compose.yml", () => {
  const postgres = base.services.postgres!;

  test("refuses to start without the credentials, and the shipped .env.example supplies them", () => {
    expect(() => resolved(base, {})).toThrow(/required variable POSTGRES_(USER|DB)/);
    expect(() => resolved(base, envExample)).not.toThrow();
  });

  test("writes no credential itself: every user, password and database name comes from the environment", () => {
    const fromEnv = Object.fromEntries(Object.keys(envExample).map((name) => [name, `from-env:${name}`]));
    const required = { POSTGRES_USER: "from-env:POSTGRES_USER", POSTGRES_DB: "from-env:POSTGRES_DB" };
    for (const [name, service] of Object.entries(base.services)) {
      for (const [variable, value] of Object.entries((service.environment ?? {}) as Record<string, string>)) {
        if (!/PASSWORD|USER|_DB$/.test(variable)) continue;
        expect({ service: name, variable, value: interpolate(value, fromEnv) }).toEqual({ service: name, variable, value: expect.stringMatching(/^from-env:/) });
        // Unset, a password is empty (the image then refuses to initialise), never a default.
        if (/PASSWORD/.test(variable)) expect({ service: name, variable, value: interpolate(value, required) }).toEqual({ service: name, variable, value: "" });
      }
    }
  });

  test("runs the PostgreSQL major POSTGRES_VERSION names, 15 by default", () => {
    expect(interpolate(postgres.image, {})).toBe("postgres:15");
    expect(interpolate(postgres.image, { POSTGRES_VERSION: "18" })).toBe("postgres:18");
  });

  test("publishes ports on 127.0.0.1 only, and the database's data lives in a named volume", () => {
    const services = resolved(base, envExample).services;
    expect(publishedOn(services.postgres!.ports)).not.toEqual([]);
    for (const service of Object.values(services)) for (const address of publishedOn(service.ports)) expect(address).toBe("127.0.0.1");
    const data = (postgres.volumes as string[]).map((mount) => mount.split(":")).find(([, target]) => target!.startsWith("/var/lib/postgresql"));
    expect(data).toBeDefined();
    expect(Object.keys(base.volumes ?? {})).toContain(data![0]!);
  });

  test("polls its health checks at least every second while a service starts, and every awaited health exists", () => {
    for (const service of Object.values(base.services)) {
      if (!service.healthcheck) continue;
      expect(normalise(service.healthcheck.start_interval) as number).toBeLessThanOrEqual(1_000);
      expect(normalise(service.healthcheck.start_period) as number).toBeGreaterThan(0);
    }
    for (const service of Object.values(base.services)) {
      for (const [dependency, { condition }] of Object.entries((service.depends_on ?? {}) as Record<string, { condition: string }>)) {
        if (condition === "service_healthy") expect(base.services[dependency]!.healthcheck?.test).toBeDefined();
      }
    }
  });

  test("starts db-init after a healthy postgres, every other database client after db-init succeeded, and the suite only on demand", () => {
    expect(base.services["db-init"]!.depends_on.postgres).toEqual({ condition: "service_healthy" });
    const clients = databaseClients(base).filter((name) => name !== "db-init");
    expect(clients).not.toEqual([]);
    for (const name of clients) expect(base.services[name]!.depends_on["db-init"]).toEqual({ condition: "service_completed_successfully" });
    expect(base.services["db-test"]!.profiles?.length).toBeGreaterThan(0);
  });
});

describe("docker-compose.security.yml", () => {
  const postgres = security.services.postgres!;

  test("takes the password from a secret file each database service mounts, never from the environment", () => {
    // Compose fills a key left null from the shell's environment: the override must !reset it.
    expect(securityText).not.toMatch(/POSTGRES_PASSWORD:(?! !reset null)/);
    for (const name of ["postgres", ...databaseClients(base)]) {
      const file = security.services[name]!.environment.POSTGRES_PASSWORD_FILE as string;
      const [, secret] = /^\/run\/secrets\/(.+)$/.exec(file) ?? [];
      expect({ service: name, mounts: security.services[name]!.secrets ?? [] }).toEqual({ service: name, mounts: expect.arrayContaining([secret]) });
      expect(security.secrets![secret!]!.file).toBeDefined();
    }
  });

  test("uses scram-sha-256 everywhere and never md5", () => {
    expect(JSON.stringify([base, security]).toLowerCase()).not.toContain("md5");
    const initdb = Object.fromEntries([...(postgres.environment.POSTGRES_INITDB_ARGS as string).matchAll(/--auth-(host|local)=(\S+)/g)].map(([, kind, method]) => [kind, method]));
    expect(initdb).toEqual({ host: "scram-sha-256", local: "scram-sha-256" });
    expect(postgres.environment.POSTGRES_HOST_AUTH_METHOD).toBe("scram-sha-256");
  });

  test("keeps every base setting, so the override cannot drift from the tuning", () => {
    expect(settingsOf(postgres.command)).toMatchObject(settingsOf(base.services.postgres!.command));
  });

  test("confines the container: no published port, internal networks only, read-only, no capabilities beyond need, limits", () => {
    expect(postgres.ports).toEqual([]);
    for (const service of Object.values(security.services)) for (const address of publishedOn(service.ports)) expect(address).toBe("127.0.0.1");
    expect(postgres.networks.length).toBeGreaterThan(0);
    for (const network of postgres.networks as string[]) expect(security.networks![network]!.internal).toBe(true);
    expect(postgres.read_only).toBe(true);
    // Read-only: the server still writes its socket and temporary files, where the image puts them.
    expect(postgres.tmpfs.map((mount: string) => mount.split(":")[0])).toEqual(expect.arrayContaining(["/var/run/postgresql", "/tmp"]));
    // What the image's entrypoint needs to chown the data directory and step down to user postgres.
    const entrypointNeeds = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"];
    expect(postgres.cap_drop).toEqual(["ALL"]);
    for (const capability of postgres.cap_add ?? []) expect(entrypointNeeds).toContain(capability);
    expect(postgres.security_opt).toContain("no-new-privileges:true");
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
  const validate = specPresent ? new Ajv2020({ strict: false, allErrors: true }).compile(JSON.parse(readFileSync(SPEC_SCHEMA, "utf8"))) : undefined;

  test("accepts both files, as Compose validates them: interpolated from .env.example", () => {
    for (const file of [base, security]) {
      const valid = validate!(resolved(file, envExample));
      expect(validate!.errors ?? []).toEqual([]);
      expect(valid).toBe(true);
    }
  });

  test("rejects what Compose would: a misspelt service key, a health check of the wrong type", () => {
    const postgres = base.services.postgres!;
    const misspelt = { ...base, services: { ...base.services, postgres: { ...postgres, healthchek: postgres.healthcheck } } };
    const wrongType = { ...base, services: { ...base.services, postgres: { ...postgres, healthcheck: postgres.healthcheck.test } } };
    for (const file of [misspelt, wrongType]) expect(validate!(resolved(file, envExample))).toBe(false);
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

/** The seed's tuning (SPEC "Compose files"), as the server must run it. */
const SEED_TUNING = { max_connections: "200", shared_buffers: "256MB", effective_cache_size: "1GB", work_mem: "4MB" };

for (const [name, file] of [["docker-compose.yml", base], ["docker-compose.security.yml", security]] as const) {
  describe(`a real PostgreSQL started with ${name}'s -c settings`, () => {
    let cluster: Cluster;
    const settings = settingsOf(file.services.postgres!.command);
    const environment = file.services.postgres!.environment ?? {};
    // The image's pg_hba.conf for this file: initdb's --auth-local/--auth-host lines, then
    // the entrypoint's `host all all all $POSTGRES_HOST_AUTH_METHOD`.
    const auth = Object.fromEntries([...String(environment.POSTGRES_INITDB_ARGS ?? "").matchAll(/--auth-(host|local)=(\S+)/g)].map(([, kind, method]) => [kind, method]));
    const hba = environment.POSTGRES_HOST_AUTH_METHOD
      ? [`local all all ${auth.local}`, `host all all 127.0.0.1/32 ${auth.host}`, `host all all all ${environment.POSTGRES_HOST_AUTH_METHOD}`]
      : undefined;

    // The server refuses to start on a setting it does not know or a value it does not accept.
    useCluster({ settings, database: "flow_backend", prepare: (made) => made.configure({}, hba) }, (made) => (cluster = made.cluster));

    test("runs every setting with the value given, from its configuration, none waiting for a restart", async () => {
      const rows = await cluster.query<{ name: string; value: string; source: string; pending_restart: boolean }>(
        `select name, current_setting(name) as value, source, pending_restart from pg_settings where name in (${Object.keys(settings).map((setting) => `'${setting}'`).join(", ")})`);
      expect(rows.map((row) => row.name).sort()).toEqual(Object.keys(settings).sort());
      for (const row of rows) {
        expect({ name: row.name, source: row.source, pending_restart: row.pending_restart }).toEqual({ name: row.name, source: "configuration file", pending_restart: false });
        expect({ name: row.name, value: normalise(row.value) }).toEqual({ name: row.name, value: normalise(settings[row.name]!) });
      }
    });

    test("runs the seed's tuning", async () => {
      for (const [setting, value] of Object.entries(SEED_TUNING)) {
        const [row] = await cluster.query<{ value: string }>(`select current_setting('${setting}') as value`);
        expect({ setting, value: normalise(row!.value) }).toEqual({ setting, value: normalise(value) });
      }
    });

    if (hba) {
      test("authenticates every connection, socket included, with scram-sha-256, and stores passwords as SCRAM verifiers", async () => {
        const rules = await cluster.query<{ type: string; auth_method: string; error: string | null }>(`select type, auth_method, error from pg_hba_file_rules`);
        expect(rules).not.toEqual([]);
        for (const rule of rules) expect(rule).toEqual({ type: rule.type, auth_method: "scram-sha-256", error: null });
        await cluster.query(`create role scram_check login password 'not-a-real-secret'`);
        expect(await cluster.query(`select rolpassword like 'SCRAM-SHA-256$%' as scram from pg_authid where rolname = 'scram_check'`)).toEqual([{ scram: true }]);
      });
    }

    test("passes the health check once the server listens on TCP", () => {
      const check = runHealthCheck(base.services.postgres!.healthcheck.test, {
        POSTGRES_USER: cluster.user, POSTGRES_DB: cluster.database, PGPORT: String(cluster.port),
      });
      expect(check.exitCode).toBe(0);
    });
  });
}

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
