import { randomBytes, randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { UNAUTHORIZED_MESSAGE } from '../api/errors';
import { API_ROUTES } from '../api/openapi/routes';
import { formatKey, parsePresentedKey } from '../api/keys/keyMaterial';
import type { Scope } from '../api/keys/scopes';
import type { Db } from '../shared/db';
import type { Outcome } from '../shared/usageWire';
import { seedOrg, startTestApi, twoOrgWorld, type RecordedUse, type TestResponse } from './helpers/api';
import { registeredRoutes } from './helpers/appRoutes';
import { freshDatabase } from './helpers/database';

// The shared security test: every route against every way a request can be refused, asserting the
// status, the one error body shape, the usage outcome recorded, and that nothing leaks.

type Api = Awaited<ReturnType<typeof startTestApi>>;
type Header = 'bearer' | 'x-api-key';

interface Key {
  id: string;
  orgId: string;
  plaintext: string;
}

interface Route {
  /** `METHOD /pattern` exactly as the app's router lists it (test/helpers/appRoutes.ts). */
  name: string;
  /** Every scope the route needs; a key lacking any one of them is refused. */
  scopes?: Scope[];
  /** Key management: refused to a key's previous secret during a rotation's grace period. */
  managesKeys?: true;
  /** Which key or webhook the route acts on when it succeeds (mutating routes get their own). */
  target: 'reader' | 'rotateTarget' | 'revokeTarget' | 'webhook' | 'webhookToDelete';
  /** What the second path parameter names (default: an API key). */
  resource?: 'webhook';
  body?: unknown;
  okStatus: number;
  /** Requests by an authorised key that must fail validation, and the field the message must name. */
  invalid: Array<{ label: string; params?: Record<string, string>; query?: string; body?: unknown; field: string; message?: string }>;
}

const BAD_ID = 'not-a-uuid';

/** A query parameter the route refuses: the message names the parameter. */
const badQuery = (label: string, query: string) => ({ label, query, field: query.split('=')[0] });

/** Most routes read the org's keys: a GET with the keys:read scope, answering 200. */
const read = (name: string, invalid: Route['invalid'], more: Partial<Route> = {}): Route => ({
  name,
  scopes: ['keys:read'],
  target: 'reader',
  okStatus: 200,
  invalid,
  ...more,
});

const ROUTES: Route[] = [
  {
    name: 'POST /api/orgs/:id/api-keys',
    managesKeys: true,
    scopes: ['keys:write'],
    target: 'reader',
    body: { name: 'made by the matrix', scopes: ['keys:read'] },
    okStatus: 201,
    invalid: [
      { label: 'empty name', body: { name: '  ', scopes: ['keys:read'] }, field: 'name' },
      { label: 'no scopes', body: { name: 'x', scopes: [] }, field: 'scopes' },
      { label: 'unknown scope', body: { name: 'x', scopes: ['admin'] }, field: 'scopes.0' },
      // The range's message was added to the format's (fails without the fix).
      {
        label: 'bad expiresAt',
        body: { name: 'x', scopes: ['keys:read'], expiresAt: 'tomorrow' },
        field: 'expiresAt',
        message: 'Invalid body: expiresAt: must be an ISO 8601 date-time',
      },
      // Year 10000 in UTC: answered back as "+010000-…", which no ISO 8601 parser takes (fails without the fix).
      { label: 'expiresAt after 9999 in UTC', body: { name: 'x', scopes: ['keys:read'], expiresAt: '9999-12-31T23:59:59-23:59' }, field: 'expiresAt' },
      {
        label: 'unknown field',
        body: { name: 'x', scopes: ['keys:read'], team: 'me' },
        field: 'team',
        message: 'Invalid body: team: is not a field this route takes',
      },
      { label: 'missing body', field: 'name' },
    ],
  },
  read('GET /api/orgs/:id/api-keys', [
    badQuery('limit 0', 'limit=0'),
    badQuery('limit not a number', 'limit=ten'),
    badQuery('negative offset', 'offset=-1'),
    // z.coerce read these as 16 and 0 (fail without the fix).
    badQuery('limit in hexadecimal', 'limit=0x10'),
    badQuery('empty offset', 'offset='),
    { ...badQuery('unknown parameter', 'status=active'), message: 'Invalid query: status: is not a parameter this route reads' },
    { ...badQuery('createdByKeyId not a UUID', 'createdByKeyId=x'), message: 'Invalid query: createdByKeyId: must be a UUID' },
  ]),
  read('GET /api/orgs/:id/api-keys/:keyId', [{ label: 'keyId not a UUID', params: { keyId: BAD_ID }, field: 'keyId' }]),
  {
    name: 'POST /api/orgs/:id/api-keys/:keyId/rotate',
    managesKeys: true,
    scopes: ['keys:write'],
    target: 'rotateTarget',
    body: { gracePeriodSeconds: 0 },
    okStatus: 200,
    invalid: [
      { label: 'keyId not a UUID', params: { keyId: BAD_ID }, body: {}, field: 'keyId' },
      { label: 'negative grace', body: { gracePeriodSeconds: -1 }, field: 'gracePeriodSeconds' },
      { label: 'fractional grace', body: { gracePeriodSeconds: 1.5 }, field: 'gracePeriodSeconds' },
      { label: 'grace over 7 days', body: { gracePeriodSeconds: 604_801 }, field: 'gracePeriodSeconds' },
      { label: 'bad expiresAt', body: { expiresAt: 'tomorrow' }, field: 'expiresAt' },
      {
        label: 'expiresAt in the past',
        body: { expiresAt: '2001-01-01T00:00:00Z' },
        field: 'expiresAt',
        message: 'Invalid body: expiresAt: must be in the future',
      },
    ],
  },
  {
    name: 'POST /api/orgs/:id/api-keys/:keyId/revoke',
    managesKeys: true,
    scopes: ['keys:write'],
    target: 'revokeTarget',
    okStatus: 200,
    invalid: [{ label: 'keyId not a UUID', params: { keyId: BAD_ID }, field: 'keyId' }],
  },
  {
    // The reader is active: a restore that succeeds answers it as it is.
    name: 'POST /api/orgs/:id/api-keys/:keyId/restore',
    managesKeys: true,
    scopes: ['keys:write'],
    target: 'reader',
    okStatus: 200,
    invalid: [{ label: 'keyId not a UUID', params: { keyId: BAD_ID }, field: 'keyId' }],
  },
  {
    name: 'GET /api/whoami',
    target: 'reader',
    okStatus: 200,
    invalid: [],
  },
  read('GET /api/orgs/:id/api-keys/usage', [
    badQuery('unknown sort', 'sort=name'),
    badQuery('dormant not a boolean', 'dormant=yes'),
    badQuery('dormantDays 0', 'dormantDays=0'),
    badQuery('dormantDays in exponent form', 'dormantDays=1e1'),
    badQuery('unknown parameter', 'keyId=x'),
    badQuery('createdByKeyId not a UUID', 'createdByKeyId=x'),
  ]),
  read('GET /api/orgs/:id/api-keys/usage.csv', [
    badQuery('dormant not a boolean', 'dormant=yes'),
    badQuery('unknown status', 'status=gone'),
    badQuery('paging, which the report does not take', 'limit=5'),
    badQuery('a sort, which the report does not take', 'sort=createdAt'),
    badQuery('createdByKeyId not a UUID', 'createdByKeyId=x'),
  ]),
  read('GET /api/orgs/:id/api-keys/:keyId/usage', [
    { label: 'keyId not a UUID', params: { keyId: BAD_ID }, field: 'keyId' },
    badQuery('unknown granularity', 'granularity=week'),
    badQuery('from not a date', 'from=yesterday'),
    // Its window began in year -1, an answer its own schema refused (fails without the fix).
    badQuery('to before 1970', 'to=0000-01-03T00:00:00Z'),
  ]),
  read('GET /api/orgs/:id/usage', [
    badQuery('unknown granularity', 'granularity=week'),
    badQuery('from not a date', 'from=yesterday'),
    badQuery('a key id, which it does not read', 'keyId=x'),
  ]),
  read('GET /api/orgs/:id/api-keys/events', [
    badQuery('unknown type', 'type=key.bogus'),
    badQuery('keyId not a UUID', 'keyId=x'),
    { ...badQuery('since not a date', 'since=yesterday'), message: 'Invalid query: since: must be an ISO 8601 date-time' },
    badQuery('since after 9999 in UTC', 'since=9999-12-31T23:59:59-23:59'),
    badQuery('a cursor it never returned', 'cursor=bm90LWEtY3Vyc29y'),
    badQuery('limit 0', 'limit=0'),
    badQuery('unknown parameter', 'offset=5'),
  ]),
  {
    name: 'PATCH /api/orgs/:id/api-keys/:keyId',
    scopes: ['keys:write'],
    managesKeys: true,
    target: 'reader',
    body: { expectedNetworks: ['10.0.0.0/8', '2001:db8::/32'] },
    okStatus: 200,
    invalid: [
      { label: 'keyId not a UUID', params: { keyId: BAD_ID }, body: { expectedNetworks: null }, field: 'keyId' },
      { label: 'prefix too long', body: { expectedNetworks: ['10.0.0.0/33'] }, field: 'expectedNetworks.0' },
      { label: 'not an address', body: { expectedNetworks: ['intranet'] }, field: 'expectedNetworks.0' },
      // Node's isIP takes it; PostgreSQL's inet does not (it was a 500).
      { label: 'an IPv6 zone id', body: { expectedNetworks: ['fe80::1%eth0'] }, field: 'expectedNetworks.0' },
      // A key's scopes are fixed at its creation.
      { label: 'unknown field', body: { expectedNetworks: null, scopes: ['keys:read'] }, field: 'scopes' },
      { label: 'bad expiresAt', body: { expiresAt: 'tomorrow' }, field: 'expiresAt', message: 'Invalid body: expiresAt: must be an ISO 8601 date-time' },
      { label: 'expiresAt after 9999 in UTC', body: { expiresAt: '9999-12-31T23:59:59-23:59' }, field: 'expiresAt' },
      {
        label: 'expiresAt in the past',
        body: { expiresAt: '2001-01-01T00:00:00Z' },
        field: 'expiresAt',
        message: 'Invalid body: expiresAt: must be in the future',
      },
      // At least one field: a body with none changes nothing.
      { label: 'missing body', field: 'expectedNetworks', message: 'Invalid body: body: must set at least one of name, owner, expectedNetworks, expiresAt' },
    ],
  },
  {
    name: 'POST /api/orgs/:id/api-keys/revoke-dormant',
    scopes: ['keys:read', 'keys:write'],
    managesKeys: true,
    target: 'reader',
    body: { dormantDays: 90 },
    okStatus: 200,
    invalid: [
      { label: 'dormantDays 0', body: { dormantDays: 0 }, field: 'dormantDays' },
      { label: 'dryRun not a boolean', body: { dormantDays: 90, dryRun: 'yes' }, field: 'dryRun' },
      { label: 'restorableForDays negative', body: { dormantDays: 90, restorableForDays: -1 }, field: 'restorableForDays' },
      { label: 'restorableForDays over a year', body: { dormantDays: 90, restorableForDays: 366 }, field: 'restorableForDays' },
      { label: 'restorableForDays fractional', body: { dormantDays: 90, restorableForDays: 1.5 }, field: 'restorableForDays' },
      { label: 'missing body', field: 'dormantDays' },
    ],
  },
  read('GET /api/orgs/:id/audit-log', [
    badQuery('limit 0', 'limit=0'),
    badQuery('cursor not one of ours', 'cursor=MTIzYQ'),
    badQuery('unknown parameter', 'offset=10'),
    badQuery('actorKeyId not a UUID', 'actorKeyId=x'),
  ]),
];

const HOOK = { url: 'https://203.0.113.10/hook', events: ['*'] };

const WEBHOOK_ROUTES: Route[] = [
  {
    name: 'POST /api/orgs/:id/webhooks',
    scopes: ['keys:read', 'keys:write'],
    managesKeys: true,
    target: 'reader',
    body: HOOK,
    okStatus: 201,
    invalid: [
      { label: 'not a URL', body: { ...HOOK, url: 'hook' }, field: 'url' },
      { label: 'private target', body: { ...HOOK, url: 'http://127.0.0.1/hook' }, field: 'url' },
      { label: 'no events', body: { ...HOOK, events: [] }, field: 'events' },
      { label: 'unknown event', body: { ...HOOK, events: ['key.gone'] }, field: 'events.0' },
      { label: 'unknown field', body: { ...HOOK, secret: 'mine' }, field: 'secret' },
      { label: 'missing body', field: 'url' },
    ],
  },
  read('GET /api/orgs/:id/webhooks', [badQuery('limit 0', 'limit=0'), badQuery('unknown parameter', 'url=x')]),
  read(
    'GET /api/orgs/:id/webhooks/:webhookId/deliveries',
    [
      { label: 'webhookId not a UUID', params: { webhookId: BAD_ID }, field: 'webhookId' },
      badQuery('unknown status', 'status=lost'),
      badQuery('negative offset', 'offset=-1'),
    ],
    { target: 'webhook', resource: 'webhook' },
  ),
  {
    name: 'POST /api/orgs/:id/webhooks/:webhookId/test',
    scopes: ['keys:write'],
    managesKeys: true,
    target: 'webhook',
    resource: 'webhook',
    okStatus: 202,
    invalid: [{ label: 'webhookId not a UUID', params: { webhookId: BAD_ID }, field: 'webhookId' }],
  },
  {
    name: 'POST /api/orgs/:id/webhooks/:webhookId/rotate-secret',
    scopes: ['keys:read', 'keys:write'],
    managesKeys: true,
    target: 'webhook',
    resource: 'webhook',
    body: { gracePeriodSeconds: 3600 },
    okStatus: 200,
    invalid: [
      { label: 'webhookId not a UUID', params: { webhookId: BAD_ID }, body: {}, field: 'webhookId' },
      { label: 'negative grace', body: { gracePeriodSeconds: -1 }, field: 'gracePeriodSeconds' },
      { label: 'grace over 7 days', body: { gracePeriodSeconds: 604_801 }, field: 'gracePeriodSeconds' },
      { label: 'unknown field', body: { secret: 'mine' }, field: 'secret' },
    ],
  },
  {
    name: 'DELETE /api/orgs/:id/webhooks/:webhookId',
    scopes: ['keys:read', 'keys:write'],
    managesKeys: true,
    target: 'webhookToDelete',
    resource: 'webhook',
    okStatus: 204,
    invalid: [{ label: 'webhookId not a UUID', params: { webhookId: BAD_ID }, field: 'webhookId' }],
  },
];
ROUTES.push(...WEBHOOK_ROUTES);

const START = Date.parse('2026-11-25T12:00:00Z');

async function createKey(api: Api, orgId: string, name: string, scopes: Scope[], expiresAt: Date | null = null): Promise<Key> {
  const created = await api.services.apiKeys.create(orgId, { name, scopes, expiresAt });
  return { id: created.key.id, orgId, plaintext: created.plaintext };
}

// Two orgs and a key in every state the matrix needs, then an hour later: the expiring key has
// expired and the rotated key's old secret is past its grace period.
async function buildWorld(t: Test) {
  const { db, api, clock, acme, globex } = await twoOrgWorld(t, START);
  const both: Scope[] = ['keys:read', 'keys:write'];
  const admin: Key = { id: acme.adminKeyId, orgId: acme.org.id, plaintext: acme.adminKey };
  const intruder: Key = { id: globex.adminKeyId, orgId: globex.org.id, plaintext: globex.adminKey };
  const reader = await createKey(api, acme.org.id, 'reader', ['keys:read']);
  const writer = await createKey(api, acme.org.id, 'writer', ['keys:write']);
  const expiring = await createKey(api, acme.org.id, 'expiring', both, new Date(START + 60_000));
  const revoked = await createKey(api, acme.org.id, 'revoked', both);
  await api.services.apiKeys.revoke(acme.org.id, revoked.id);
  const rotated = await createKey(api, acme.org.id, 'rotated', both);
  const rotation = await api.services.apiKeys.rotate(acme.org.id, rotated.id, { graceSeconds: 60 });
  // Its previous secret (the plaintext below) is still in its grace period an hour later.
  const inGrace = await createKey(api, acme.org.id, 'in grace', both);
  const graceRotation = await api.services.apiKeys.rotate(acme.org.id, inGrace.id, { graceSeconds: 7200 });
  const rotateTarget = await createKey(api, acme.org.id, 'rotate target', ['keys:read']);
  const revokeTarget = await createKey(api, acme.org.id, 'revoke target', ['keys:read']);
  const createWebhook = (orgId: string) => api.services.webhooks.create(orgId, HOOK);
  const webhooks = [await createWebhook(acme.org.id), await createWebhook(acme.org.id), await createWebhook(globex.org.id)];
  clock.now += 3_600_000;

  const plaintexts = [admin, intruder, reader, writer, expiring, revoked, rotated, inGrace, rotateTarget, revokeTarget].map((key) => key.plaintext);
  plaintexts.push(rotation.plaintext, graceRotation.plaintext);
  return {
    db,
    api,
    acme: acme.org,
    globex: globex.org,
    keys: { admin, intruder, reader, writer, expiring, revoked, rotated, inGrace, rotateTarget, revokeTarget },
    targets: {
      reader: reader.id,
      rotateTarget: rotateTarget.id,
      revokeTarget: revokeTarget.id,
      webhook: webhooks[0].webhook.id,
      webhookToDelete: webhooks[1].webhook.id,
    },
    foreignWebhook: webhooks[2].webhook.id,
    plaintexts,
    webhookSecrets: webhooks.map((created) => created.secret),
  };
}

function assertErrorShape(t: Test, response: TestResponse, status: number, code: string, label: string) {
  t.equal(response.status, status, `${label}: status ${status}`);
  t.match(response.headers.get('content-type'), /^application\/json/, `${label}: JSON`);
  t.same(Object.keys(response.body ?? {}), ['error'], `${label}: one top-level "error"`);
  t.same(Object.keys(response.body?.error ?? {}).sort(), ['code', 'message', 'requestId'], `${label}: {code, message, requestId}`);
  t.equal(response.body?.error?.code, code, `${label}: code ${code}`);
  t.equal(response.body?.error?.requestId, response.headers.get('x-request-id'), `${label}: requestId is the X-Request-Id header`);
  t.match(response.body?.error?.message, /\S/, `${label}: a message`);
}

// Every stored hash in the forms a careless log or body could carry it.
async function storedHashForms(db: Db): Promise<string[]> {
  const rows = await db('api_keys').select('secret_hash', 'previous_secret_hash');
  const hashes = rows.flatMap((row) => [row.secret_hash, row.previous_secret_hash]).filter((hash): hash is Buffer => Buffer.isBuffer(hash));
  return hashes.flatMap((hash) => [hash.toString('hex'), hash.toString('base64'), hash.toString('base64url')]);
}

// Routes the app serves to anyone, outside the matrix: the dashboard page (it holds no data; the
// browser calls the API with a key), the health check and the OpenAPI contract.
const PUBLIC_ROUTES = ['GET /', 'GET /healthz', 'GET /openapi.json'];

const methodOf = (route: Route) => route.name.split(' ')[0];

/** The route's path with `:id` the org, its second parameter the target, and any parameter overridden. */
function pathOf(route: Route, orgId: string, targetId: string, params: Record<string, string> = {}): string {
  return route.name.split(' ')[1].replace(/:(\w+)/g, (_, name: string) => params[name] ?? (name === 'id' ? orgId : targetId));
}
const namesOrg = (route: Route) => route.name.includes('/:id');
const namesTarget = (route: Route) => /\/:id\/.*\/:\w+/.test(route.name);

t.test('the matrix covers every route the app serves', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  // Read from the app's router, so a route added to the app is here whether or not anyone remembered the matrix.
  const served = registeredRoutes(api.app);
  t.ok(served.length > ROUTES.length / 2, `the router listed ${served.length} routes`);
  const inMatrix = new Set([...ROUTES.map((route) => route.name), ...PUBLIC_ROUTES]);
  t.same(
    served.filter((name) => !inMatrix.has(name)),
    [],
    'every route the app serves has a matrix entry (or is a listed public route)',
  );
  t.same(
    [...inMatrix].filter((name) => !served.includes(name)),
    [],
    'every matrix entry is a route the app serves',
  );
  t.equal(new Set(ROUTES.map((route) => route.name)).size, ROUTES.length, 'no route listed twice');
});

