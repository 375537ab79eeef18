import t from 'tap';
import { createAuthThrottle, LOOKUPS_WAITING_PER_SLOT } from '../api/auth/failureThrottle';

// The process-wide cap on reads of keys (beginLookup), pure: no clock involved.

const throttle = (maxLookups: number) =>
  createAuthThrottle({ maxFailuresPerIp: 0, maxFailuresPerKey: 0, windowMs: 60_000, maxEntries: 100, maxLookups }, () => 0);

t.test('reads of one key id share a place, a fresh read takes its own; the next wait, in turn, and beyond them are refused', async (t) => {
  const { beginLookup, lookupStats } = throttle(2);
  const a = beginLookup('key-a', false);
  const sameKey = beginLookup('key-a', false);
  const fresh = beginLookup('key-a', true);
  t.ok(typeof a === 'function' && typeof sameKey === 'function' && typeof fresh === 'function', 'under the cap, decided at once');
  t.match(lookupStats, { running: 2 }, 'two places: key-a shared, and the fresh read');
  const waiting = Array.from({ length: LOOKUPS_WAITING_PER_SLOT * 2 }, (_, i) => beginLookup(`key-${i}`, false));
  t.ok(
    waiting.every((turn) => turn instanceof Promise),
    'the next wait',
  );
  t.equal(beginLookup('key-z', false), undefined, 'beyond LOOKUPS_WAITING_PER_SLOT × the cap waiting: refused');
  t.match(lookupStats, { running: 2, peak: 2, refused: 1 }, 'counted');
  t.equal(typeof beginLookup('key-a', false), 'function', 'a read of key-a in flight: joined, without a place');

  let started = 0;
  for (const turn of waiting) void (turn as Promise<() => void>).then(() => (started += 1));
  (fresh as () => void)();
  await Promise.resolve();
  t.equal(started, 1, "the fresh read's place goes to the first waiting");
  t.match(lookupStats, { running: 2 }, 'handed on, not given back');
});

t.test('the reads of a key id waiting when a read of it begins join that one', async (t) => {
  const { beginLookup, lookupStats } = throttle(1);
  const first = beginLookup('key-a', true) as () => void;
  const waitingB = beginLookup('key-b', false) as Promise<() => void>;
  const waitingC = beginLookup('key-c', false) as Promise<() => void>;
  const waitingB2 = beginLookup('key-b', false) as Promise<() => void>;
  first();
  const endB = await waitingB;
  const endB2 = await waitingB2;
  let cStarted = false;
  void waitingC.then(() => (cStarted = true));
  await Promise.resolve();
  t.notOk(cStarted, "the second key-b read, behind key-c, joined the first: key-c still waits for key-b's place");
  endB();
  await Promise.resolve();
  t.notOk(cStarted, 'key-b is still read for the other');
  endB2();
  (await waitingC)();
  t.match(lookupStats, { running: 0, peak: 1, refused: 0 }, 'every place given back');
});
