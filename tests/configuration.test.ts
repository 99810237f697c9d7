/**
 * Configuration as libpq reads it: the URI grammar and keyword table, PG* variables and their
 * list rules, POSTGRES_* below them, sockets, the password file, TLS settings; and no message
 * ever holding a fragment of a password.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, DEFAULTS, defaultSocketDir, describeTarget, KEYWORDS, parseConfig, parseKeywordValue, parseUrl, secretsOf } from "../init-database.ts";

const none = (): string => {
  throw Object.assign(new Error("no such file"), { code: "ENOENT" });
};
const dir = mkdtempSync(join(tmpdir(), "pg-kit-config-"));
/** A HOME with no ~/.pgpass and no ~/.postgresql, so the machine's own files play no part. */
const HOME = join(dir, "home");
mkdirSync(HOME);
const config = (options: Parameters<typeof parseConfig>[0], env: Record<string, string> = {}) =>
  parseConfig(options, { HOME, ...env }, (path) => readFileSync(path, "utf8"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function refusal(options: Parameters<typeof parseConfig>[0], env: Record<string, string> = {}): string {
  try {
    config(options, env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message.split("\n")).toHaveLength(1);
    return message;
  }
  throw new Error(`accepted: ${JSON.stringify(options)} ${JSON.stringify(env)}`);
}

/** Every substring of 4 characters or more: none may appear in a message. */
function expectNoFragment(message: string, password: string): void {
  for (let length = 4; length <= password.length; length++) {
    for (let start = 0; start + length <= password.length; start++) {
      const fragment = password.slice(start, start + length);
      if (message.includes(fragment)) throw new Error(`message holds "${fragment}" of the password: ${message}`);
    }
  }
}

describe("precedence", () => {
  test("follows --url > DATABASE_URL > PG* > POSTGRES_* > defaults, keyword by keyword", () => {
    const env = {
      DATABASE_URL: "postgres://url-user@url-host:6000/url-db",
      PGHOST: "pg-host", PGPORT: "6001", PGUSER: "pg-user", PGPASSWORD: "pg-pass", PGDATABASE: "pg-db",
      POSTGRES_HOST: "compose-host", POSTGRES_USER: "compose-user", POSTGRES_PASSWORD: "compose-pass", POSTGRES_DB: "compose-db",
    };
    expect(config({ url: "postgres://flag-user@flag-host/flag-db" }, env))
      .toMatchObject({ targets: [{ host: "flag-host", port: 6001 }], user: "flag-user", password: "pg-pass", database: "flag-db" });
    expect(config({}, env)).toMatchObject({ targets: [{ host: "url-host", port: 6000 }], user: "url-user", database: "url-db" });
    const { DATABASE_URL: _, ...withoutUrl } = env;
    expect(config({}, withoutUrl)).toMatchObject({ targets: [{ host: "pg-host", port: 6001 }], user: "pg-user", password: "pg-pass", database: "pg-db" });
    expect(config({}, { POSTGRES_USER: "app", POSTGRES_PASSWORD: "pw", POSTGRES_HOST: "db" }))
      .toMatchObject({ targets: [{ host: "db", port: 5432 }], user: "app", password: "pw", database: "app" });
  });

  test("with nothing set, connects to localhost:5432 as the contract says; a hostless URL takes the socket", () => {
    expect(config({})).toMatchObject({
      targets: [{ host: "localhost", port: 5432 }], user: "postgres", password: undefined, database: "postgres",
      sslmode: "prefer", timeoutMs: DEFAULTS.timeoutMs, connectTimeoutMs: DEFAULTS.connectTimeoutMs,
    });
    expect(config({}).targets[0]!.socket).toBeUndefined();
    expect(config({}, { PGPORT: "5433" }).targets).toEqual([{ host: "localhost", port: 5433 }]);
    const socketDir = defaultSocketDir();
    expect(DEFAULTS.socketDirs as readonly string[]).toContain(socketDir);
    expect(config({ url: "postgres:///postgres" })).toMatchObject({ targets: [{ host: socketDir, port: 5432, socket: `${socketDir}/.s.PGSQL.5432` }] });
    expect(defaultSocketDir((path) => path === "/tmp")).toBe("/tmp");
    expect(describeTarget(config({ url: "postgres://postgres@/postgres" }))).toBe(`postgres://postgres@/postgres?host=${socketDir}&port=5432`);
  });

  test("reads passwords from files, dropping one trailing newline; refuses ambiguous or unreadable ones", () => {
    const files: Record<string, string> = { "/run/secrets/pg": "from-file\n", "/run/secrets/compose": "compose-file\r\n" };
    const read = (path: string) => files[path] ?? none();
    expect(parseConfig({}, { HOME, PGPASSWORD_FILE: "/run/secrets/pg" }, read).password).toBe("from-file");
    expect(parseConfig({}, { HOME, POSTGRES_PASSWORD_FILE: "/run/secrets/compose" }, read).password).toBe("compose-file");
    expect(refusal({}, { POSTGRES_PASSWORD: "a", POSTGRES_PASSWORD_FILE: "/x" })).toMatch(/both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE/);
    expect(refusal({}, { PGPASSWORD_FILE: "/missing" })).toMatch(/PGPASSWORD_FILE=\/missing cannot be read \(ENOENT\)/);
  });
});

describe("hosts and ports, by libpq's list rules", () => {
  test("several hosts, IPv6, one port for all or one each, an empty port meaning the default", () => {
    expect(config({ url: "postgresql://u:p%40ss@h1:5433,[::1],h3/db" }).targets)
      .toEqual([{ host: "h1", port: 5433 }, { host: "::1", port: 5432 }, { host: "h3", port: 5432 }]);
    expect(config({}, { PGHOST: "h1,h2", PGPORT: "5433,5434" }).targets).toEqual([{ host: "h1", port: 5433 }, { host: "h2", port: 5434 }]);
    expect(config({}, { PGHOST: "h1,h2", PGPORT: "5433" }).targets).toEqual([{ host: "h1", port: 5433 }, { host: "h2", port: 5433 }]);
    // A hostless URL's single port applies to every host from PGHOST.
    expect(config({ url: "postgres://u@:5433/db" }, { PGHOST: "h1,h2" }).targets).toEqual([{ host: "h1", port: 5433 }, { host: "h2", port: 5433 }]);
    expect(config({ url: "postgresql://host:/db" }).targets).toEqual([{ host: "host", port: 5432 }]);
    expect(refusal({}, { PGHOST: "h1,h2,h3", PGPORT: "1,2" })).toBe("PGPORT: 2 ports for 3 hosts; give one port for all, or one for each host");
    expect(refusal({}, { PGPORT: "x" })).toBe('PGPORT="x" is not a number from 1 to 65535');
  });

  test("hostaddr: TCP goes to the address, the host name stays for TLS and the password file", () => {
    expect(config({ url: "postgres://localhost/db?hostaddr=127.0.0.1" }).targets).toEqual([{ host: "localhost", hostaddr: "127.0.0.1", port: 5432 }]);
    expect(config({}, { PGHOSTADDR: "127.0.0.1,127.0.0.2", PGPORT: "7000" }).targets)
      .toEqual([{ host: "127.0.0.1", hostaddr: "127.0.0.1", port: 7000 }, { host: "127.0.0.2", hostaddr: "127.0.0.2", port: 7000 }]);
    expect(refusal({}, { PGHOST: "a,b", PGHOSTADDR: "127.0.0.1" })).toMatch(/1 hostaddr values for 2 hosts/);
  });

  test("a host starting with / or @ is a socket directory; hostless URLs use the socket", () => {
    expect(config({ url: "postgres://user:pw@/db?host=/cloudsql/proj:region:inst" }).targets)
      .toEqual([{ host: "/cloudsql/proj:region:inst", port: 5432, socket: "/cloudsql/proj:region:inst/.s.PGSQL.5432" }]);
    expect(config({ url: "postgres://%2Fvar%2Flib%2Fpostgresql:6000/db" }).targets[0]!.socket).toBe("/var/lib/postgresql/.s.PGSQL.6000");
    expect(config({}, { PGHOST: "@abstract" }).targets[0]!.socket).toBe("\0abstract/.s.PGSQL.5432");
    expect(config({ url: "postgres:///db" }).targets[0]!.socket).toBe(`${defaultSocketDir()}/.s.PGSQL.5432`);
    expect(config({ url: "postgres://user@/db" }).targets[0]!.socket).toBe(`${defaultSocketDir()}/.s.PGSQL.5432`);
  });
});

describe("the URI grammar and keyword table", () => {
  test("query keywords override the URL's parts; + stays +; ssl=true means sslmode=require", () => {
    expect(parseUrl("postgres://a@h/d?user=b&dbname=e&application_name=my+app&ssl=true", "test"))
      .toEqual({ user: "b", host: "h", dbname: "e", application_name: "my+app", sslmode: "require" });
    expect(config({ url: "postgres://h/d?application_name=my+app" }).applicationName).toBe("my+app");
    expect(config({ url: "postgres://u:a@b@host/db" })).toMatchObject({ user: "u", password: "a@b", targets: [{ host: "host" }] });
  });

  test("refuses %00, unknown keywords (suggesting the nearest), and keywords it cannot honour, each with a reason", () => {
    expect(refusal({ url: "postgresql://a%00b" })).toMatch(/%00, which libpq refuses/);
    expect(refusal({ url: "postgres://u:pw%00x@h/db" })).toMatch(/password holds %00/);
    expect(refusal({ url: "postgresql://host/db?uzer=x" })).toMatch(/not a libpq connection keyword \(did you mean "user"\?\)/);
    expect(refusal({ url: "postgres://h/db?service=prod" })).toMatch(/service cannot be honoured: connection service files/);
    expect(refusal({}, { PGSERVICE: "prod" })).toMatch(/^PGSERVICE="prod" cannot be honoured/);
    expect(refusal({ url: "postgres://h/db?channel_binding=require" })).toMatch(/SCRAM-SHA-256-PLUS/);
    expect(refusal({ url: "postgres://h/db?gssencmode=require" })).toMatch(/GSSAPI/);
    expect(refusal({ url: "postgres://h/db?keepalives_interval=5" })).toMatch(/TCP_KEEPINTVL/);
    expect(refusal({ url: "postgres://h/db?client_encoding=LATIN1" })).toMatch(/UTF-8 only/);
    expect(refusal({ url: "postgres://h/db?sslmode=bogus" })).toMatch(/sslmode is not one of disable, allow, prefer/);
    expect(config({ url: "postgres://h/db?keepalives_interval=0&tcp_user_timeout=0&gssencmode=prefer&channel_binding=prefer&client_encoding=utf8" }))
      .toMatchObject({ targets: [{ host: "h" }] });
  });

  test("keyword=value connection strings, as libpq reads them (quotes, \\ escapes), in DATABASE_URL or --url", () => {
    expect(parseKeywordValue("host = db  port=5433 dbname=app user=u password='p w\\'x' options=-c\\ a=b", "test"))
      .toEqual({ host: "db", port: "5433", dbname: "app", user: "u", password: "p w'x", options: "-c a=b" });
    expect(config({}, { DATABASE_URL: "host=db sslmode=require user=app" })).toMatchObject({ targets: [{ host: "db", port: 5432 }], user: "app", sslmode: "require" });
    expect(refusal({ url: "host=db x" })).toBe('--url: setting 2 of the connection string has no "=" after its keyword');
    expect(refusal({ url: "host='db" })).toMatch(/setting 1 of the connection string has a quoted value with no closing '/);
    expect(refusal({ url: "mysql://u:Hunter2Secret@h/db" })).toBe("--url: not a postgres:// or postgresql:// URL, nor a keyword=value connection string");
    expect(refusal({ url: "host=db pasword=Hunter2Secret" })).toMatch(/setting 2 of the connection string is not a libpq connection keyword \(did you mean "password"\?\)/);
  });

  test("every keyword's PG* variable is read: a refused keyword is refused from its variable too, an honoured value is taken", () => {
    for (const [keyword, row] of Object.entries(KEYWORDS)) {
      expect(keyword).toMatch(/^[a-z_]+$/);
      if (!row.env) continue;
      expect(row.env).toMatch(/^PG[A-Z_]+$/);
      if (row.refused && !row.values) {
        expect(refusal({}, { [row.env]: "x" })).toStartWith(`${row.env}="x" cannot be honoured: ${row.refused}`);
      } else if (row.values) {
        const refused = Object.keys(row.refusedValues ?? {});
        if (!row.refused) expect(refusal({}, { [row.env]: "no-such-value" })).toStartWith(`${row.env}="no-such-value" is not one of`);
        for (const value of refused.filter((value) => value !== "*")) expect(refusal({}, { [row.env]: value })).toContain("cannot be honoured");
      }
    }
    expect(config({}, { PGLOADBALANCEHOSTS: "random", PGCHANNELBINDING: "disable", PGSSLNEGOTIATION: "postgres", PGGSSENCMODE: "disable" }))
      .toMatchObject({ loadBalanceHosts: "random", tls: { negotiation: "postgres" } });
    expect(refusal({}, { PGSSLMODE: "prefer", PGSSLNEGOTIATION: "direct" })).toMatch(/sslnegotiation=direct needs sslmode require/);
  });

  test("connect_timeout follows libpq: whole seconds, at least 2, 0 or less for no limit", () => {
    expect(config({ url: "postgres://h/d?connect_timeout=7" }).connectTimeoutMs).toBe(7000);
    expect(config({ url: "postgres://h/d?connect_timeout=1" }).connectTimeoutMs).toBe(2000);
    expect(config({ url: "postgres://h/d?connect_timeout=0", timeout: 30 }).connectTimeoutMs).toBe(30_000);
    expect(config({}, { PGCONNECT_TIMEOUT: " 5 " }).connectTimeoutMs).toBe(5000);
    expect(refusal({}, { PGCONNECT_TIMEOUT: "1.5" })).toBe('PGCONNECT_TIMEOUT="1.5" is not an integer');
    expect(config({ url: "postgres://h/d?connect_timeout=7", connectTimeout: 3 }).connectTimeoutMs).toBe(3000);
  });

  test("options, application names, keepalives, load balancing and session attributes are kept", () => {
    const resolved = config({ url: "postgres://h/d?options=-c%20work_mem%3D7MB&fallback_application_name=svc&keepalives_idle=9&load_balance_hosts=random&target_session_attrs=read-write" });
    expect(resolved).toMatchObject({ options: "-c work_mem=7MB", applicationName: "svc", keepAliveSeconds: 9, loadBalanceHosts: "random", targetSessionAttrs: "read-write" });
    expect(config({ url: "postgres://h/d?keepalives=0" }).keepAliveSeconds).toBe(0);
    expect(config({}, { PGOPTIONS: "-c search_path=app", PGAPPNAME: "from-env" }, )).toMatchObject({ options: "-c search_path=app", applicationName: "from-env" });
    expect(config({ url: "postgres://h/d?application_name=a&fallback_application_name=b", applicationName: "program" }).applicationName).toBe("a");
    expect(config({ applicationName: "program" }).applicationName).toBe("program");
  });
});

describe("no message holds a fragment of the password", () => {
  const PASSWORD = "Hunter2Secret";
  // The password with one unencoded special character, in every place it can break a URL.
  const broken = ["/", "?", "#", "@", "%", "%zz", "%00", ":", "[", "]", ",", "=", "&", "/x@y", "?a=b", "&c", "%2"].flatMap((special) =>
    [1, 4, 7, PASSWORD.length].map((at) => PASSWORD.slice(0, at) + special + PASSWORD.slice(at)));

  test("for every malformed URL, in every source", () => {
    let refused = 0;
    for (const password of broken) {
      for (const url of [`postgres://app:${password}@127.0.0.1:5432/db`, `postgresql://app:${password}@db-host/app?sslmode=require`, `postgres://app:${password}@h1:5432,h2:5433/db`]) {
        for (const [options, env] of [[{ url }, {}], [{}, { DATABASE_URL: url }]] as const) {
          try {
            const resolved = config(options, env);
            // Accepted: then the password is what was written (the last "@" ends it), %-escapes decoded.
            if (!password.includes("%")) expect(resolved.password).toBe(password);
          } catch (error) {
            refused++;
            expect(error).toBeInstanceOf(ConfigError);
            expectNoFragment((error as Error).message, PASSWORD);
          }
        }
      }
    }
    expect(refused).toBeGreaterThan(20);
  });

  test("an unencoded / in the password gets the percent-encode advice", () => {
    expect(refusal({ url: "postgres://app:Hunter2/Secret@127.0.0.1:5432/db" })).toMatch(/percent-encode them \(\/ as %2F/);
    expect(refusal({ url: "postgres://app:Hunter/2Secret@127.0.0.1:5432/db" })).toMatch(/percent-encode/);
  });
});

describe("the password file, as libpq reads it", () => {
  const passfile = (name: string, text: string, mode = 0o600) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    chmodSync(path, mode);
    return path;
  };

  test("matches host, port, database and user, with * and \\: escapes, first match wins", () => {
    const path = passfile("pgpass", [
      "# comment",
      "other:5432:*:app:not-this",
      "db.example:5432:shop:app:first\\:one",
      "db.example:*:*:app:second",
      "*:*:*:*:wild\\\\card",
    ].join("\n") + "\n");
    expect(config({ url: "postgres://app@db.example/shop" }, { PGPASSFILE: path }).targets[0]!.password).toBe("first:one");
    expect(config({ url: "postgres://app@db.example:6000/other" }, { PGPASSFILE: path }).targets[0]!.password).toBe("second");
    expect(config({ url: `postgres://x@h/d?passfile=${encodeURIComponent(path)}` }).targets[0]!.password).toBe("wild\\card");
    // A password given anywhere else wins over the file.
    expect(config({ url: "postgres://app:given@db.example/shop" }, { PGPASSFILE: path }).targets[0]!.password).toBeUndefined();
    expect(secretsOf(config({ url: "postgres://app@db.example/shop" }, { PGPASSFILE: path }))).toContain("first:one");
  });

  test("reads ~/.pgpass by default, and names a socket connection in the default directory localhost", () => {
    const home = join(dir, "home-with-pgpass");
    mkdirSync(home);
    writeFileSync(join(home, ".pgpass"), "localhost:5432:*:app:socket-pass\n", { mode: 0o600 });
    expect(parseConfig({ url: "postgres://app@/db" }, { HOME: home }).targets[0]!.password).toBe("socket-pass");
    expect(parseConfig({ url: "postgres://app@/db?host=/elsewhere" }, { HOME: home }).targets[0]!.password).toBeUndefined();
  });

  test("a file others can read is ignored, with libpq's warning", () => {
    const path = passfile("loose", "*:*:*:*:loose-pass\n", 0o644);
    const resolved = config({ url: "postgres://app@h/db" }, { PGPASSFILE: path });
    expect(resolved.targets[0]!.password).toBeUndefined();
    expect(resolved.notices).toEqual([`password file ${path} has group or world access; permissions should be u=rw (0600) or less; ignored`]);
  });
});

describe("TLS settings", () => {
  test("verify modes need a root certificate, as in libpq; sslrootcert=system means verify-full", () => {
    expect(refusal({ url: "postgres://h/d?sslmode=verify-full" })).toMatch(/sslmode=verify-full needs the server's root certificate/);
    expect(config({ url: "postgres://h/d?sslrootcert=system" })).toMatchObject({ sslmode: "verify-full", tls: { verifyChain: true, verifyHost: true } });
    expect(refusal({ url: "postgres://h/d?sslrootcert=system&sslmode=require" })).toMatch(/too weak for sslrootcert=system/);
    expect(refusal({ url: "postgres://h/d?sslnegotiation=direct" })).toMatch(/sslnegotiation=direct needs sslmode require/);
  });

  test("a root certificate makes require check the chain; verify-ca skips the host name", () => {
    const ca = join(dir, "ca.crt");
    writeFileSync(ca, "-----BEGIN CERTIFICATE-----\n");
    expect(config({ url: `postgres://h/d?sslmode=require&sslrootcert=${ca}` }).tls).toMatchObject({ verifyChain: true, verifyHost: false });
    expect(config({ url: `postgres://h/d?sslmode=verify-ca&sslrootcert=${ca}` }).tls).toMatchObject({ verifyChain: true, verifyHost: false });
    expect(config({ url: "postgres://h/d?sslmode=require&sslrootcert=/no/such/file" }).tls).toMatchObject({ verifyChain: false });
    expect(config({ url: "postgres://h/d?sslmode=require" }).tls).toMatchObject({ verifyChain: false, minVersion: "TLSv1.2" });
  });

  test("a private key others can read is refused", () => {
    const cert = join(dir, "client.crt");
    const key = join(dir, "client.key");
    writeFileSync(cert, "cert");
    writeFileSync(key, "key", { mode: 0o644 });
    chmodSync(key, 0o644);
    expect(refusal({}, { PGSSLCERT: cert, PGSSLKEY: key, PGSSLMODE: "require" })).toMatch(/private key file .* has group or world access/);
  });
});
