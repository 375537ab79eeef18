import t from 'tap';
import { createAuthThrottle, type ThrottleLimits } from '../api/auth/failureThrottle';

// The throttle is pure: a fake clock drives every window.

const LIMITS: ThrottleLimits = { maxFailuresPerIp: 5, maxFailuresPerKey: 3, windowMs: 60_000, maxEntries: 100 };

function setup(limits: Partial<ThrottleLimits> = {}) {
  const clock = { now: 1_000_000 };
  const lockouts: string[] = [];
  const throttle = createAuthThrottle(
    { ...LIMITS, ...limits },
    () => clock.now,
    (scope, subject) => lockouts.push(`${scope}:${subject}`),
  );
  return { throttle, clock, lockouts };
}

t.test('an address is refused after maxFailuresPerIp failures, until its window ends', async (t) => {
  const { throttle, clock, lockouts } = setup();
  for (let i = 0; i < 4; i += 1) throttle.failed('192.0.2.1');
  t.equal(throttle.refuseIp('192.0.2.1'), 0, '4 failures: still allowed');
  clock.now += 10_000;
  throttle.failed('192.0.2.1');
  t.equal(throttle.refuseIp('192.0.2.1'), 50_000, 'the 5th: refused for the rest of the window that began with the 1st');
  t.equal(throttle.refuseIp('192.0.2.2'), 0, 'another address is not affected');
  t.same(lockouts, ['ip:192.0.2.1']);
  clock.now += 49_999;
  t.equal(throttle.refuseIp('192.0.2.1'), 1);
  clock.now += 1;
  t.equal(throttle.refuseIp('192.0.2.1'), 0, 'the window is over');
  throttle.failed('192.0.2.1');
  t.equal(throttle.refuseIp('192.0.2.1'), 0, 'a new window counts from one');
  t.match(throttle.stats, { failures: 6, refusedByIp: 2, lockouts: 1 });
});

t.test('a key id locks for failures only, from any address, and reports the wait on the failure after the limit', async (t) => {
  const { throttle, clock, lockouts } = setup();
  const key = '6f1c2b1e-0000-4000-8000-000000000001';
  t.same(
    ['198.51.100.1', '198.51.100.2', '198.51.100.3'].map((ip) => throttle.failed(ip, key)),
    [0, 0, 0],
    'the first three failures answer 401',
  );
  t.equal(throttle.keyLocked(key), true, 'locked after the third');
  t.equal(throttle.failed('198.51.100.4', key), 60_000, 'a fourth failure, from a new address: 429 for the window');
  t.equal(throttle.refuseIp('198.51.100.4'), 0, 'the address itself is not refused: one failure');
  t.equal(throttle.keyLocked('6f1c2b1e-0000-4000-8000-000000000002'), false, 'other keys are not affected');
  t.same(lockouts, [`key:${key}`]);
  t.match(throttle.stats, { failures: 4, refusedByKey: 1, refusedByIp: 0, lockouts: 1 });
  clock.now += 60_000;
  t.equal(throttle.keyLocked(key), false, 'unlocked when the window ends');
});

t.test('a malformed key counts against the address only', async (t) => {
  const { throttle } = setup({ maxFailuresPerIp: 2 });
  t.equal(throttle.failed('203.0.113.7'), 0);
  t.equal(throttle.failed('203.0.113.7'), 0, 'no key id: never a key wait');
  t.ok(throttle.refuseIp('203.0.113.7') > 0);
});

t.test('a limit of 0 disables that throttle', async (t) => {
  const { throttle } = setup({ maxFailuresPerIp: 0, maxFailuresPerKey: 0 });
  const waits = Array.from({ length: 1000 }, () => throttle.failed('192.0.2.9', 'k'));
  t.ok(
    waits.every((wait) => wait === 0),
    '1000 failures, never a wait',
  );
  t.equal(throttle.refuseIp('192.0.2.9'), 0);
  t.equal(throttle.keyLocked('k'), false);
  t.match(throttle.stats, { failures: 1000, lockouts: 0 });
});

t.test('memory is bounded: beyond maxEntries the oldest window is forgotten, and counted', async (t) => {
  const { throttle } = setup({ maxEntries: 3, maxFailuresPerIp: 2 });
  throttle.failed('10.0.0.1');
  throttle.failed('10.0.0.1');
  t.ok(throttle.refuseIp('10.0.0.1') > 0);
  for (const ip of ['10.0.0.2', '10.0.0.3', '10.0.0.4']) throttle.failed(ip);
  t.equal(throttle.stats.evicted, 1, 'the fourth address pushed the first out');
  t.equal(throttle.refuseIp('10.0.0.1'), 0, 'its failures are forgotten (an attacker needs maxEntries addresses for that)');
  for (let i = 0; i < 10_000; i += 1) throttle.failed(`10.1.${i >> 8}.${i & 255}`);
  t.equal(throttle.stats.evicted, 10_001, 'every new address beyond the bound evicts one');
});

t.test(
  'verifications in flight: each fresh one and each distinct key id is a read; over the cap they wait their turn, over the remaining failures they are refused',
  async (t) => {
    const { throttle } = setup({ maxVerifyingPerIp: 3 });
    const ip = '192.0.2.9';
    throttle.failed(ip);
    t.notOk(throttle.beginVerification('192.0.2.10', 'key-z', false) instanceof Promise, 'under the cap, decided at once: no promise on the auth path');
    const a = await throttle.beginVerification(ip, 'key-a', false);
    const sameKey = await throttle.beginVerification(ip, 'key-a', false);
    const fresh = await throttle.beginVerification(ip, 'key-a', true);
    const b = await throttle.beginVerification(ip, 'key-b', false);
    t.same([a.waitMs, sameKey.waitMs, fresh.waitMs, b.waitMs], [0, 0, 0, 0], 'one read of key-a shared, a fresh one of its own, one of key-b: 3 reads');
    let started: { waitMs: number; end: () => void } | undefined;
    const c = Promise.resolve(throttle.beginVerification(ip, 'key-c', false)).then((v) => (started = v));
    await new Promise((resolve) => setImmediate(resolve));
    t.equal(started, undefined, 'a fourth read waits: the cap is 3');
    const another = await throttle.beginVerification(ip, 'key-a', false);
    t.equal(another.waitMs, 0, 'one more of key-a shares its read, without waiting');
    for (const v of [a, sameKey, another]) v.end();
    await c;
    t.equal(started!.waitMs, 0, "key-a's read ended: the waiting one runs");
    for (let i = 0; i < 3; i += 1) throttle.failed(ip);
    t.equal((await throttle.beginVerification(ip, 'key-d', true)).waitMs, 1000, '4 failures of 5 and 3 reads in flight: refused, to retry in a second');
    for (const v of [fresh, b]) v.end();
    t.equal((await throttle.beginVerification(ip, 'key-d', true)).waitMs, 1000, 'one read still in flight: still refused');
    started!.end();
    t.equal((await throttle.beginVerification(ip, 'key-d', true)).waitMs, 0, 'with none in flight, one more may be the fifth');
    t.equal(throttle.stats.refusedByIp, 2);
  },
);
