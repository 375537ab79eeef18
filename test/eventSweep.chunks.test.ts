// The time sweep wrote every org's key.dormant and key.expiring events in one transaction, each
// with a delivery per webhook of its org (the outbox trigger): an org of 20,000 keys expiring
// together with 20 webhooks held the sweep, and every other org's events, for 185 s (a tenancy
// review). It now writes them a chunk of one org's keys a transaction, the orgs taking turns.
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { sweepTimeEvents } from '../collector/eventStore';
import { insertOrganization } from '../api/orgs/orgs.repository';
import type { Db } from '../shared/db';
import { freshDatabase } from './helpers/database';

const DAY = 86_400_000;
const NOW = Date.now();
const CHUNK = 50;
const SWEEP = { expiringDays: [7], retentionDays: 90, newIpPerKeyHour: 10, keysPerTransaction: CHUNK };

// Keys expiring in 3 days; created 40 days ago and never used, they are dormant too (30 days).
async function orgWithKeys(db: Db, name: string, keys: number, webhooks: number, createdDaysAgo: number) {
  const org = await insertOrganization(db, name);
  const rows = Array.from({ length: keys }, (_, i) => ({
    id: randomUUID(),
    org_id: org.id,
    name: `k${i}`,
    display_prefix: 'ku_test',
    secret_hash: Buffer.alloc(32),
    scopes: ['keys:read'],
    created_at: new Date(NOW - createdDaysAgo * DAY),
    expires_at: new Date(NOW + 3 * DAY),
  }));
  await db('api_keys').insert(rows);
  for (let i = 0; i < webhooks; i += 1) {
    await db('webhooks').insert({ org_id: org.id, url: `https://203.0.113.${10 + i}/hook`, event_types: ['*'], secret_box: Buffer.alloc(44) });
  }
  return org.id;
}

// One org with 120 keys due twice (dormant and expiring) and 3 webhooks; one with a key expiring.
async function bigAndSmall(t: Test) {
  const { db } = await freshDatabase(t);
  const big = await orgWithKeys(db, 'big', 120, 3, 40);
  const small = await orgWithKeys(db, 'small', 1, 1, 1);
  return { db, big, small };
}

type EventRow = { id: string; org_id: string; key_id: string; type: string };
const sweptEvents = (db: Db): Promise<EventRow[]> => db('key_events').whereIn('type', ['key.dormant', 'key.expiring']).select('id', 'org_id', 'key_id', 'type');

// Every due event once, each with one delivery per webhook of its org.
async function assertEachOnce(t: Test, db: Db, big: string, small: string) {
  const events = await sweptEvents(db);
  const count = (orgId: string, type: string) => events.filter((e) => e.org_id === orgId && e.type === type).length;
  t.strictSame(
    [count(big, 'key.dormant'), count(big, 'key.expiring'), count(small, 'key.dormant'), count(small, 'key.expiring')],
    [120, 120, 0, 1],
    "every key's events",
  );
  t.equal(new Set(events.map((e) => `${e.type}/${e.key_id}`)).size, events.length, 'each once');
  const deliveries: Array<{ org_id: string; event_id: string; webhook_id: string }> = await db('webhook_deliveries').select('org_id', 'event_id', 'webhook_id');
  t.equal(new Set(deliveries.map((d) => `${d.event_id}/${d.webhook_id}`)).size, deliveries.length, 'each delivery once');
  t.strictSame(
    [deliveries.filter((d) => d.org_id === big).length, deliveries.filter((d) => d.org_id === small).length],
    [240 * 3, 1],
    'a delivery per event and webhook',
  );
}

// Fails without the fix: one transaction wrote all 241 events, the small org's with the big org's.
t.test("the sweep writes a chunk of one org's keys a transaction, orgs in turns, every event and delivery once", async (t) => {
  const { db, big, small } = await bigAndSmall(t);
  // What each committed transaction added: the events seen after it that were not before it.
  const written: EventRow[][] = [];
  const seen = new Set<string>();
  // knex defines its methods read-only (but configurable): redefined for the sweep, then put back.
  const original = Object.getOwnPropertyDescriptor(db, 'transaction')!;
  const transaction = db.transaction.bind(db);
  const observed = async (handler: Parameters<Db['transaction']>[0]) => {
    const result = await transaction(handler);
    const added = (await sweptEvents(db)).filter((e) => !seen.has(e.id));
    for (const e of added) seen.add(e.id);
    written.push(added);
    return result;
  };
  Object.defineProperty(db, 'transaction', { value: observed, configurable: true });
  const restore = () => Object.defineProperty(db, 'transaction', original);
  t.teardown(restore);

  t.strictSame(await sweepTimeEvents(db, new Date(NOW), SWEEP), { dormant: 120, expiring: 121, newIp: 0 });
  restore();
  await assertEachOnce(t, db, big, small);

  const writing = written.filter((events) => events.length > 0);
  const keysOf = (events: EventRow[]) => new Set(events.map((e) => e.key_id)).size;
  t.ok(Math.max(...writing.map(keysOf)) <= CHUNK, `no transaction wrote more than ${CHUNK} keys' events`);
  t.ok(
    writing.every((events) => new Set(events.map((e) => e.org_id)).size === 1),
    'each transaction wrote one org',
  );
  const smallAt = writing.findIndex((events) => events.some((e) => e.org_id === small));
  const bigLast = Math.max(...writing.flatMap((events, i) => (events.some((e) => e.org_id === big) ? [i] : [])));
  t.ok(smallAt >= 0 && smallAt < bigLast, "the small org's event committed before the big org's last chunk");

  t.strictSame(await sweepTimeEvents(db, new Date(NOW + 60_000), SWEEP), { dormant: 0, expiring: 0, newIp: 0 }, 'a later sweep finds nothing new');
});

// Two collectors sweeping at once, each in chunks: every event and delivery still once.
t.test('two chunked sweeps at once write every event and delivery once', async (t) => {
  const { db, big, small } = await bigAndSmall(t);
  const [a, b] = await Promise.all([sweepTimeEvents(db, new Date(NOW), SWEEP), sweepTimeEvents(db, new Date(NOW), SWEEP)]);
  // One of them may leave an org the other is sweeping: the next sweep takes what is left.
  const next = await sweepTimeEvents(db, new Date(NOW + 60_000), SWEEP);
  t.equal(a.dormant + b.dormant + next.dormant + a.expiring + b.expiring + next.expiring, 241, 'each event counted by the sweep that wrote it');
  await assertEachOnce(t, db, big, small);
});
