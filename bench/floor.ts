#!/usr/bin/env bun
/**
 * The floor of the kit's stack: start Bun, connect with postgres.js, run one query, exit.
 * bench/rerun.ts times it beside a re-run of init-database.ts, so a reader sees what the kit
 * itself adds on top of its runtime and client.
 *
 * Usage: DATABASE_URL=postgres://user:pass@host:port/db bun bench/floor.ts
 * Exit codes: 0 the query answered, 1 it failed.
 * Example: DATABASE_URL=postgres://postgres:secret@127.0.0.1:5432/postgres bun bench/floor.ts
 */
import postgres from "postgres";

const sql = postgres(process.env.DATABASE_URL!, { max: 1, connect_timeout: 10, onnotice: () => {} });
try {
  await sql`select 1`;
} catch (error) {
  console.error(`error: ${(error as Error).message}`);
  process.exitCode = 1;
} finally {
  await sql.end({ timeout: 1 });
}
