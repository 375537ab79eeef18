import type { Test } from 'tap';

/**
 * Math.random is `draw` until `t` ends. The collector rounds a rated line's count at random
 * (shared/usageWire.ts, unbiasedRound): a fixed draw makes the count known, and gives the byte
 * parser and parsePacket, when both read the same line, the same count.
 */
export function stubRandom(t: Test, draw: () => number): void {
  const real = Math.random;
  Math.random = draw;
  t.teardown(() => {
    Math.random = real;
  });
}
