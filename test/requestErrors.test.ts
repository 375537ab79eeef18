import { randomUUID } from 'node:crypto';
import http from 'node:http';
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

// body-parser took any charset=utf-*, and turned bytes that are not UTF-8 into U+FFFD: a key was
// stored under a name its client never sent. A lone surrogate in a JSON escape likewise (fail
// without the fix).
t.test('a body that is not UTF-8, or a name that is not valid Unicode, is refused', async (t) => {
  const { api, org, adminKey } = await setup(t);
  const create = `${api.baseUrl}/api/orgs/${org.id}/api-keys`;
  const send = async (contentType: string, body: Uint8Array | string) => {
    const response = await fetch(create, { method: 'POST', headers: { authorization: `Bearer ${adminKey}`, 'content-type': contentType }, body });
    return { status: response.status, body: (await response.json()) as { error?: { code: string; message: string } } };
  };
  const invalidBytes = Buffer.concat([Buffer.from('{"name":"'), Buffer.from([0xff, 0xfe]), Buffer.from('","scopes":["keys:read"]}')]);
  const notUtf8 = await send('application/json', invalidBytes);
  t.same([notUtf8.status, notUtf8.body.error?.code, notUtf8.body.error?.message], [400, 'invalid_request', 'Request body is not valid UTF-8']);
  const utf16 = await send('application/json; charset=utf-16', Buffer.from('{"name":"x","scopes":["keys:read"]}', 'utf16le'));
  t.same([utf16.status, utf16.body.error?.code], [415, 'unsupported_media_type'], 'UTF-16 is refused, as the document says');
  t.match(utf16.body.error?.message, /application\/json in UTF-8/);
  const surrogate = await send('application/json', '{"name":"\\ud800","scopes":["keys:read"]}');
  t.same([surrogate.status, surrogate.body.error?.code], [400, 'invalid_request']);
  t.match(surrogate.body.error?.message, /name: must be valid Unicode/);
  const emoji = await send('application/json; charset=UTF-8', '{"name":"ключ 🔑","scopes":["keys:read"]}');
  t.same([emoji.status, (emoji.body as { name?: string }).name], [201, 'ключ 🔑'], 'valid UTF-8, any script, is kept as sent');
});

// A route that takes no body judges the body, not its headers: a client or proxy that streams an
// empty body (chunked), or writes Content-Length: 00, could no longer revoke a key (fails without the fix).
t.test('a route that takes no body refuses bytes, not an empty chunked body', async (t) => {
  const { api, org, adminKey } = await setup(t);
  const revoke = async (keyId: string, headers: Record<string, string>, body: string[]) =>
    new Promise<number>((resolve, reject) => {
      const request = http.request(
        {
          host: '127.0.0.1',
          port: api.port,
          method: 'POST',
          path: `/api/orgs/${org.id}/api-keys/${keyId}/revoke`,
          headers: { authorization: `Bearer ${adminKey}`, ...headers },
        },
        (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        },
      );
      request.on('error', reject);
      for (const part of body) request.write(part);
      request.end();
    });
  const key = async () => (await api.services.apiKeys.create(org.id, { name: 'target', scopes: ['keys:read'], expiresAt: null })).key.id;
  t.equal(await revoke(await key(), { 'transfer-encoding': 'chunked' }, []), 200, 'an empty chunked body');
  t.equal(await revoke(await key(), { 'content-length': '00' }, []), 200, 'Content-Length: 00');
  t.equal(await revoke(await key(), { 'transfer-encoding': 'chunked' }, ['{"dryRun"', ':true}']), 400, 'a chunked body with bytes is refused');
  t.equal(await revoke(await key(), { 'content-length': '2' }, ['{}']), 400, 'and one with a length');
});

