/** Shared by the benchmarks: timed child processes and summary figures. */
import { join } from "node:path";

export const ROOT = join(import.meta.dir, "..");

export interface Timed {
  code: number;
  /** Wall clock (ms since the epoch, fractional) when the process ended. */
  endedAt: number;
  ms: number;
  stdout: string;
}

export function wallClock(): number {
  return performance.timeOrigin + performance.now();
}

/** Run a command to its end, timing it from spawn to exit. */
export async function timed(command: string[], env: Record<string, string | undefined> = {}): Promise<Timed> {
  const startedAt = wallClock();
  const child = Bun.spawn(command, { cwd: ROOT, env: { ...process.env, ...env }, stdout: "pipe", stderr: "ignore", stdin: "ignore" });
  const [stdout, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
  const endedAt = wallClock();
  return { code, endedAt, ms: endedAt - startedAt, stdout };
}

export interface Summary {
  n: number;
  mean: number;
  median: number;
  worst: number;
}

export function summarise(values: number[]): Summary {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return {
    n: sorted.length,
    mean: sorted.reduce((sum, value) => sum + value, 0) / sorted.length,
    median: sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2,
    worst: sorted.at(-1)!,
  };
}

/** A plain-text table: the first row is the header. */
export function table(rows: (string | number)[][]): string {
  const cells = rows.map((row) => row.map(String));
  const widths = cells[0]!.map((_, column) => Math.max(...cells.map((row) => row[column]!.length)));
  return cells.map((row) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join("  ")).join("\n");
}

export function machine(): string {
  const cpus = navigator.hardwareConcurrency;
  return `${cpus} cores, Bun ${Bun.version}, ${process.platform}-${process.arch}`;
}