type World = Awaited<ReturnType<typeof buildWorld>>;
type Call = ReturnType<typeof caller>;

// One request as `route`, by default on the target the route acts on; returns the response and the uses it recorded.
function caller(world: World) {
  const { api, acme, targets } = world;
  return async (route: Route, init: { key?: string; header?: Header; path?: string; body?: unknown; query?: string; targetKey?: string }) => {
    const target = init.targetKey ?? targets[route.target];
    const path = (init.path ?? pathOf(route, acme.id, target)) + (init.query ? `?${init.query}` : '');
    const before = api.uses.length;
    const body = 'body' in init ? init.body : route.body;
    const response = await api.request(methodOf(route), path, { key: init.key, header: init.header, body });
    return { response, uses: api.uses.slice(before) };
  };
}

const use = (key: Key, outcome: Outcome): RecordedUse => ({ keyId: key.id, orgId: key.orgId, ip: '127.0.0.1', outcome });

/** What one route's run hands back to the whole matrix. */
interface Seen {
  unauthorizedMessages: Set<string>;
  revealed: string[];
  revealedWebhookSecrets: string[];
}

/** The key's id with a random secret, in the legacy format (no checksum to give it away). */
const wrongSecret = (key: Key) => `${key.plaintext.slice(0, 36)}${randomBytes(32).toString('base64url')}`;

