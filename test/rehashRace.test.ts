import { randomBytes } from 'node:crypto';
import t from 'tap';
import { rehashSecret } from '../api/keys/apiKeys.repository';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A pepper upgrade rehashes the hash it read, compare-and-set on it. Should a rotation commit
// between its read and its write, a write on the key's id alone would put the old secret's hash
// back over the new one: the rotated-out secret working again, the new one refused.
t.test('a rehash of the hash a rotation replaced changes nothing', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org } = await seedOrg(api, db);
  const { id } = (await api.services.apiKeys.create(org.id, { name: 'rehashed', scopes: ['keys:read'], expiresAt: null })).key;
  const stored = () => db('api_keys').where({ id }).first('secret_hash', 'secret_pepper_id');
  const before = await stored();
  await api.services.apiKeys.rotate(org.id, id, { graceSeconds: 0 });
  const rotated = await stored();
  t.notSame(rotated.secret_hash, before.secret_hash, 'the rotation wrote a new hash');
  const rehashed = await rehashSecret(db, id, 'current', { from: before.secret_hash, to: randomBytes(32), pepperId: 'rehashed' });
  t.equal(rehashed, false, 'the rehash reports that it lost');
  t.same(await stored(), rotated, "the rotation's hash and pepper id stand");
});
