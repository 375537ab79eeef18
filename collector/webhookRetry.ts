// When a failed webhook attempt is tried again: exponential backoff with "equal jitter".
// Attempt n (1-based) that fails waits between half and all of base × 2^(n-1), so the waits
// after attempts 1…7 with the default 30 s base sum to at most 63.5 minutes, and deliveries that
// failed together (a receiver that was down) do not all retry in the same second.

export interface RetryPolicy {
  maxAttempts: number;
  baseDelayMs: number;
}

/** The wait after failed attempt `attempt`, or undefined when it was the last one. */
export function retryDelayMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number | undefined {
  if (attempt >= policy.maxAttempts) return undefined;
  const step = policy.baseDelayMs * 2 ** (attempt - 1);
  return Math.round(step / 2 + (random() * step) / 2);
}