t.test('a body that is not JSON answers 415 naming application/json', async (t) => {
  const { api, org, adminKey, adminKeyId } = await setup(t);
  const auth = { authorization: `Bearer ${adminKey}` };
  const create = `${api.baseUrl}/api/orgs/${org.id}/api-keys`;
  const cases: Array<[string, string, RequestInit]> = [
    ['a form (curl -d)', create, { headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' }, body: 'name=x&scopes=keys:read' }],
    ['text/plain', create, { headers: { ...auth, 'content-type': 'text/plain' }, body: '{"name":"x","scopes":["keys:read"]}' }],
    // A byte body: fetch adds no Content-Type.
    ['no Content-Type', create, { headers: auth, body: new TextEncoder().encode('{"name":"x","scopes":["keys:read"]}') }],
    [
      'rotate, a form',
      `${create}/${adminKeyId}/rotate`,
      { headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' }, body: 'gracePeriodSeconds=0' },
    ],
  ];
  for (const [label, url, init] of cases) {
    const response = await fetch(url, { method: 'POST', ...init });
    const body = (await response.json()) as { error: { code: string; message: string } };
    t.equal(response.status, 415, `${label}: 415`);
    t.equal(body.error.code, 'unsupported_media_type', `${label}: unsupported_media_type`);
    t.match(body.error.message, /application\/json/, `${label}: names application/json`);
  }
  const json = await fetch(create, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json; charset=utf-8' },
    body: '{"name":"x","scopes":["keys:read"]}',
  });
  t.equal(json.status, 201, 'application/json with a charset is accepted');
  const noBody = await fetch(`${create}/${adminKeyId}/rotate`, { method: 'POST', headers: auth });
  t.equal(noBody.status, 200, 'an empty body is left to the schema (rotate needs none)');
});

t.test('a query parameter given twice answers 400 naming it', async (t) => {
  const { api, org, adminKey } = await setup(t);
  for (const path of [`/api/orgs/${org.id}/api-keys?limit=1&limit=2`, `/api/orgs/${org.id}/api-keys/usage?sort=createdAt&limit=5&sort=requestCount`]) {
    const response = await api.request('GET', path, { key: adminKey });
    t.equal(response.status, 400, `${path}: 400`);
    t.equal(response.body.error.code, 'invalid_request');
    t.match(response.body.error.message, /^Invalid query: (limit|sort): given more than once$/, `${path}: names the parameter`);
  }
});

t.test('a key pasted where a field name or value goes is not echoed in the 400', async (t) => {
  const { api, org, adminKey } = await setup(t);
  const base = `/api/orgs/${org.id}/api-keys`;
  // As a field's name the message quotes it; as a value it does not today, and must not.
  const asName = [
    await api.request('GET', `${base}?${adminKey}=`, { key: adminKey }),
    await api.request('GET', `${base}?${adminKey}=1&${adminKey}=2`, { key: adminKey }),
    await api.request('POST', base, { key: adminKey, body: { name: 'x', scopes: ['keys:read'], [adminKey]: true } }),
  ];
  const asValue = [
    await api.request('GET', `${base}/usage?sort=${adminKey}`, { key: adminKey }),
    await api.request('POST', base, { key: adminKey, body: { name: 'x', scopes: [adminKey] } }),
  ];
  for (const [i, response] of [...asName, ...asValue].entries()) {
    t.equal(response.status, 400, `case ${i}: 400`);
    t.notOk(response.text.includes(adminKey.slice(3)), `case ${i}: the key is not in the answer`);
  }
  for (const response of asName) t.match(response.body.error.message, /ku_\[redacted\]/, 'its place is marked');
  const inPath = await api.request('GET', `/api/${adminKey}`, { key: adminKey });
  t.equal(inPath.status, 404);
  t.equal(inPath.body.error.message, 'No route for GET /api/ku_[redacted]', 'nor in a path that matches no route');
  // Percent-encoded, it passed as it was, into the 404's message and the request log (fails without the fix).
  const encoded = await api.request('GET', `/api/%6B${adminKey.slice(1)}`, { key: adminKey });
  t.equal(encoded.body.error.message, 'No route for GET /api/ku_[redacted]', 'nor percent-encoded');
  t.strictSame(api.evidence.leaksOf([adminKey.slice(3)]), [], 'in no answer or log line');
});

t.test('a date-time whose "+" arrived as a space: the message suggests %2B or Z', async (t) => {
  const { api, org, adminKey, adminKeyId } = await setup(t);
  const series = `/api/orgs/${org.id}/api-keys/${adminKeyId}/usage`;
  const raw = await api.request('GET', `${series}?from=2026-01-01T00:00:00+02:00`, { key: adminKey });
  t.equal(raw.status, 400);
  t.match(raw.body.error.message, /^Invalid query: from: .*%2B.*Z/, 'suggests %2B or Z');
  const other = await api.request('GET', `${series}?from=yesterday`, { key: adminKey });
  t.notMatch(other.body.error.message, /%2B/, 'only where a space stands for the "+"');
  const encoded = await api.request('GET', `${series}?from=2026-01-01T00:00:00%2B02:00&to=2026-01-02T00:00:00Z`, { key: adminKey });
  t.equal(encoded.status, 200, '%2B works');
  // The events' since gave the bare message the docs promise only for the series.
  const events = await api.request('GET', `/api/orgs/${org.id}/api-keys/events?since=2026-01-01T00:00:00+02:00`, { key: adminKey });
  t.match(events.body.error.message, /^Invalid query: since: .*%2B.*Z/, "the events' since too");
});

t.test("a malformed id answers 400 naming it in every position; another org's id is still 404", async (t) => {
  const { api, org, adminKey, adminKeyId } = await setup(t);
  const cases: Array<[string, string, string]> = [
    ['org id', `/api/orgs/not-a-uuid/api-keys/${adminKeyId}`, 'id'],
    ['key id', `/api/orgs/${org.id}/api-keys/not-a-uuid`, 'keyId'],
    ['org id, usage', `/api/orgs/not-a-uuid/api-keys/usage`, 'id'],
  ];
  for (const [label, path, field] of cases) {
    const response = await api.request('GET', path, { key: adminKey });
    t.same([response.status, response.body.error.code], [400, 'invalid_request'], `${label}: 400 invalid_request`);
    t.match(response.body.error.message, new RegExp(`^Invalid params: (.*; )?${field}: must be a UUID`), `${label}: names ${field}`);
  }
  const other = await api.request('GET', `/api/orgs/${randomUUID()}/api-keys`, { key: adminKey });
  t.same([other.status, other.body.error.message], [404, 'Organization not found'], 'a well-formed id of another org: 404');
});

t.test('a path that is not valid percent-encoding, or a body that cannot be inflated, answers 400, not 500', async (t) => {
  const { api, org, adminKey } = await setup(t);
  // Decoded by the router before any route runs, so before authentication too.
  for (const path of [`/api/orgs/%E0/api-keys`, `/api/orgs/${org.id}/api-keys/%zz`, `/api/orgs/${org.id}/webhooks/%E0%A4%A`]) {
    for (const key of [adminKey, undefined]) {
      const response = await api.request('GET', path, { key });
      t.equal(response.status, 400, `${path}${key ? '' : ' without a key'}: 400`);
      t.equal(response.body.error.code, 'invalid_request');
      t.equal(response.body.error.message, 'The path is not valid percent-encoding (RFC 3986)');
    }
  }
  const response = await fetch(`${api.baseUrl}/api/orgs/${org.id}/api-keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json', 'content-encoding': 'gzip' },
    body: '{"name":"x","scopes":["keys:read"]}',
  });
  const body = (await response.json()) as { error: { code: string; message: string } };
  t.equal(response.status, 400, 'a gzip Content-Encoding on a body that is not gzip: 400');
  t.equal(body.error.code, 'invalid_request');
  t.match(body.error.message, /Content-Encoding/);
  t.same(
    api.evidence.logLines.filter((line) => /unhandled error/.test(line)),
    [],
    'no "unhandled error" logged',
  );
});

// body-parser (strict) refuses valid JSON that is not an object or array as a parse failure: a
// client sending `null` was told its JSON was not valid, and looked for a syntax error.
t.test('valid JSON that is not an object is refused as such, not as invalid JSON', async (t) => {
  const { api, org, adminKey } = await setup(t);
  const create = `/api/orgs/${org.id}/api-keys`;
  for (const body of ['null', '"x"', '1', 'true', ' null\n']) {
    const response = await api.request('POST', create, { key: adminKey, body });
    t.same([response.status, response.body.error.code], [400, 'invalid_request'], `${JSON.stringify(body)}: 400 invalid_request`);
    t.equal(response.body.error.message, 'Request body must be a JSON object', `${JSON.stringify(body)}: says what to send`);
  }
  for (const body of ['{"name": "x", scopes: [', 'nul', '"x']) {
    const response = await api.request('POST', create, { key: adminKey, body });
    t.same([response.status, response.body.error.message], [400, 'Request body is not valid JSON'], `${JSON.stringify(body)}: still not valid JSON`);
  }
});
