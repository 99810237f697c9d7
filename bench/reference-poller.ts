#!/usr/bin/env bun
/**
 * The "earliest possible moment": tries an authenticated SELECT 1 every 2 ms until one
 * succeeds, then prints the wall-clock time (ms since the epoch) of that success.
 * Usage: DATABASE_URL=... bun bench/reference-poller.ts
 */
import postgres from "postgres";

const POLL_MS = 2;

async function main(): Promise<number> {
  for (;;) {
    const sql = postgres(process.env.DATABASE_URL!, { max: 1, connect_timeout: 1, fetch_types: false, onnotice: () => {} });
    try {
      await sql`select 1`;
      console.log(performance.timeOrigin + performance.now());
      return 0;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    } finally {
      await Promise.race([sql.end({ timeout: 0 }), new Promise((resolve) => setTimeout(resolve, 100))]);
    }
  }
}

if (import.meta.main) process.exit(await main());