// Every way a key can fail to authenticate: 401 with the one message, and the use recorded only when the key is known.
async function assertUnauthenticated(t: Test, world: World, call: Call, route: Route, header: Header, seen: Seen) {
  const { keys } = world;
  const unauthorized = async (label: string, init: Parameters<Call>[1], expectedUses: RecordedUse[]) => {
    const { response, uses } = await call(route, { header, ...init });
    assertErrorShape(t, response, 401, 'unauthorized', label);
    t.equal(response.body.error.message, UNAUTHORIZED_MESSAGE, `${label}: the one 401 message`);
    seen.unauthorizedMessages.add(response.body.error.message);
    t.same(uses, expectedUses, `${label}: recorded ${expectedUses.map((u) => u.outcome).join(', ') || 'nothing'}`);
  };
  await unauthorized('no key', {}, []);
  await unauthorized('malformed key', { key: 'not-a-key' }, []);
  await unauthorized('malformed: truncated secret', { key: keys.admin.plaintext.slice(0, -1) }, []);
  await unauthorized('unknown key id', { key: `ku_${randomBytes(16).toString('hex')}_${randomBytes(32).toString('base64url')}` }, []);
  await unauthorized('wrong secret (legacy format)', { key: wrongSecret(keys.admin) }, [use(keys.admin, 'bad_secret')]);
  await unauthorized('wrong secret (checksum format)', { key: formatKey(keys.admin.id, randomBytes(32).toString('hex').slice(0, 43)) }, [
    use(keys.admin, 'bad_secret'),
  ]);
  const flipped = keys.admin.plaintext.slice(-1) === 'a' ? 'b' : 'a';
  await unauthorized('checksum mismatch', { key: keys.admin.plaintext.slice(0, -1) + flipped }, []);
  await unauthorized('expired', { key: keys.expiring.plaintext }, [use(keys.expiring, 'expired')]);
  await unauthorized('revoked', { key: keys.revoked.plaintext }, [use(keys.revoked, 'revoked')]);
  // The secret is checked before the status: a wrong one does not learn the key is expired or revoked.
  await unauthorized('expired, wrong secret', { key: wrongSecret(keys.expiring) }, [use(keys.expiring, 'bad_secret')]);
  await unauthorized('revoked, wrong secret', { key: wrongSecret(keys.revoked) }, [use(keys.revoked, 'bad_secret')]);
  await unauthorized('rotated out (old secret after grace)', { key: keys.rotated.plaintext }, [use(keys.rotated, 'bad_secret')]);
}

