#!/usr/bin/env bun
/**
 * The original Python script's retry schedule, re-created: first delay 1 s, times 1.5 after
 * each failure, capped at 30 s, 10 attempts. Prints "attempt" per try; exits 0 when a
 * SELECT 1 succeeds, 1 when the attempts run out.
 * Usage: DATABASE_URL=... bun bench/original-schedule.ts
 */
import postgres from "postgres";

const SCHEDULE = { firstDelayMs: 1_000, factor: 1.5, capMs: 30_000, attempts: 10 } as const;

async function main(): Promise<number> {
  let delayMs: number = SCHEDULE.firstDelayMs;
  for (let attempt = 1; attempt <= SCHEDULE.attempts; attempt++) {
    console.log("attempt");
    const sql = postgres(process.env.DATABASE_URL!, { max: 1, connect_timeout: 10, fetch_types: false, onnotice: () => {} });
    try {
      await sql`select 1`;
      return 0;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      delayMs = Math.min(delayMs * SCHEDULE.factor, SCHEDULE.capMs);
    } finally {
      await Promise.race([sql.end({ timeout: 0 }), new Promise((resolve) => setTimeout(resolve, 100))]);
    }
  }
  return 1;
}

if (import.meta.main) process.exit(await main());
