import t, { type Test } from 'tap';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// Requests that are wrong in form rather than in content: the answer says what to change.

async function setup(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  return { api, org, adminKey, adminKeyId };
}

t.test('a body that is not JSON answers 415 naming application/json', async (t) => {
  const { api, org, adminKey, adminKeyId } = await setup(t);
  const auth = { authorization: `Bearer ${adminKey}` };
  const create = `${api.baseUrl}/api/orgs/${org.id}/api-keys`;
  const cases: Array<[string, string, RequestInit]> = [
    ['a form (curl -d)', create, { headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' }, body: 'name=x&scopes=keys:read' }],
    ['text/plain', create, { headers: { ...auth, 'content-type': 'text/plain' }, body: '{"name":"x","scopes":["keys:read"]}' }],
    // A byte body: fetch adds no Content-Type.
    ['no Content-Type', create, { headers: auth, body: new TextEncoder().encode('{"name":"x","scopes":["keys:read"]}') }],
    ['rotate, a form', `${create}/${adminKeyId}/rotate`, { headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' }, body: 'gracePeriodSeconds=0' }],
  ];
  for (const [label, url, init] of cases) {
    const response = await fetch(url, { method: 'POST', ...init });
    const body = (await response.json()) as { error: { code: string; message: string } };
    t.equal(response.status, 415, `${label}: 415`);
    t.equal(body.error.code, 'unsupported_media_type', `${label}: unsupported_media_type`);
    t.match(body.error.message, /application\/json/, `${label}: names application/json`);
  }
  const json = await fetch(create, { method: 'POST', headers: { ...auth, 'content-type': 'application/json; charset=utf-8' }, body: '{"name":"x","scopes":["keys:read"]}' });
  t.equal(json.status, 201, 'application/json with a charset is accepted');
  const noBody = await fetch(`${create}/${adminKeyId}/rotate`, { method: 'POST', headers: auth });
  t.equal(noBody.status, 200, 'an empty body is left to the schema (rotate needs none)');
});
