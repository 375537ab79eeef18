import t, { type Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { createKeyVerifier, type KeyVerifier } from '../api/auth/keyVerifier';
import { parsePresentedKey, pepperId } from '../api/keys/keyMaterial';
import { runCli } from '../scripts/cli';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

// A pepper rotation rolled out one instance at a time: while instances disagree on which pepper
// is current, each rehashed the other's hashes back to its own, so a key used on both was read
// and rewritten on nearly every request (found by a review: 40 alternating requests, 40 UPDATEs).
// KEY_PEPPER_NEXT is verified but never rehashed away from (fails without the fix: an instance
// that does not know the new pepper refuses the keys moved to it).

const OLD = 'old-pepper-'.padEnd(40, 'o');
const NEW = 'new-pepper-'.padEnd(40, 'n');

// Every rewrite of the key's hashes, as PostgreSQL saw it (a compare-and-set that lost changes no row).
async function countRewrites(db: Db, keyId: string): Promise<() => Promise<number>> {
  await db.raw('create table if not exists pepper_swap_rewrites (key_id uuid not null)');
  await db.raw(`create or replace function pepper_swap_rewrite() returns trigger language plpgsql as $$
    begin insert into pepper_swap_rewrites values (new.id); return new; end $$`);
  await db.raw(`create or replace trigger pepper_swap_rewrite after update on api_keys for each row
    when (old.secret_hash is distinct from new.secret_hash or old.previous_secret_hash is distinct from new.previous_secret_hash)
    execute function pepper_swap_rewrite()`);
  return async () => Number((await db('pepper_swap_rewrites').where({ key_id: keyId }).count({ n: '*' }))[0].n);
}

async function world(t: Test) {
  const { db } = await freshDatabase(t);
  const before = await startTestApi(t, db, { env: { KEY_PEPPER: OLD } });
  const { adminKey, adminKeyId } = await seedOrg(before, db);
  const rewrites = await countRewrites(db, adminKeyId);
  const storedPepper = async () => (await db('api_keys').where({ id: adminKeyId }).first()).secret_pepper_id as string;
  return { db, adminKey, rewrites, storedPepper };
}

function verifier(db: Db, peppers: string[], nextPepper?: string): KeyVerifier {
  return createKeyVerifier({ db, peppers, nextPepper, cacheTtlMs: 2000, now: Date.now, elapsed: () => performance.now() });
}

// Uses spaced as a client's would, so each instance's rehash (after the request) has run before the next.
async function alternate(uses: number, use: (turn: number) => Promise<string>): Promise<string[]> {
  const outcomes: string[] = [];
  for (let turn = 0; turn < uses; turn += 1) {
    outcomes.push(await use(turn));
    await sleep(25);
  }
  return outcomes;
}

t.test('mid-rollout, a key used alternately on an instance at each step is rewritten once, not on every use', async (t) => {
  const { db, adminKey, rewrites, storedPepper } = await world(t);
  const presented = parsePresentedKey(adminKey)!;
  // Step 2 reached on one instance only; the other still at step 1.
  const instances = [verifier(db, [NEW, OLD]), verifier(db, [OLD], NEW)];
  const outcomes = await alternate(20, async (turn) => (await instances[turn % 2].verify(presented)).outcome);
  t.same(outcomes, Array(20).fill('ok'), 'every use verifies on both');
  await waitFor('the key to be on the new pepper', async () => ((await storedPepper()) === pepperId(NEW) ? true : undefined));
  t.equal(await rewrites(), 1, 'moved from the old pepper to the new one once, and left there');
});

t.test('the same through two APIs, configured as docs/security.md says for steps 1 and 2', async (t) => {
  const { db, adminKey, rewrites, storedPepper } = await world(t);
  const stepTwo = await startTestApi(t, db, { env: { KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: OLD } });
  const stepOne = await startTestApi(t, db, { env: { KEY_PEPPER: OLD, KEY_PEPPER_NEXT: NEW } });
  const statuses = await alternate(20, async (turn) => String((await [stepTwo, stepOne][turn % 2].request('GET', '/api/whoami', { key: adminKey })).status));
  t.same(statuses, Array(20).fill('200'));
  await waitFor('the key to be on the new pepper', async () => ((await storedPepper()) === pepperId(NEW) ? true : undefined));
  t.equal(await rewrites(), 1, 'one rewrite');
  t.same(stepOne.evidence.leaksOf([OLD, NEW, adminKey]), [], 'no pepper or key in any log line or body');
});

t.test('pepper status names the keys on KEY_PEPPER_NEXT, which still verify', async (t) => {
  const { db, adminKey, storedPepper } = await world(t);
  const stepTwo = await startTestApi(t, db, { env: { KEY_PEPPER: NEW, KEY_PEPPER_PREVIOUS: OLD } });
  t.equal((await stepTwo.request('GET', '/api/whoami', { key: adminKey })).status, 200);
  await waitFor('the key to be on the new pepper', async () => ((await storedPepper()) === pepperId(NEW) ? true : undefined));
  const out: string[] = [];
  const status = { db, pepper: OLD, nextPepper: NEW, now: Date.now, out: (text: string) => out.push(text), err: () => {} };
  t.equal(await runCli(['pepper', 'status', '--json'], status), 0);
  const rows = JSON.parse(out.join('\n')) as Array<{ pepperId: string; secrets: number; source: string }>;
  t.same(
    rows.map((row) => [row.pepperId, row.secrets, row.source]),
    [[pepperId(NEW), 1, 'KEY_PEPPER_NEXT (verified, not rehashed)']],
    'not "not configured: these keys no longer verify"',
  );
});
