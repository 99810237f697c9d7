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

/** Horizontal bars of the mean lag with a whisker to the worst, on a log scale. */
export function chart(results: Record<string, Summary>, title: string): string {
  const names = Object.keys(results);
  const width = 900, left = 270, right = 190, rowHeight = 34, top = 40;
  const height = top + names.length * rowHeight + 40;
  const minMs = 1, maxMs = 20_000;
  const x = (ms: number) => left + ((Math.log10(Math.max(ms, minMs)) - Math.log10(minMs)) / (Math.log10(maxMs) - Math.log10(minMs))) * (width - left - right);
  const ticks = [1, 10, 100, 1_000, 10_000];
  const rows = names.map((name, index) => {
    const { mean, worst } = results[name]!;
    const y = top + index * rowHeight;
    return `<text x="${left - 8}" y="${y + 16}" text-anchor="end">${name}</text>` +
      `<rect x="${left}" y="${y + 4}" width="${(x(mean) - left).toFixed(1)}" height="16" fill="${index === 0 ? "#2b7a3d" : "#8a8f98"}"/>` +
      `<line x1="${x(mean).toFixed(1)}" x2="${x(worst).toFixed(1)}" y1="${y + 12}" y2="${y + 12}" stroke="#333"/>` +
      `<line x1="${x(worst).toFixed(1)}" x2="${x(worst).toFixed(1)}" y1="${y + 6}" y2="${y + 18}" stroke="#333"/>` +
      `<text x="${(x(worst) + 6).toFixed(1)}" y="${y + 16}" font-size="11">${Math.round(mean)} ms (worst ${Math.round(worst)})</text>`;
  });
  const axis = ticks.map((tick) => `<line x1="${x(tick)}" x2="${x(tick)}" y1="${top - 4}" y2="${height - 36}" stroke="#ddd"/>` +
    `<text x="${x(tick)}" y="${height - 20}" text-anchor="middle" font-size="11">${tick >= 1000 ? `${tick / 1000} s` : `${tick} ms`}</text>`);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">` +
    `<rect width="100%" height="100%" fill="white"/>` +
    `<text x="10" y="20" font-weight="bold">${title}</text>` +
    axis.join("") + rows.join("") + `</svg>\n`;
}
