/**
 * Connection settings against real servers: Unix sockets (hostless URLs, Cloud SQL's socket
 * path), the password file, `options`, and TLS: a server without TLS under sslmode=require,
 * and a server with a certificate made here by openssl (require, verify-full through hostaddr,
 * a host name the certificate does not name, a CA that did not sign it, a client certificate,
 * sslnegotiation=direct on PostgreSQL 17); an abstract socket; load_balance_hosts.
 */
import { describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { closeClient, connect, EXIT, parseConfig, waitUntilReady } from "../init-database.ts";
import { Cluster } from "./cluster.ts";
import { type Certificates, configureTls, events, expectNoSecret, runScript, useCluster } from "./helpers.ts";
import { FaultProxy } from "./proxy.ts";

const SCRIPT = "init-database.ts";
const PASSWORD = "Hunter2Secret-pw";

/** Every substring of 4 characters or more of the password: none may be printed. */
function expectNoFragment(text: string): void {
  for (let length = 4; length <= PASSWORD.length; length++) {
    for (let start = 0; start + length <= PASSWORD.length; start++) expect(text).not.toContain(PASSWORD.slice(start, start + length));
  }
}

describe("Unix sockets, the password file and options, on a server without TLS", () => {
  let cluster: Cluster;
  let cloudSqlDir: string;
  useCluster({
    password: PASSWORD,
    prepare: (stopped) => {
      // Cloud SQL's Auth Proxy puts the socket in /cloudsql/PROJECT:REGION:INSTANCE.
      cloudSqlDir = join(stopped.dir, "cloudsql", "my-project:europe-west1:my-instance");
      mkdirSync(cloudSqlDir, { recursive: true });
      if (stopped.identity.uid !== undefined) {
        chownSync(join(stopped.dir, "cloudsql"), stopped.identity.uid, stopped.identity.gid!);
        chownSync(cloudSqlDir, stopped.identity.uid, stopped.identity.gid!);
      }
      stopped.configure({ unix_socket_directories: `'${stopped.dir},${cloudSqlDir},@pg-kit-${stopped.port}'` });
    },
  }, (made) => (cluster = made.cluster));

  test("a hostless URL with ?host=DIR connects through the socket, and says so", async () => {
    const url = `postgres://postgres:${PASSWORD}@/postgres?host=${encodeURIComponent(cluster.dir)}&port=${cluster.port}`;
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: url });
    expect(run.code).toBe(EXIT.ok);
    expect(run.stdout).toContain(`ready: postgres://postgres:***@/postgres?host=${cluster.dir}&port=${cluster.port}`);
    expectNoSecret(run, PASSWORD);
  });

  test("postgres://user@/db takes the socket directory from PGHOST, as libpq does", async () => {
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: "postgres://postgres@/postgres", PGHOST: cluster.dir, PGPORT: String(cluster.port), PGPASSWORD: PASSWORD });
    expect(run.code).toBe(EXIT.ok);
  });

  test("Cloud SQL's socket URL works", async () => {
    const url = `postgres://postgres:${PASSWORD}@/postgres?host=${cloudSqlDir}&port=${cluster.port}`;
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: url });
    expect(run.code).toBe(EXIT.ok);
  });

  test("a host starting with @ is an abstract socket (Linux)", async () => {
    const run = await runScript(SCRIPT, ["--wait-only"], { PGHOST: `@pg-kit-${cluster.port}`, PGPORT: String(cluster.port), PGUSER: "postgres", PGPASSWORD: PASSWORD });
    expect(run.code).toBe(EXIT.ok);
  });

  test("load_balance_hosts=random spreads first attempts over the hosts; disable keeps their order", async () => {
    const proxies = await Promise.all([FaultProxy.start(cluster), FaultProxy.start(cluster)]);
    try {
      const firstTo = async (mode: string) => {
        const before = proxies.map((proxy) => proxy.accepted);
        const config = parseConfig({ url: `postgres://postgres:${PASSWORD}@127.0.0.1:${proxies[0]!.port},127.0.0.1:${proxies[1]!.port}/postgres?load_balance_hosts=${mode}`, timeout: 10 }, {});
        for (let i = 0; i < 20; i++) await closeClient((await waitUntilReady(config, { overrides: { max: 1 } })).sql);
        return proxies.map((proxy, index) => proxy.accepted - before[index]!);
      };
      expect(await firstTo("disable")).toEqual([20, 0]);
      const spread = await firstTo("random");
      expect(spread[0]! + spread[1]!).toBe(20);
      expect(spread.every((count) => count > 0)).toBe(true);
    } finally {
      await Promise.all(proxies.map((proxy) => proxy.close()));
    }
  });

  test("a socket nobody listens on is waited for, then named in the hint", async () => {
    const run = await runScript(SCRIPT, ["--wait-only", "--timeout", "1"], { DATABASE_URL: `postgres://postgres@/postgres?host=${cluster.dir}&port=1` });
    expect(run.code).toBe(EXIT.notReady);
    expect(run.stderr).toContain(`hint: no server socket at socket ${cluster.dir}/.s.PGSQL.1`);
  });

  test("the password comes from PGPASSFILE when none is given; a file others can read is ignored with a warning", async () => {
    const passfile = join(cluster.dir, "pgpass");
    writeFileSync(passfile, `127.0.0.1:${cluster.port}:*:postgres:${PASSWORD}\n`, { mode: 0o600 });
    const url = `postgres://postgres@127.0.0.1:${cluster.port}/postgres`;
    const good = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: url, PGPASSFILE: passfile });
    expect(good.code).toBe(EXIT.ok);
    expect(good.stdout).toContain("postgres://postgres:***@127.0.0.1");
    chmodSync(passfile, 0o644);
    const loose = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: url, PGPASSFILE: passfile });
    expect(loose.code).toBe(EXIT.fatal);
    expect(loose.stderr).toContain(`warning: password file ${passfile} has group or world access`);
    expectNoSecret(good, PASSWORD);
    expectNoSecret(loose, PASSWORD);
  });

  test("options (URL) and PGOPTIONS set session settings, as libpq sends them", async () => {
    const sql = await connect({ url: `${cluster.url()}?options=-c%20work_mem%3D7MB`, timeout: 10 }, { max: 1 }, {});
    try {
      expect((await sql`show work_mem`)[0]!.work_mem).toBe("7MB");
    } finally {
      await sql.end({ timeout: 1 });
    }
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: cluster.url(), PGOPTIONS: "-c no_such_setting=1" });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("no_such_setting");
  });

  test("sslmode=require against a server without TLS is fatal at once, in libpq's words", async () => {
    const run = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: `${cluster.url()}?sslmode=require` });
    expect(run.code).toBe(EXIT.fatal);
    expect(run.stderr).toContain("server does not support SSL, but SSL was required");
    expect(run.stderr).toMatch(/^hint: the server has TLS turned off/m);
    expect(events(run.stdout).filter((event) => event.event === "attempt")).toEqual([]);
    expect(events(run.stdout).at(-1)).toMatchObject({ exit_code: EXIT.fatal, code: "TLS_REFUSED" });
    expectNoSecret(run, PASSWORD);
  });

  test("a malformed URL prints no fragment of the password, and says to percent-encode it", async () => {
    for (const url of [
      `postgres://postgres:${PASSWORD.slice(0, 6)}/${PASSWORD.slice(6)}@127.0.0.1:${cluster.port}/postgres`,
      `postgres://postgres:${PASSWORD.slice(0, 6)}?${PASSWORD.slice(6)}@127.0.0.1:${cluster.port}/postgres?foo=1`,
      `postgres://postgres:${PASSWORD.slice(0, 6)}%zz${PASSWORD.slice(6)}@127.0.0.1:${cluster.port}/postgres`,
    ]) {
      const run = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: url });
      expect(run.code).toBe(EXIT.usage);
      expectNoFragment(run.stdout + run.stderr);
      expect(run.stderr.split("\n")[0]).toMatch(/^error: DATABASE_URL: /);
    }
  });
});

