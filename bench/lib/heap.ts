// The V8 heap once garbage is collected, for the memory benchmarks (run with node --expose-gc).
const gc = (globalThis as { gc?: () => void }).gc;

/** Heap bytes in use after full collections; `withArrayBuffers` adds typed arrays' backing stores. */
export function settledHeapBytes(withArrayBuffers = false): number {
  if (!gc) throw new Error('run with node --expose-gc');
  for (let i = 0; i < 4; i++) gc();
  const usage = process.memoryUsage();
  return usage.heapUsed + (withArrayBuffers ? usage.arrayBuffers : 0);
}
