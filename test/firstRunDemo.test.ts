import t from 'tap';
import { findApiKeyById } from '../api/keys/apiKeys.repository';
import { parsePresentedKey } from '../api/keys/keyMaterial';
import { firstRunBanner } from '../scripts/lib/firstRunDemo';
import { loadConfig } from '../shared/config';
import { TABLE } from '../shared/tables';
import { freshDatabase, someoneWaitsOnLock } from './helpers/database';

// The first-run banner holds the only copy of the demo key: a stop asked for (Ctrl-C just after
// the API answered) must not make the key and then drop its banner, or the next run says the key
// "was printed on the first run only" when it never was.

const KEY_PATTERN = /ku_[0-9a-f]{32}_[0-9A-Za-z]{49}/;
const config = loadConfig({ NODE_ENV: 'test' });
const embedded = { ownerUrl: '', processUrl: '', dataLocation: '.data/postgres', embedded: true };

t.test('a stop asked while the demo org is made: the banner shows the key it made', async (t) => {
  const { db } = await freshDatabase(t);
  // The org's insert waits here, so the stop comes after the check that the call begins with.
  const held = await db.transaction();
  t.teardown(() => held.rollback().catch(() => undefined));
  await held.raw(`lock table ${TABLE.organizations} in share mode`);
  let stopRequested = false;
  const banner = firstRunBanner(db, config, embedded, () => stopRequested);
  await someoneWaitsOnLock(db);
  stopRequested = true;
  await held.rollback();
  const shown = (await banner) ?? '';
  const [org] = await db(TABLE.organizations).where({ name: 'demo' }).select('id');
  t.ok(org, 'the demo org was made');
  const presented = parsePresentedKey(shown.match(KEY_PATTERN)?.[0] ?? '');
  t.ok(presented, 'the banner holds a key');
  if (presented) t.equal((await findApiKeyById(db, presented.keyId))?.orgId, org?.id, 'the demo org’s key');
});

t.test('a stop asked before: no banner, and nothing is made', async (t) => {
  const { db } = await freshDatabase(t);
  t.equal(await firstRunBanner(db, config, embedded, () => true), undefined);
  t.same(await db(TABLE.organizations).select('id'), []);
});
