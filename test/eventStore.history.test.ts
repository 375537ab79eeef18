// The key's network history as the flush's one statement (collector/eventStore.ts FACTS) writes
// and reads it, driven by real datagrams whose |T timestamps place the uses in time.
import t, { type Test } from 'tap';
import { secondInThePreviousHour } from './helpers/collector';
import { usedKeyWithCollector, type KeyUse } from './helpers/usedKey';
import { sleep, waitFor } from '../harness/wait';

// A use from `ip`, at the unix second `seconds` if given (|T).
const at = (ip: string, seconds?: number): KeyUse => ({ ip, seconds });

// The key's key.new_ip events, oldest first: [when, details].
async function keyWithCollector(t: Test, env: Record<string, string>) {
  const world = await usedKeyWithCollector(t, env);
  const { db, keyId } = world;
  const newIps = async () =>
    (await db('key_events').where({ key_id: keyId, type: 'key.new_ip' }).orderBy('occurred_at').select('occurred_at', 'details')).map((e) => [
      e.occurred_at.getTime(),
      e.details,
    ]);
  return { ...world, newIps };
}

// A known network used again an hour or more later moves its last_seen: the bound forgets the least
// recently seen network, and one whose last_seen stood still was forgotten while in use, its next
// use a false key.new_ip.
t.test('a network used again moves its last_seen, so the bound keeps it and its next use is not new', async (t) => {
  const { db, keyId, flushUses, newIps } = await keyWithCollector(t, { EVENTS_IP_HISTORY_PER_KEY: '2', COLLECTOR_TIMESTAMP_WINDOW_SECONDS: '86400' });
  const t0 = Math.floor(Date.now() / 1000) - 3 * 3600;
  const [A, B, C] = ['192.0.2.1', '198.51.100.1', '203.0.113.1'];
  for (const use of [
    [A, t0],
    [B, t0 + 60],
    [A, t0 + 7200],
    [C, t0 + 7260],
  ] as Array<[string, number]>)
    await flushUses([at(...use)]);
  const history = async () =>
    (await db('api_key_ip_history').where({ key_id: keyId }).orderBy('prefix').select(db.raw('cast(prefix as text) as prefix'), 'last_seen')).map((r) => [
      r.prefix,
      r.last_seen.getTime() / 1000,
    ]);
  // The trim runs best-effort after the flush.
  await waitFor('the trim', async () => ((await history()).length === 2 ? true : undefined));
  t.strictSame(
    await history(),
    [
      ['192.0.2.0/24', t0 + 7200],
      ['203.0.113.0/24', t0 + 7260],
    ],
    'A seen again at t0 + 2 h; B, the least recently seen, forgotten',
  );
  await flushUses([at(A, t0 + 7300)]);
  await sleep(50);
  t.strictSame(
    (await newIps()).map(([, details]) => details.prefix),
    ['192.0.2.0/24', '198.51.100.0/24', '203.0.113.0/24'],
    'A, still in use, is not new again',
  );
});

t.test("two addresses of one /24 in one flush: the network's first_seen is the earlier use", async (t) => {
  const { db, keyId, flushUses, newIps } = await keyWithCollector(t, {});
  const seconds = Math.floor(Date.now() / 1000) - 100;
  await flushUses([at('192.0.2.9', seconds), at('192.0.2.5', seconds - 5)]);
  const [row] = await db('api_key_ip_history').where({ key_id: keyId }).select('first_ip', 'first_seen');
  t.strictSame([row.first_ip, row.first_seen.getTime()], ['192.0.2.5', (seconds - 5) * 1000], 'the earlier address, at its time');
  t.strictSame(await newIps(), [[(seconds - 5) * 1000, { ip: '192.0.2.5', prefix: '192.0.2.0/24' }]], 'and its key.new_ip occurs then');
});

// Only networks deferred earlier (event_due_at set) wait ahead of a new one: counted with every
// known network, a key with as many networks as the hourly limit deferred every new one.
t.test('known networks that are not deferred do not hold back a new network under the hourly limit', async (t) => {
  const { db, keyId, flushUses, newIps } = await keyWithCollector(t, { EVENTS_NEW_IP_PER_KEY_HOUR: '2' });
  const seconds = await secondInThePreviousHour();
  await flushUses([at('198.51.1.1', seconds - 1), at('198.51.2.1', seconds)]);
  await flushUses([at('198.51.3.1')]);
  t.strictSame(
    (await newIps()).map(([, details]) => details),
    [
      { ip: '198.51.1.1', prefix: '198.51.1.0/24' },
      { ip: '198.51.2.1', prefix: '198.51.2.0/24', hourlyLimitReached: 2 },
      { ip: '198.51.3.1', prefix: '198.51.3.0/24' },
    ],
    'networks 1 and 2 in the previous hour; network 3 raised at once in this one, not deferred',
  );
  t.strictSame(await db('api_key_ip_history').where({ key_id: keyId }).whereNotNull('event_due_at').select('prefix'), [], 'nothing waits');
});

// The hourly limit counts the hour's key.new_ip events only: the key's other events of the hour
// used none of its allowance.
t.test("a key's other events of the hour leave its key.new_ip allowance whole", async (t) => {
  const { db, org, keyId, flushUses, newIps } = await keyWithCollector(t, { EVENTS_NEW_IP_PER_KEY_HOUR: '2' });
  const seconds = await secondInThePreviousHour();
  await db('key_events').insert(
    ['key.spike', 'key.outside_networks'].map((type) => ({
      org_id: org.id,
      key_id: keyId,
      type,
      occurred_at: new Date((seconds - 60) * 1000),
      details: {},
      dedupe_key: type,
    })),
  );
  await flushUses([at('198.51.1.1', seconds - 1), at('198.51.2.1', seconds)]);
  t.strictSame(
    await newIps(),
    [
      [(seconds - 1) * 1000, { ip: '198.51.1.1', prefix: '198.51.1.0/24' }],
      [seconds * 1000, { ip: '198.51.2.1', prefix: '198.51.2.0/24', hourlyLimitReached: 2 }],
    ],
    'both raised in the hour of the two other events',
  );
  t.strictSame(await db('api_key_ip_history').where({ key_id: keyId }).whereNotNull('event_due_at').select('prefix'), [], 'nothing deferred');
});
