/**
 * libpq's own URI test suite (src/interfaces/libpq/t/001_uri.pl, kept as data in
 * fixtures/libpq-uri-cases.json), and more URIs answered by the installed libpq 15
 * (fixtures/libpq-15-more-uri-cases.json), run against the kit's parser: every case must give
 * the keywords libpq gives and the same kind of connection (Unix socket or TCP), or be refused
 * where libpq refuses it. A difference fails unless the table of deviations in
 * docs/configuration.md names the case's URI.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, parseConfig, parseUrl } from "../init-database.ts";
import { ROOT } from "./helpers.ts";

interface Case {
  uri: string;
  stdout: string;
  stderr: string;
  env?: Record<string, string>;
}

const fixture = (name: string) => (JSON.parse(readFileSync(join(import.meta.dir, "fixtures", name), "utf8")) as { cases: Case[] }).cases;
const suites = { "001_uri.pl": fixture("libpq-uri-cases.json"), "libpq 15, more URIs": fixture("libpq-15-more-uri-cases.json") };
const cases = Object.values(suites).flat();
const noFile = (): string => {
  throw Object.assign(new Error("no such file"), { code: "ENOENT" });
};

/** The URIs docs/configuration.md's deviations table lists (its other rows are not about the suite's cases). */
function listedDeviations(): string[] {
  const page = readFileSync(join(ROOT, "docs", "configuration.md"), "utf8");
  const section = page.split(/^#+ Deviations from libpq$/m)[1]?.split(/^#/m)[0] ?? "";
  return [...section.matchAll(/^\| `(postgres[^`]*)`/gm)].map((match) => match[1]!);
}

/** What the kit makes of a URI, printed the way libpq_uri_regress prints libpq's answer. */
function kitAnswer({ uri, env = {} }: Case): { stdout: string } | { error: string } {
  const environment = { HOME: "/nonexistent", ...env };
  try {
    const conninfo = parseUrl(uri, "test");
    const config = parseConfig({ url: uri }, environment, noFile);
    const defaults = parseConfig({}, environment, noFile);
    // libpq_uri_regress leaves out a value equal to libpq's default (sslmode=verify-full under sslrootcert=system).
    const libpqDefaults: Record<string, string> = { sslmode: defaults.sslmode, port: "5432", channel_binding: "prefer", gssencmode: "prefer", sslsni: "1", target_session_attrs: "any" };
    const printed = Object.entries(conninfo).filter(([keyword, value]) => libpqDefaults[keyword] !== value);
    const local = config.targets.every((target) => target.socket !== undefined);
    return { stdout: [...printed.map(([keyword, value]) => `${keyword}='${value}'`), local ? "(local)" : "(inet)"].join(" ") };
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return { error: error.message };
  }
}

/** libpq prints keywords in its own table's order; compare as sets. */
function words(stdout: string): string[] {
  return stdout.split(/ (?=[a-z_]+='|\()/).sort();
}

describe("libpq's URI test suite (001_uri.pl) and more URIs answered by libpq 15", () => {
  const deviations = listedDeviations();

  test.each(Object.entries(suites))("%s: every case parses as libpq parses it, or is a listed deviation", (_name, suite) => {
    const differences: string[] = [];
    for (const testCase of suite) {
      const answer = kitAnswer(testCase);
      const libpqRefuses = testCase.stderr !== "";
      const same = "error" in answer ? libpqRefuses : !libpqRefuses && words(answer.stdout).join(" ") === words(testCase.stdout).join(" ");
      if (!same && !deviations.includes(testCase.uri)) {
        differences.push(`${testCase.uri}: libpq ${testCase.stderr || testCase.stdout}; kit ${"error" in answer ? `refuses (${answer.error})` : answer.stdout}`);
      }
    }
    expect(differences).toEqual([]);
  });

  test("the kit's refusals never quote the URL", () => {
    for (const testCase of cases.filter((entry) => entry.stderr !== "")) {
      const answer = kitAnswer(testCase);
      expect("error" in answer).toBe(true);
      const message = (answer as { error: string }).error;
      const quoted = testCase.uri.replace(/^postgres(ql)?:\/\//, "");
      if (quoted.length >= 4) expect(message).not.toContain(quoted);
      expect(message.split("\n")).toHaveLength(1);
    }
  });

  test("every listed deviation is one of the cases", () => {
    for (const uri of deviations) expect(cases.map((entry) => entry.uri)).toContain(uri);
  });
});