describe("TLS against a server with a certificate", () => {
  let cluster: Cluster;
  let files: Certificates;
  useCluster({
    password: PASSWORD,
    prepare: (stopped) => {
      files = configureTls(
        stopped,
        (certs) => ({ ssl_ca_file: `'${certs.ca}'` }),
        ["hostssl all certuser 127.0.0.1/32 cert", "local all all scram-sha-256", "host all all 127.0.0.1/32 scram-sha-256"],
      );
    },
  }, async (made) => {
    cluster = made.cluster;
    await cluster.query("create role certuser login");
  });

  test("sslmode=require connects over TLS", async () => {
    const sql = await connect({ url: `${cluster.url()}?sslmode=require`, timeout: 10 }, { max: 1 }, {});
    try {
      expect((await sql`select ssl from pg_stat_ssl where pid = pg_backend_pid()`)[0]!.ssl).toBe(true);
    } finally {
      await sql.end({ timeout: 1 });
    }
  });

  test("ssl_max_protocol_version bounds the TLS version", async () => {
    const versionWith = async (query: string) => {
      const sql = await connect({ url: `${cluster.url()}?sslmode=require${query}`, timeout: 10 }, { max: 1 }, {});
      try {
        return (await sql`select version from pg_stat_ssl where pid = pg_backend_pid()`)[0]!.version;
      } finally {
        await sql.end({ timeout: 1 });
      }
    };
    expect(await versionWith("")).toBe("TLSv1.3");
    expect(await versionWith("&ssl_max_protocol_version=TLSv1.2")).toBe("TLSv1.2");
  });

  test("verify-full with the CA passes for the name on the certificate, reached through hostaddr", async () => {
    const url = `postgres://postgres:${PASSWORD}@localhost:${cluster.port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert=${encodeURIComponent(files.ca)}`;
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: url });
    expect(run.code).toBe(EXIT.ok);
  });

  test("verify-full fails at once for a host the certificate does not name; verify-ca passes there", async () => {
    const base = `${cluster.url()}?sslrootcert=${encodeURIComponent(files.ca)}`;
    const full = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: `${base}&sslmode=verify-full` });
    expect(full.code).toBe(EXIT.fatal);
    expect(events(full.stdout).filter((event) => event.event === "attempt")).toEqual([]);
    expect(full.stderr).toMatch(/^hint: the server's certificate failed the check sslmode=verify-full/m);
    const ca = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: `${base}&sslmode=verify-ca` });
    expect(ca.code).toBe(EXIT.ok);
  });

  test("sslcert and sslkey (PGSSLCERT, PGSSLKEY) log in by client certificate, with no password", async () => {
    const env = { PGSSLCERT: files.clientCert, PGSSLKEY: files.clientKey, PGSSLMODE: "require" };
    const run = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: `postgres://certuser@127.0.0.1:${cluster.port}/postgres`, ...env });
    expect(run.code).toBe(EXIT.ok);
    const without = await runScript(SCRIPT, ["--wait-only"], { DATABASE_URL: `postgres://certuser@127.0.0.1:${cluster.port}/postgres?sslmode=require` });
    expect(without.code).toBe(EXIT.fatal);
  });

  test("sslnegotiation=direct sends TLS at once: PostgreSQL 15, which expects an SSLRequest first, rejects it", async () => {
    const run = await runScript(SCRIPT, ["--wait-only", "--timeout", "1"], { DATABASE_URL: `${cluster.url()}?sslmode=require&sslnegotiation=direct` });
    expect(run.code).toBe(EXIT.notReady);
    expect(cluster.logTail(50)).toMatch(/invalid length of startup packet|unsupported frontend protocol/);
  });

  test("sslcrl and sslcrldir (hashed names, as openssl rehash makes them): a revoked server certificate fails at once", async () => {
    const crlDir = join(cluster.dir, "crls");
    mkdirSync(crlDir);
    const hash = execFileSync("openssl", ["crl", "-hash", "-noout", "-in", files.revoked], { encoding: "utf8" }).trim();
    copyFileSync(files.revoked, join(crlDir, `${hash}.r0`));
    writeFileSync(join(crlDir, "README"), "not a revocation list: OpenSSL reads only hashed names here");
    const base = `${cluster.url()}?sslmode=verify-ca&sslrootcert=${encodeURIComponent(files.ca)}`;
    for (const query of [`&sslcrl=${encodeURIComponent(files.revoked)}`, `&sslcrldir=${encodeURIComponent(crlDir)}`]) {
      const run = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: base + query });
      expect(run.code).toBe(EXIT.fatal);
      expect(events(run.stdout).at(-1)).toMatchObject({ code: "CERT_REVOKED" });
    }
    // A file the TLS library cannot use as a revocation list is fatal at once too, not a hang.
    const unusable = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: `${base}&sslcrl=${encodeURIComponent(files.ca)}` });
    expect(unusable.code).toBe(EXIT.fatal);
    expect(events(unusable.stdout).filter((event) => event.event === "attempt")).toEqual([]);
    expect(unusable.stderr).toMatch(/^hint: a TLS file could not be used/m);
  });

  test("a CA that did not sign the certificate fails at once, even under require", async () => {
    for (const mode of ["verify-ca", "require"]) {
      const run = await runScript(SCRIPT, ["--wait-only", "--json"], { DATABASE_URL: `${cluster.url()}?sslmode=${mode}&sslrootcert=${encodeURIComponent(files.otherCa)}` });
      expect(run.code).toBe(EXIT.fatal);
      expect(events(run.stdout).filter((event) => event.event === "attempt")).toEqual([]);
      expectNoSecret(run, PASSWORD);
    }
  });
});

describe("sslnegotiation=direct against PostgreSQL 17 (TLS at once, ALPN postgresql)", () => {
  let cluster: Cluster;
  useCluster({ version: 17, password: PASSWORD, prepare: (stopped) => configureTls(stopped) }, (made) => (cluster = made.cluster));

  test("connects over TLS with no SSLRequest first", async () => {
    const sql = await connect({ url: `${cluster.url()}?sslmode=require&sslnegotiation=direct`, timeout: 10 }, { max: 1 }, {});
    try {
      expect((await sql`select ssl from pg_stat_ssl where pid = pg_backend_pid()`)[0]!.ssl).toBe(true);
    } finally {
      await sql.end({ timeout: 1 });
    }
  });
});