// A key without the route's scope is refused 403 naming it; a previous secret in its grace period
// may do everything but manage keys.
async function assertScopeAndGrace(t: Test, world: World, call: Call, route: Route, header: Header) {
  const { keys } = world;
  for (const scope of route.scopes ?? []) {
    const lacking = scope === 'keys:write' ? keys.reader : keys.writer;
    const { response, uses } = await call(route, { key: lacking.plaintext, header });
    assertErrorShape(t, response, 403, 'forbidden', `missing ${scope}`);
    t.match(response.body.error.message, `"${scope}"`, 'missing scope: the message names the scope');
    t.same(uses, [use(lacking, 'forbidden')], 'missing scope: recorded forbidden');
  }
  const { response, uses } = await call(route, { key: keys.inGrace.plaintext, header });
  if (route.managesKeys) {
    assertErrorShape(t, response, 403, 'stale_secret', 'previous secret in its grace period');
    t.match(response.body.error.message, /current secret/, 'previous secret: the message says to use the current secret');
    t.same(uses, [{ ...use(keys.inGrace, 'forbidden'), previousSecret: true }], 'previous secret: recorded forbidden, as a use of the previous secret');
  } else {
    t.equal(response.status, route.okStatus, 'previous secret in its grace period: everything but key management');
    t.same(uses, [{ ...use(keys.inGrace, 'ok'), previousSecret: true }], 'previous secret: recorded ok, as a use of the previous secret');
  }
}

