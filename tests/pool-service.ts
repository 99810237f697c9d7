#!/usr/bin/env bun
/**
 * A service stand-in for tests/lost-connection-everywhere.test.ts: a connect() pool (max 4) on
 * DATABASE_URL running `select 1` every 10 ms, in a transaction with --in-transaction, printing
 * one JSON line per query: when it ended (Date.now()), how long it took, and its error code.
 * It runs as a process of its own and absorbs postgres.js's stray timer error after a dropped
 * connection, as docs/cli.md tells a service to: inside bun test that error fails whichever test
 * is running, whatever handler is installed. Ends on SIGTERM.
 */
import { absorbDroppedClientErrors, connect, errorCode } from "../init-database.ts";

absorbDroppedClientErrors();
const inTransaction = process.argv.includes("--in-transaction");
const sql = await connect({ timeout: 30, commandTimeout: 60, applicationName: "pool-under-test" }, { max: 4 });
let stopped = false;
process.on("SIGTERM", () => (stopped = true));
while (!stopped) {
  const startedAt = performance.now();
  let code: string | undefined;
  try {
    await (inTransaction ? sql.begin((tx) => tx`select 1`) : sql`select 1`);
  } catch (error) {
    code = errorCode(error);
  }
  process.stdout.write(JSON.stringify({ at: Date.now(), ms: performance.now() - startedAt, code }) + "\n");
  await Bun.sleep(10); // the service's own pace, not a synchronisation
}
await sql.end({ timeout: 1 });
process.exit(0);
