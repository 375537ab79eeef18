import t from 'tap';
import { expireOldEvents, sweepTimeEvents } from '../collector/eventStore';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, someoneWaitsOnLock } from './helpers/database';
import { clockedOrg, idleKey } from './helpers/idleKey';

// "Dormant" is one rule (shared/dormancy.ts) read in three places: the usage list's filter and
// field, the revoke-dormant clean-up, and the collector's key.dormant sweep. On the same keys at
// the same moment the three must pick the same set.

const DAY = 86_400_000;

t.test('the usage filter, the clean-up and the sweep select the same keys', async (t) => {
  const { db } = await freshDatabase(t);
  const now = Date.now();
  const api = await startTestApi(t, db, { now: () => now });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  await db('organizations').where({ id: org.id }).update({ dormancy_days: 30 });
  const daysAgo = (days: number) => new Date(now - days * DAY);
  const key = async (name: string, createdDaysAgo: number, usedDaysAgo: number | null, expiresAt: Date | null = null, rotatedDaysAgo?: number) => {
    const { id } = (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key;
    const rotatedAt = rotatedDaysAgo === undefined ? null : daysAgo(rotatedDaysAgo);
    await db('api_keys')
      .where({ id })
      .update({ created_at: daysAgo(createdDaysAgo), expires_at: expiresAt, rotated_at: rotatedAt });
    if (usedDaysAgo !== null) {
      await db('api_key_usage').insert({
        org_id: org.id,
        key_id: id,
        request_count: 1,
        ok_count: 1,
        last_used_at: daysAgo(usedDaysAgo),
        last_used_ip: '192.0.2.1',
      });
    }
    return id;
  };
  await db('api_keys')
    .where({ id: adminKeyId })
    .update({ created_at: daysAgo(100) });
  await db('api_key_usage').insert({ org_id: org.id, key_id: adminKeyId, request_count: 1, ok_count: 1, last_used_at: daysAgo(0), last_used_ip: '192.0.2.1' });
  const expected = [
    await key('never used, created 40 days ago', 40, null),
    await key('used 31 days ago', 90, 31),
    await key('used 60 days ago, rotated 31 days ago', 90, 60, null, 31),
  ];
  await key('never used, created yesterday', 1, null);
  // Its new secret cannot have been used yet: revoking it as dormant would undo the rotation.
  await key('used 60 days ago, rotated yesterday', 90, 60, null, 1);
  await key('never used, created 90 days ago, rotated yesterday', 90, null, null, 1);
  await key('used yesterday', 90, 1);
  await key('expired, never used', 40, null, daysAgo(1));
  const revoked = await key('revoked, never used', 40, null);
  await api.services.apiKeys.revoke(org.id, revoked);
  // A restore (a key the clean-up revoked, given back) restarts the idle time as a rotation does.
  const restored = async (name: string, restoredDaysAgo: number) => {
    const id = await key(name, 90, 60);
    await db('api_keys')
      .where({ id })
      .update({ restored_at: daysAgo(restoredDaysAgo) });
    return id;
  };
  expected.push(await restored('used 60 days ago, restored 31 days ago', 31));
  await restored('used 60 days ago, restored yesterday', 1);
  const sorted = (ids: string[]) => [...ids].sort();

  const listed = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?dormant=true&dormantDays=30`, { key: adminKey });
  t.equal(listed.status, 200);
  t.strictSame(sorted(listed.body.data.map((k: { id: string }) => k.id)), sorted(expected), 'the usage filter');
  const all = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?dormantDays=30`, { key: adminKey });
  const flagged = all.body.data.filter((k: { dormant: boolean }) => k.dormant).map((k: { id: string }) => k.id);
  t.strictSame(sorted(flagged), sorted(expected), "the usage list's dormant field");
  const notDormant = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?dormant=false&dormantDays=30`, { key: adminKey });
  t.equal(notDormant.body.page.total, 12 - expected.length, 'dormant=false: every other key');

  const cleanUp = await api.request('POST', `/api/orgs/${org.id}/api-keys/revoke-dormant`, { key: adminKey, body: { dormantDays: 30, dryRun: true } });
  t.equal(cleanUp.status, 200);
  t.strictSame(sorted(cleanUp.body.keys.map((k: { id: string }) => k.id)), sorted(expected), 'the clean-up');

  await sweepTimeEvents(db, new Date(now), { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 10 });
  t.strictSame(sorted(await db('key_events').where({ type: 'key.dormant' }).pluck('key_id')), sorted(expected), 'the sweep');
});

// An event older than EVENTS_RETENTION_DAYS was deleted by the next retention run and written
// again by the sweep after it, a new webhook delivery each time: every hour, for ever.
t.test('a threshold crossed before the events retention window raises no event; one inside it, one event for good', async (t) => {
  const { db, api, org, clock } = await clockedOrg(t);
  const key = async (name: string, createdDaysAgo: number, expiresInDays: number | null) => {
    const { id } = (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key;
    const expiresAt = expiresInDays === null ? null : new Date(clock.now + expiresInDays * DAY);
    await db('api_keys')
      .where({ id })
      .update({ created_at: new Date(clock.now - createdDaysAgo * DAY), expires_at: expiresAt });
    return id;
  };
  const longDormant = await key('dormant for 170 days', 200, null);
  const lately = await key('dormant for 15 days', 45, null);
  const farExpiry = await key('expires in 200 days, warned 365 days before', 200, 200);
  // Other keys become dormant as the clock moves (the seed's admin key, the far expiry, never
  // used): only these events are looked at.
  const events = async () =>
    (
      await db('key_events')
        .whereRaw(`(type = 'key.dormant' and key_id in (?, ?)) or (type = 'key.expiring' and key_id = ?)`, [longDormant, lately, farExpiry])
        .select('key_id', 'type')
    )
      .map((e) => `${e.type} ${e.key_id}`)
      .sort();
  const retention = { expiringDays: [365], retentionDays: 90, newIpPerKeyHour: 10 };
  const sweepAndExpire = async () => {
    await sweepTimeEvents(db, new Date(clock.now), retention);
    await expireOldEvents(db, new Date(clock.now), retention.retentionDays);
    await sweepTimeEvents(db, new Date(clock.now), retention);
  };
  await sweepAndExpire();
  t.strictSame(await events(), [`key.dormant ${lately}`], 'only the crossing inside the window');
  // The event occurs at the sweep's time: retention deletes it a day past the 90 days (the
  // collectors' clocks' margin), when its crossing is 106 days old.
  clock.now += 90 * DAY;
  await sweepAndExpire();
  t.strictSame(await events(), [`key.dormant ${lately}`], 'kept for the retention period from when it was raised, and a day');
  clock.now += 2 * DAY;
  await sweepAndExpire();
  t.strictSame(await events(), [], 'once retention deleted it, the sweep does not write it again');
});

// Each collector runs retention and the sweep on its own clock: one 15 minutes behind the
// retention's wrote again the event retention had just deleted, with a webhook delivery (a
// review; fails without the fix).
t.test('a sweep on a clock behind the retention does not write a deleted event again', async (t) => {
  const { db, org, clock } = await clockedOrg(t);
  const MINUTE = 60_000;
  const crossed = clock.now - 30 * DAY;
  await db('api_keys')
    .where({ org_id: org.id })
    .update({ created_at: new Date(crossed - 30 * DAY) });
  const retention = { expiringDays: [7], retentionDays: 90, newIpPerKeyHour: 10 };
  const dormant = () => db('key_events').where({ org_id: org.id, type: 'key.dormant' }).count({ n: '*' });
  await sweepTimeEvents(db, new Date(crossed + 30_000), retention);
  t.strictSame(await dormant(), [{ n: 1 }], 'raised 30 s after the crossing');
  await expireOldEvents(db, new Date(crossed + 30_000 + 90 * DAY + 10 * MINUTE), retention.retentionDays);
  t.strictSame(await dormant(), [{ n: 1 }], 'kept a day past the 90 days');
  const retentionAt = crossed + 30_000 + 91 * DAY + 10 * MINUTE;
  await expireOldEvents(db, new Date(retentionAt), retention.retentionDays);
  t.strictSame(await dormant(), [{ n: 0 }], 'then deleted');
  await sweepTimeEvents(db, new Date(retentionAt - 15 * MINUTE), retention);
  t.strictSame(await dormant(), [{ n: 0 }], 'not raised again by a clock 15 minutes behind');
});

// A margin taken from the sweep's window left none with EVENTS_RETENTION_DAYS=1 (a review).
t.test('with events kept 1 day, a threshold crossed an hour ago raises its event', async (t) => {
  const { db, org, clock } = await clockedOrg(t);
  await db('api_keys')
    .where({ org_id: org.id })
    .update({ created_at: new Date(clock.now - 30 * DAY - 3_600_000) });
  const swept = await sweepTimeEvents(db, new Date(clock.now), { expiringDays: [7], retentionDays: 1, newIpPerKeyHour: 10 });
  t.equal(swept.dormant, 1);
});

// A rotation restarts the idle time as a creation does, and so does a restore (a key the clean-up
// revoked, given back); left idle after either, the key raises a new event, whose dedupe key names
// it (the one before named the last use: restored unused, the key had no second event).
const RESTARTS: Array<[string, (api: Awaited<ReturnType<typeof idleKey>>['api'], orgId: string, id: string) => Promise<unknown>]> = [
  ['rotation', (api, orgId, id) => api.services.apiKeys.rotate(orgId, id)],
  [
    'restore',
    async (api, orgId, id) => {
      await api.services.apiKeys.revokeDormant(orgId, { dormantDays: 30, dryRun: false, keyIds: [id] });
      return api.services.apiKeys.restore(orgId, id);
    },
  ],
];
for (const [restart, act] of RESTARTS) {
  t.test(`a key is dormant again only a threshold after its ${restart}, with a new event`, async (t) => {
    const { api, org, clock, id, sweep: sweepDetails } = await idleKey(t);
    const sweep = async () => (await sweepDetails()).map(({ crossedAt }) => new Date(crossedAt));
    t.equal((await sweep()).length, 1, 'dormant 10 days after its threshold');

    await act(api, org.id, id);
    const restartedAt = clock.now;
    clock.now += 29 * DAY;
    t.equal((await sweep()).length, 1, `29 days after the ${restart}: not dormant`);
    clock.now += 2 * DAY;
    const occurred = await sweep();
    t.equal(occurred.length, 2, '31 days after it: a new event');
    t.equal(occurred[1].getTime(), restartedAt + 30 * DAY, `it crossed 30 days after the ${restart}`);
    t.equal((await sweep()).length, 2, 'and only one');
  });
}

// The dedupe key names the last use: a key used again and left idle again is a new event. A
// mutation review found no test held it (a dedupe key without the use kept one event for good).
t.test('a key used again and left idle again is dormant again, with a new event', async (t) => {
  const { db, org, clock, id, sweep } = await idleKey(t);
  t.equal((await sweep()).length, 1);
  const usedAt = new Date(clock.now);
  await db('api_key_usage')
    .insert({ org_id: org.id, key_id: id, request_count: 1, ok_count: 1, last_used_at: usedAt, last_used_ip: '192.0.2.1' })
    .onConflict(['org_id', 'key_id'])
    .merge();
  clock.now += 31 * DAY;
  const details = await sweep();
  t.strictSame(
    details.map((d) => d.lastUsedAt),
    [null, usedAt.toISOString()],
    'a second event, after the use',
  );
});

t.test('a revoked key is warned of no expiry', async (t) => {
  const { db, api, org, clock } = await clockedOrg(t);
  const expiring = async (name: string) =>
    (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: new Date(clock.now + 6 * DAY) })).key.id;
  const [revoked, kept] = [await expiring('revoked'), await expiring('kept')];
  await api.services.apiKeys.revoke(org.id, revoked);
  await sweepTimeEvents(db, new Date(clock.now), { expiringDays: [7, 1], retentionDays: 90, newIpPerKeyHour: 10 });
  t.strictSame(await db('key_events').where({ type: 'key.expiring' }).whereIn('key_id', [revoked, kept]).pluck('key_id'), [kept], 'only the active one');
});

// A flush writing two keys' first uses locks them in key id order (its inserts' foreign-key
// checks); the apply locked its candidates oldest first: each held a key the other waited for, and
// the apply failed with a 500 (deadlock), or, waiting for one key's first use to commit, revoked it
// from its older snapshot (a review; both fail without the fix).
t.test("the clean-up's apply beside a flush writing first uses: no deadlock, and a key whose first use committed meanwhile is spared", async (t) => {
  const { db, api, org, adminKey, clock } = await clockedOrg(t);
  const newKey = async (name: string) => (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id;
  const ids = [await newKey('x'), await newKey('y')].sort();
  const [low, high] = ids;
  // The higher id the older: the apply's order (oldest first) is the reverse of the flush's.
  await db('api_keys')
    .where({ id: high })
    .update({ created_at: new Date(clock.now - 200 * DAY) });
  await db('api_keys')
    .where({ id: low })
    .update({ created_at: new Date(clock.now - 150 * DAY) });
  const firstUse = (keyId: string) => ({
    org_id: org.id,
    key_id: keyId,
    request_count: 1,
    ok_count: 1,
    last_used_at: new Date(clock.now),
    last_used_ip: '192.0.2.1',
  });
  const flush = await db.transaction();
  t.teardown(() => (flush.isCompleted() ? undefined : flush.rollback()));
  await flush('api_key_usage').insert(firstUse(low));
  const applying = api.request('POST', `/api/orgs/${org.id}/api-keys/revoke-dormant`, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: ids } });
  await someoneWaitsOnLock(db);
  await flush('api_key_usage').insert(firstUse(high));
  await flush.commit();
  const applied = await applying;
  t.equal(applied.status, 200, 'no deadlock');
  t.same(applied.body.keys, [], 'both keys were used before the apply could lock them: neither revoked');
  t.same(await db('api_keys').whereIn('id', ids).whereNotNull('revoked_at').pluck('id'), [], 'nothing revoked');
});