// Another org's key, an org that does not exist and a malformed org id.
async function assertOrgIsolation(t: Test, world: World, call: Call, route: Route, header: Header) {
  const { keys, acme, targets } = world;
  // A key of another org: 404, indistinguishable from an org that does not exist.
  const other = await call(route, { key: keys.intruder.plaintext, header });
  assertErrorShape(t, other.response, 404, 'not_found', 'other org');
  t.equal(other.response.body.error.message, 'Organization not found', 'other org: a fixed message');
  t.notMatch(other.response.text, acme.id, 'other org: the body does not echo the org id');
  t.notMatch(other.response.text, targets[route.target], 'other org: nor the key id');
  t.same(other.uses, [use(keys.intruder, 'cross_org')], 'other org: recorded cross_org');

  const nowhere = await call(route, { key: keys.intruder.plaintext, header, path: pathOf(route, randomUUID(), targets[route.target]) });
  t.same(
    [nowhere.response.status, nowhere.response.body.error.code, nowhere.response.body.error.message],
    [other.response.status, other.response.body.error.code, other.response.body.error.message],
    'an org that does not exist answers exactly the same',
  );

  // A malformed id names no org: 400 naming the parameter, like a malformed key id.
  const malformedOrg = await call(route, { key: keys.admin.plaintext, header, path: pathOf(route, BAD_ID, targets[route.target]) });
  assertErrorShape(t, malformedOrg.response, 400, 'invalid_request', 'malformed org id');
  t.match(malformedOrg.response.body.error.message, /^Invalid params: (.*; )?id: must be a UUID/, 'malformed org id: names id');
  t.same(malformedOrg.uses, [use(keys.admin, 'ok')], 'malformed org id: an authorised use');
}

