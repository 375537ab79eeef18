import { seededRandom } from '../../harness/random';

// Small, dependency-free statistics for benchmarks on noisy machines: order statistics, a
// paired bootstrap of the median ratio (seeded, so a run's intervals are reproducible), and an
// interleaved block schedule.

export function sorted(values: readonly number[]): number[] {
  return [...values].sort((a, b) => a - b);
}

/** Linear interpolation between closest ranks (the "R-7" definition used by numpy and R). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile must be within [0, 100], got ${p}`);
  const s = sorted(values);
  return percentileOfSorted(s, p);
}

export function percentileOfSorted(s: ArrayLike<number>, p: number): number {
  if (s.length === 0) return NaN;
  const rank = (p / 100) * (s.length - 1);
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  return s[low] + (s[high] - s[low]) * (rank - low);
}

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

export function mean(values: readonly number[]): number {
  return values.length === 0 ? NaN : values.reduce((sum, v) => sum + v, 0) / values.length;
}

export interface RatioEstimate {
  /** Median of the per-round ratios variant / baseline. */
  median: number;
  low: number;
  high: number;
  rounds: number;
}

// Blocks are paired by round (each round runs every variant once, back to back), so the ratio of
// a round cancels the slow drift of a shared, noisy machine. The point estimate is the median of
// the per-round ratios; its interval is a percentile bootstrap over rounds.
export function medianRatio(
  variant: readonly number[],
  baseline: readonly number[],
  options: { resamples?: number; confidence?: number; seed?: number } = {},
): RatioEstimate {
  if (variant.length !== baseline.length) throw new RangeError('variant and baseline need one value per round');
  const ratios = variant.map((v, i) => v / baseline[i]).filter((r) => Number.isFinite(r));
  if (ratios.length === 0) return { median: NaN, low: NaN, high: NaN, rounds: 0 };
  const resamples = options.resamples ?? 10_000;
  const confidence = options.confidence ?? 0.95;
  const random = seededRandom(options.seed ?? 1);
  const medians = new Float64Array(resamples);
  const sample = new Array<number>(ratios.length);
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < ratios.length; i++) sample[i] = ratios[Math.floor(random() * ratios.length)];
    medians[r] = median(sample);
  }
  medians.sort();
  const tail = ((1 - confidence) / 2) * 100;
  return {
    median: median(ratios),
    low: percentileOfSorted(medians, tail),
    high: percentileOfSorted(medians, 100 - tail),
    rounds: ratios.length,
  };
}

// Round r runs the variants rotated by r, so every variant takes every position equally often:
// whatever the previous block leaves behind (a checkpoint, a GC, a warm cache) is spread evenly.
export function interleavedSchedule<T>(variants: readonly T[], rounds: number): T[][] {
  return Array.from({ length: rounds }, (_, r) => variants.map((_, i) => variants[(i + r) % variants.length]));
}

export function summarize(values: readonly number[]) {
  const s = sorted(values);
  return {
    n: s.length,
    min: s[0] ?? NaN,
    p50: percentileOfSorted(s, 50),
    p95: percentileOfSorted(s, 95),
    p99: percentileOfSorted(s, 99),
    max: s[s.length - 1] ?? NaN,
    mean: mean(s),
  };
}
