/**
 * Preloaded by bench/herd.ts (`bun --preload ./bench/no-jitter.ts init-database.ts`) to measure
 * the herd without jitter: every random draw is the maximum, so the backoff is plain exponential.
 */
Math.random = () => 0.999_999;