// The caller's own org, another org's key (or webhook) id: it is not found there.
async function assertForeignTarget(t: Test, world: World, call: Call, route: Route, header: Header) {
  const { keys } = world;
  const foreign =
    route.resource === 'webhook' ? { id: world.foreignWebhook, message: 'Webhook not found' } : { id: keys.intruder.id, message: 'API key not found' };
  const foreignKey = await call(route, { key: keys.admin.plaintext, header, targetKey: foreign.id });
  assertErrorShape(t, foreignKey.response, 404, 'not_found', "another org's id");
  t.equal(foreignKey.response.body.error.message, foreign.message);
  t.same(foreignKey.uses, [use(keys.admin, 'ok')], "another org's id: an authorised use");
  const unknownKey = await call(route, { key: keys.admin.plaintext, header, targetKey: randomUUID() });
  t.same([unknownKey.response.status, unknownKey.response.body.error.message], [404, foreign.message], 'an unknown id answers the same');
}

// What the route's contract says it does not read is refused, not dropped: a rotate's
// `?gracePeriodSeconds=0` was ignored (the old secret kept its day), a revoke's
// `{"dryRun":true}` too (it revoked). Every route, so a new one cannot forget it.
function unreadInputs(route: Route): Route['invalid'] {
  const [method, path] = route.name.split(' ');
  const contract = API_ROUTES.flatMap(({ mount, routes }) => routes.map((r) => ({ ...r, pattern: r.path === '/' && mount ? mount : mount + r.path }))).find(
    (r) => r.method === method.toLowerCase() && r.pattern === path,
  );
  if (!contract) throw new Error(`${route.name}: no contract`);
  const unknownQuery = { label: 'a query parameter the route does not read', query: 'unexpected=1', field: 'unexpected' };
  return method === 'GET' || contract.body
    ? [unknownQuery]
    : [unknownQuery, { label: 'a body where the route takes none', body: { dryRun: true }, field: 'body' }];
}

