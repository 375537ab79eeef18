import { randomBytes, randomUUID } from 'node:crypto';
import { createAuthThrottle } from '../api/auth/failureThrottle';
import { hashSecret, newSecret, parsePresentedKey, secretMatches } from '../api/keys/keyMaterial';
import { steadyNow } from '../shared/steadyClock';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import type { BenchResult } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';

// 2b. What the checksum and the failure throttle add to every authenticated request, next to the
// HMAC every request already pays. Tight loops in this process, interleaved rounds; the numbers
// are upper bounds of the per-request cost (a warm loop is cheaper than the same call between
// requests, see benchmark 2, but far below the ~170 µs a request costs end to end).

const CHECKS = [
  'legacy parse',
  'checksummed parse',
  'throttle, clean address',
  'wall clock (Date.now)',
  'steady clock (the cache TTL)',
  'HMAC-SHA-256 of the secret (for scale)',
] as const;
type Check = (typeof CHECKS)[number];

function subjects(pepper: string): Record<Check, () => unknown> {
  const keyId = randomUUID();
  const secret = randomBytes(32).toString('base64url');
  const legacy = `ku_${keyId.replace(/-/g, '')}_${secret}`;
  const checksummed = newSecret(keyId, pepper).plaintext;
  const throttle = createAuthThrottle({ maxFailuresPerIp: 100, maxFailuresPerKey: 20, windowMs: 60_000, maxEntries: 50_000 }, steadyNow);
  const stored = hashSecret(secret, pepper);
  return {
    'legacy parse': () => parsePresentedKey(legacy),
    'checksummed parse': () => parsePresentedKey(checksummed),
    'throttle, clean address': () => throttle.refuseIp('203.0.113.7'),
    // The verifier reads both clocks per request since the TTL moved to the steady one.
    'wall clock (Date.now)': () => Date.now(),
    'steady clock (the cache TTL)': () => steadyNow(),
    'HMAC-SHA-256 of the secret (for scale)': () => secretMatches(secret, stored, pepper),
  };
}

function nsPerCall(run: () => unknown, iterations: number): number {
  let sink = 0;
  const started = process.hrtime.bigint();
  for (let i = 0; i < iterations; i += 1) if (run()) sink += 1;
  const elapsed = Number(process.hrtime.bigint() - started);
  if (sink < 0) throw new Error('unreachable: keeps the loop from being optimised away');
  return elapsed / iterations;
}

export function runKeyCheck(ctx: BenchContext): BenchResult {
  const rounds = ctx.quick ? 3 : 15;
  const iterations = ctx.quick ? 20_000 : 200_000;
  const run = subjects(ctx.pepper);
  const samples = Object.fromEntries(CHECKS.map((check) => [check, [] as number[]])) as Record<Check, number[]>;
  for (const check of CHECKS) nsPerCall(run[check], iterations); // warm-up
  for (const order of interleavedSchedule(CHECKS, rounds)) {
    for (const check of order) samples[check].push(nsPerCall(run[check], iterations));
  }
  const rows = CHECKS.map((check) => {
    const values = samples[check];
    return [
      check,
      rounds,
      `${median(values).toFixed(0)} ns`,
      `${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)} ns`,
      `${Math.max(...values).toFixed(0)} ns`,
    ];
  });
  const added = median(samples['checksummed parse']) - median(samples['legacy parse']) + median(samples['throttle, clean address']);
  ctx.log(`key checks: the checksum and the throttle add ${added.toFixed(0)} ns per request (median)`);
  const steady = median(samples['steady clock (the cache TTL)']);
  return {
    heading: HEADINGS.keyCheck,
    tables: [
      {
        title: `Tight loops, ${iterations.toLocaleString('en')} calls per round, ${rounds} interleaved rounds`,
        columns: ['check', 'rounds', 'median per call', 'range', 'worst round'],
        rows,
      },
    ],
    notes: [
      `The checksum (CRC32 over 79 characters) and the throttle's address check add ${added.toFixed(0)} ns per request at the median: ${((added / 170_000) * 100).toFixed(2)} % of the ≈ 170 µs a request costs (benchmark 1).`,
      `The steady clock the key cache's TTL reads per request: ${steady.toFixed(0)} ns at the median (the wall clock beside it: ${median(samples['wall clock (Date.now)']).toFixed(0)} ns).`,
    ],
    raw: { rounds, iterations, samples },
  };
}
