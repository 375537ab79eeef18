import t from 'tap';
import { insertKeys } from '../bench/lib/database';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// Counted over every org, a page's total told an org how many keys the others hold.
t.test("a key list's total counts the org's own keys only", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const orgs = [await seedOrg(api, db, 'acme'), await seedOrg(api, db, 'globex')];
  await insertKeys(db, orgs[0].org.id, 2, 'more-');
  await insertKeys(db, orgs[1].org.id, 5, 'more-');
  const totals = [];
  for (const { org, adminKey } of orgs) {
    const listed = await api.request('GET', `/api/orgs/${org.id}/api-keys?limit=1`, { key: adminKey });
    totals.push(listed.body.page.total);
  }
  t.strictSame(totals, [3, 6], 'each admin key and its own inserted keys');
});