async function assertInvalidInputs(t: Test, world: World, call: Call, route: Route, header: Header) {
  const { keys, acme, targets } = world;
  for (const invalid of [...route.invalid, ...unreadInputs(route)]) {
    const label = `invalid: ${invalid.label}`;
    const { response, uses } = await call(route, {
      key: keys.admin.plaintext,
      header,
      path: invalid.params ? pathOf(route, acme.id, targets[route.target], invalid.params) : undefined,
      query: invalid.query,
      body: invalid.body,
    });
    assertErrorShape(t, response, 400, 'invalid_request', label);
    t.match(
      response.body.error.message,
      new RegExp(`^Invalid (body|query|params): .*${invalid.field.replace('.', '\\.')}`),
      `${label}: names ${invalid.field}`,
    );
    if (invalid.message !== undefined) t.equal(response.body.error.message, invalid.message, `${label}: says only what is wrong`);
    t.same(uses, [use(keys.admin, 'ok')], `${label}: an authorised use`);
  }
}

// Last, the control: the right key succeeds, so the refusals before it are not an accident.
async function assertRightKeySucceeds(t: Test, world: World, call: Call, route: Route, header: Header, seen: Seen) {
  const { response, uses } = await call(route, { key: world.keys.admin.plaintext, header });
  t.equal(response.status, route.okStatus, `the right key: ${route.okStatus}`);
  t.same(uses, [use(world.keys.admin, 'ok')], 'the right key: recorded ok');
  if (typeof response.body?.key === 'string') seen.revealed.push(response.body.key);
  if (typeof response.body?.secret === 'string') seen.revealedWebhookSecrets.push(response.body.secret);
}

async function assertNoKeyMaterial(t: Test, world: World, seen: Seen) {
  const { evidence } = world.api;
  t.ok(evidence.bodies.length > 100, `${evidence.bodies.length} response bodies captured`);
  t.ok(evidence.logLines.length > 100, `${evidence.logLines.length} log lines captured`);
  t.same(evidence.leaksOf([evidence.bodies[0]]), [evidence.bodies[0]], 'the scan finds what is there');

  const plaintexts = [...world.plaintexts, ...seen.revealed];
  const secrets = plaintexts.map((plaintext) => parsePresentedKey(plaintext)!.secret);
  t.same(evidence.leaksOf(plaintexts), [], 'no plaintext key');
  t.same(evidence.leaksOf(secrets), [], 'no secret part of a key');
  const hashes = await storedHashForms(world.db);
  t.ok(hashes.length >= 3 * 12, 'current and previous hashes of every key');
  t.same(evidence.leaksOf(hashes), [], 'no stored hash, hex or base64');
  t.same(evidence.leaksOf([world.api.config.api.keyPepper]), [], 'not the pepper either');
  t.same(evidence.leaksOf([...world.webhookSecrets, ...seen.revealedWebhookSecrets]), [], 'no webhook signing secret');
  t.same(
    evidence.logLines.filter((line) => JSON.parse(line).level >= 50),
    [],
    'client errors are not logged as errors',
  );
}

t.test('every route against every kind of refusal', async (t) => {
  const world = await buildWorld(t);
  const call = caller(world);
  const seen: Seen = { unauthorizedMessages: new Set(), revealed: [], revealedWebhookSecrets: [] };

  for (const [index, route] of ROUTES.entries()) {
    await t.test(route.name, async (t) => {
      // Alternate the header style so both are exercised on every kind of refusal.
      const header: Header = index % 2 === 0 ? 'bearer' : 'x-api-key';
      await assertUnauthenticated(t, world, call, route, header, seen);
      await assertScopeAndGrace(t, world, call, route, header);
      if (namesOrg(route)) await assertOrgIsolation(t, world, call, route, header);
      if (namesTarget(route)) await assertForeignTarget(t, world, call, route, header);
      await assertInvalidInputs(t, world, call, route, header);
      await assertRightKeySucceeds(t, world, call, route, header, seen);
    });
  }

  t.same([...seen.unauthorizedMessages], [UNAUTHORIZED_MESSAGE], 'every 401 carries the same message');
  t.equal(seen.revealed.length, 2, 'create and rotate each revealed one key');
  t.equal(seen.revealedWebhookSecrets.length, 2, "creating a webhook and rotating one's secret each revealed a secret");
  await t.test('no key material in any response body or log line', (t) => assertNoKeyMaterial(t, world, seen));
  t.notMatch(world.globex.id, world.acme.id);
});

