import type { Test } from 'tap';
import { sweepTimeEvents } from '../../collector/eventStore';
import { seedOrg, startTestApi } from './api';
import { backdatedKey } from './backdatedKey';
import { freshDatabase } from './database';

// A database, an API whose clock the test moves, and an org whose keys are dormant after 30 days.
export async function clockedOrg(t: Test) {
  const { db } = await freshDatabase(t);
  const clock = { now: Date.now() };
  const api = await startTestApi(t, db, { now: () => clock.now });
  const { org, adminKey } = await seedOrg(api, db);
  await db('organizations').where({ id: org.id }).update({ dormancy_days: 30 });
  return { db, api, org, adminKey, clock };
}

// A key made 40 days ago in an org of 30 days, and a sweep at the clock that answers the key's
// key.dormant events' details, oldest first.
export async function idleKey(t: Test) {
  const world = await clockedOrg(t);
  const { db, api, org, clock } = world;
  const { id } = await backdatedKey(api, db, org.id, 'idle', null, clock.now);
  const sweep = async (): Promise<Array<{ crossedAt: string; lastUsedAt: string | null }>> => {
    await sweepTimeEvents(db, new Date(clock.now), { expiringDays: [], retentionDays: 90, newIpPerKeyHour: 10 });
    return db('key_events').where({ type: 'key.dormant', key_id: id }).orderBy('occurred_at').pluck('details');
  };
  return { ...world, id, sweep };
}