t.test('X-Forwarded-For is believed only from a trusted proxy', async (t) => {
  const { db } = await freshDatabase(t);
  const spoofed = { 'x-forwarded-for': '198.51.100.1, 203.0.113.9' };

  const direct = await startTestApi(t, db);
  const { adminKey, adminKeyId } = await seedOrg(direct, db);
  t.equal((await direct.request('GET', '/api/whoami', { key: adminKey, headers: spoofed })).status, 200);
  t.same(
    direct.uses.map((use) => [use.keyId, use.ip]),
    [[adminKeyId, '127.0.0.1']],
    'TRUST_PROXY unset: the socket peer is recorded, the header ignored',
  );

  const behindProxy = await startTestApi(t, db, { env: { TRUST_PROXY: 'loopback' } });
  t.equal((await behindProxy.request('GET', '/api/whoami', { key: adminKey, headers: spoofed })).status, 200);
  t.equal((await behindProxy.request('GET', '/api/whoami', { key: adminKey })).status, 200);
  t.same(
    behindProxy.uses.map((use) => use.ip),
    ['203.0.113.9', '127.0.0.1'],
    'TRUST_PROXY=loopback: the address the proxy saw (rightmost untrusted hop); without the header, the peer',
  );
});

t.test('malformed requests and server errors keep the error shape', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const base = `/api/orgs/${org.id}/api-keys`;

  const notJson = await api.request('POST', base, { key: adminKey, body: '{"name": "x", scopes: [' });
  assertErrorShape(t, notJson, 400, 'invalid_request', 'invalid JSON');
  t.equal(notJson.body.error.message, 'Request body is not valid JSON');
  t.notMatch(notJson.text, /SyntaxError|at JSON\.parse|Unexpected/, 'no parser internals');

  const huge = await api.request('POST', base, { key: adminKey, body: { name: 'x'.repeat(20_000), scopes: ['keys:read'] } });
  assertErrorShape(t, huge, 413, 'payload_too_large', 'too large');
  t.equal(huge.body.error.message, 'Request body is too large');

  // The helper always sends `application/json`; this one needs its own content type.
  const latin1Response = await fetch(api.baseUrl + base, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json; charset=latin1' },
    body: '{"name":"x","scopes":["keys:read"]}',
  });
  const latin1Text = await latin1Response.text();
  api.evidence.bodies.push(latin1Text);
  const latin1: TestResponse = { status: latin1Response.status, headers: latin1Response.headers, text: latin1Text, body: JSON.parse(latin1Text) };
  assertErrorShape(t, latin1, 415, 'unsupported_media_type', 'unsupported charset');

  for (const [method, path] of [
    ['GET', '/api/nothing-here'],
    ['DELETE', `${base}`],
    // Express's own answer was a 200 text/plain list of methods, with no key asked for (fails without the fix).
    ['OPTIONS', `${base}`],
    // `/` is the dashboard now; a file it does not have still gets the API's 404.
    ['GET', '/ui/nothing-here.js'],
  ]) {
    const response = await api.request(method, path, { key: adminKey });
    assertErrorShape(t, response, 404, 'not_found', `${method} ${path}`);
    t.equal(response.body.error.message, `No route for ${method} ${path}`);
    // The OPTIONS answer went out before the /api headers were set (a review; fails without the fix).
    if (path.startsWith('/api/')) {
      t.strictSame(
        [response.headers.get('cache-control'), response.headers.get('vary')],
        ['no-store', 'Authorization, X-API-Key'],
        `${method} ${path}: private`,
      );
    }
  }

  const chosen = await api.request('GET', '/api/nothing-here', { headers: { 'x-request-id': 'trace-42.a_b' } });
  t.equal(chosen.headers.get('x-request-id'), 'trace-42.a_b', 'a well-formed client request id is kept');
  t.equal(chosen.body.error.requestId, 'trace-42.a_b');
  const hostile = await api.request('GET', '/api/nothing-here', { headers: { 'x-request-id': 'a"b<script>' } });
  t.match(hostile.headers.get('x-request-id'), /^[0-9a-f-]{36}$/, 'any other is replaced by a fresh one');
  t.equal(hostile.body.error.requestId, hostile.headers.get('x-request-id'));

  // A key the verifier has not cached must be looked up, and the database is gone: an unexpected error.
  const uncached = await api.services.apiKeys.create(org.id, { name: 'uncached', scopes: ['keys:read'], expiresAt: null });
  await db.destroy();
  const logLinesBefore = api.evidence.logLines.length;
  const crashed = await api.request('GET', '/api/whoami', { key: uncached.plaintext, header: 'x-api-key' });
  assertErrorShape(t, crashed, 500, 'internal_error', 'unexpected error');
  t.equal(crashed.body.error.message, 'Internal server error', 'a generic message');
  t.notMatch(crashed.text, /pool|knex|select|destroy|acquire/i, 'no internals in the body');
  const errors = api.evidence.logLines
    .slice(logLinesBefore)
    .map((line) => JSON.parse(line))
    .filter((line) => line.level >= 50);
  t.equal(errors.length, 1, 'logged once, as an error');
  t.match(errors[0], { msg: 'unhandled error', requestId: crashed.body.error.requestId, method: 'GET', path: '/api/whoami', err: { message: /\S/ } });
  t.same(api.evidence.leaksOf([uncached.plaintext, parsePresentedKey(uncached.plaintext)!.secret]), [], 'the key is not in the error log');
});
