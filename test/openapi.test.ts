import { readFileSync } from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import t, { type Test } from 'tap';
import { createApp } from '../api/app';
import type { ErrorCode } from '../api/errors';
import type { RouteContract } from '../api/openapi/contract';
import { openApiPath, renderOpenApiDocument } from '../api/openapi/document';
import { API_ROUTES } from '../api/openapi/routes';
import { loadConfig } from '../shared/config';
import { createDb } from '../shared/db';
import { createLogger } from '../shared/logger';
import { seedOrg, startTestApi, twoOrgWorld, type TestResponse } from './helpers/api';
import { registeredRoutes } from './helpers/appRoutes';
import { freshDatabase } from './helpers/database';

// The OpenAPI contract: docs/openapi.json is what GET /openapi.json serves, the document is sound,
// it lists exactly the routes the app registers, and the real responses of every route (success
// and each refusal) match it.

const COMMITTED = path.join(__dirname, '..', 'docs', 'openapi.json');
const DOC_ID = 'https://keyusage.invalid/openapi.json';
type Json = any;

const document: Json = JSON.parse(renderOpenApiDocument());

// JSON pointer segments (RFC 6901).
const escapePointer = (segment: string) => segment.replace(/~/g, '~0').replace(/\//g, '~1');
const resolvePointer = (root: Json, pointer: string): Json =>
  pointer
    .split('/')
    .slice(1)
    .reduce((node, segment) => node?.[segment.replace(/~1/g, '/').replace(/~0/g, '~')], root);

function* refsIn(node: Json): Generator<string> {
  if (Array.isArray(node)) for (const item of node) yield* refsIn(item);
  else if (node && typeof node === 'object') {
    for (const [key, value] of Object.entries(node)) {
      if (key === '$ref' && typeof value === 'string') yield value;
      else yield* refsIn(value);
    }
  }
}

function* propertyNames(node: Json): Generator<string> {
  if (Array.isArray(node)) for (const item of node) yield* propertyNames(item);
  else if (node && typeof node === 'object') {
    if (node.properties && typeof node.properties === 'object') yield* Object.keys(node.properties);
    for (const value of Object.values(node)) yield* propertyNames(value);
  }
}

function* operations(doc: Json): Generator<{ template: string; method: string; operation: Json }> {
  for (const [template, item] of Object.entries<Json>(doc.paths)) {
    for (const [method, operation] of Object.entries<Json>(item)) yield { template, method, operation };
  }
}

t.test('docs/openapi.json is the document the API serves', async (t) => {
  const committed = readFileSync(COMMITTED, 'utf8');
  t.ok(committed === renderOpenApiDocument(), 'docs/openapi.json is stale: run `npm run openapi` and commit docs/openapi.json');
  const packageVersion = JSON.parse(readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')).version;
  t.equal(document.info.version, packageVersion, "info.version is package.json's (API_VERSION in api/openapi/document.ts)");
});

t.test('the document is a sound OpenAPI 3.1 document', async (t) => {
  t.match(document.openapi, /^3\.1\.\d+$/, 'openapi: 3.1.x');
  t.ok(document.info.title && document.info.version, 'info names the API and its version');

  const refs = [...new Set(refsIn(document))];
  t.ok(refs.length > 20, `${refs.length} distinct $refs`);
  t.same(
    refs.filter((ref) => !ref.startsWith('#/') || resolvePointer(document, ref.slice(1)) === undefined),
    [],
    'every $ref resolves within the document',
  );

  const ajv = new Ajv2020({ strict: true });
  addFormats(ajv);
  for (const [id, schema] of Object.entries<Json>(document.components.schemas)) {
    const valid = ajv.validateSchema(schema);
    t.ok(valid, `components.schemas.${id} is JSON Schema 2020-12${valid ? '' : `: ${ajv.errorsText(ajv.errors)}`}`);
  }

  const operationIds: string[] = [];
  for (const { template, method, operation } of operations(document)) {
    const label = `${method.toUpperCase()} ${template}`;
    operationIds.push(operation.operationId);
    const inPath = [...template.matchAll(/\{(\w+)\}/g)].map((match) => match[1]);
    const declared = (operation.parameters ?? []).filter((parameter: Json) => parameter.in === 'path');
    t.same(declared.map((parameter: Json) => parameter.name).sort(), [...inPath].sort(), `${label}: each path parameter declared, none more`);
    t.ok(
      declared.every((parameter: Json) => parameter.required === true),
      `${label}: path parameters are required`,
    );
    t.ok(Object.keys(operation.responses).length > 0, `${label}: responses`);
    for (const [status, response] of Object.entries<Json>(operation.responses)) {
      t.ok(/^[1-5]\d\d$/.test(status) && (response.$ref || response.description), `${label} ${status}: a status with a description`);
    }
  }
  t.equal(new Set(operationIds).size, operationIds.length, 'operationIds are unique');
});

t.test('the document lists exactly the routes the app registers', async (t) => {
  const config = loadConfig({ NODE_ENV: 'test' });
  // Never connected: listing routes runs no query.
  const db = createDb('postgres://nobody@127.0.0.1:1/none');
  t.teardown(() => db.destroy());
  const { app } = createApp({
    db,
    logger: createLogger({ level: 'silent', name: 'routes' }),
    config: config.api,
    webhooks: config.webhooks,
    recordUse: () => {},
  });
  // The dashboard's page is a static file, not part of the API contract.
  const registered = registeredRoutes(app)
    .filter((route) => route !== 'GET /')
    .map((route) => {
      const [method, expressPath] = route.split(' ');
      return `${method} ${openApiPath('', expressPath)}`;
    });
  const documented = [...operations(document)].map(({ template, method }) => `${method.toUpperCase()} ${template}`);
  t.same(
    [...registered].sort(),
    [...documented].sort(),
    'a route without a contract (or a contract without a route) fails here: add it to api/openapi/routes.ts',
  );
});

t.test('the document never offers key material outside create and rotate', async (t) => {
  // KeyEvent's `key` names the key (its name and owner, checked below), as a webhook delivery's does.
  const revealing: Record<string, string> = { ApiKeyWithPlaintext: 'key', WebhookWithSecret: 'secret', KeyEvent: 'key' };
  for (const [id, schema] of Object.entries<Json>(document.components.schemas)) {
    t.same(
      // previousSecretExpiresAt is a time, previousSecretLastUsedIp a client address: not material.
      [...propertyNames(schema)].filter(
        (name) => /hash|secret|^key$|plaintext|pepper/i.test(name) && !name.endsWith('At') && name !== 'previousSecretLastUsedIp' && name !== revealing[id],
      ),
      [],
      `${id}: no field for a hash, a secret or a key`,
    );
  }
  const eventKey = document.components.schemas.KeyEvent.properties.key.anyOf;
  t.strictSame(
    eventKey.map((variant: Json) => Object.keys(variant.properties ?? {})),
    [['name', 'owner'], []],
    "KeyEvent's key: the key's name and owner, or null; nothing else",
  );
  t.equal(eventKey[0].additionalProperties, false);
  const revealedBy = [...operations(document)]
    .filter(({ operation }) => /WithPlaintext|WithSecret/.test(JSON.stringify(operation.responses)))
    .map(({ operation }) => operation.operationId)
    .sort();
  t.same(revealedBy, ['createApiKey', 'createWebhook', 'rotateApiKey', 'rotateWebhookSecret'], 'only create and rotate answer with a plaintext key or secret');
});

// ---- Real responses against the document ----

const contracts = new Map<string, { template: string; contract: RouteContract }>(
  API_ROUTES.flatMap(({ mount, routes }) =>
    routes.map((contract) => [contract.operationId, { template: openApiPath(mount, contract.path), contract }] as const),
  ),
);

/** How each operation succeeds: its path ids (default: the org, the reader key, the webhook), query and body. */
const SUCCESS: Record<string, { ids?: Record<string, 'rotateTarget' | 'revokeTarget' | 'webhookToDelete'>; query?: string; body?: unknown }> = {
  health: {},
  openApiDocument: {},
  whoAmI: {},
  createApiKey: { body: { name: 'made by the contract test', scopes: ['keys:read'], expiresAt: '2030-01-01T00:00:00Z', expectedNetworks: ['10.0.0.0/8'] } },
  listApiKeys: { query: 'limit=20' },
  revokeDormantApiKeys: { body: { dormantDays: 1, dryRun: true } },
  updateApiKey: { body: { expectedNetworks: ['192.0.2.0/24', '2001:db8::/32'], expiresAt: '2030-01-01T00:00:00Z' } },
  getApiKey: {},
  rotateApiKey: { ids: { keyId: 'rotateTarget' }, body: { gracePeriodSeconds: 60, expiresAt: '2030-01-01T00:00:00Z' } },
  revokeApiKey: { ids: { keyId: 'revokeTarget' } },
  // An active key is answered as it is (the restore itself: test/keyRestore.test.ts).
  restoreApiKey: { ids: { keyId: 'rotateTarget' } },
  listKeyUsage: { query: 'sort=requestCount' },
  keyUsageReport: { query: 'dormant=false' },
  keyUsageSeries: { query: 'granularity=hour&byOutcome=true' },
  orgUsageSeries: { query: 'granularity=hour&byOutcome=true' },
  listKeyEvents: { query: 'limit=10' },
  createWebhook: { body: { url: 'https://203.0.113.10/hook', events: ['key.new_ip'] } },
  listWebhooks: {},
  deleteWebhook: { ids: { webhookId: 'webhookToDelete' } },
  listWebhookDeliveries: { query: 'status=pending' },
  pingWebhook: {},
  rotateWebhookSecret: { body: { gracePeriodSeconds: 60 } },
  listAuditLog: { query: 'limit=5' },
};

const DAY = 86_400_000;
const START = Date.parse('2026-11-20T12:00:00Z');

async function buildWorld(t: Test) {
  const { db, api, clock, acme, globex } = await twoOrgWorld(t, START);
  const keys = api.services.apiKeys;
  const create = (name: string, scopes: Array<'keys:read' | 'keys:write'>) => keys.create(acme.org.id, { name, scopes, expiresAt: null });
  const reader = await create('reader', ['keys:read']);
  const writer = await create('writer', ['keys:write']);
  const rotateTarget = await create('rotate target', ['keys:read']);
  const revokeTarget = await create('revoke target', ['keys:read']);
  const revoked = await create('revoked', ['keys:read']);
  await keys.revoke(acme.org.id, revoked.key.id);
  const inGrace = await create('in grace', ['keys:read', 'keys:write']);
  await keys.rotate(acme.org.id, inGrace.key.id, { graceSeconds: 30 * 86_400 });
  const webhook = await api.services.webhooks.create(acme.org.id, { url: 'https://203.0.113.10/hook', events: ['*'] });
  const webhookToDelete = await api.services.webhooks.create(acme.org.id, { url: 'https://203.0.113.11/hook', events: ['*'] });
  await api.services.webhooks.ping(acme.org.id, webhook.webhook.id);
  // Usage, addresses and an event as the collector would write them, so list items are not empty.
  const org_id = acme.org.id;
  const key_id = reader.key.id;
  await db('api_key_usage').insert({
    org_id,
    key_id,
    request_count: 3,
    ok_count: 2,
    forbidden_count: 1,
    last_used_at: new Date(START),
    last_used_ip: '192.0.2.1',
  });
  await db('api_key_recent_ips').insert({ org_id, key_id, ip: '192.0.2.1', first_seen: new Date(START - DAY), last_seen: new Date(START), request_count: 3 });
  await db('api_key_usage_hourly').insert({ org_id, key_id, hour: new Date(START - 3_600_000), request_count: 3, ok_count: 2, forbidden_count: 1 });
  await db('key_events').insert({
    org_id,
    key_id,
    type: 'key.new_ip',
    occurred_at: new Date(START),
    details: { ip: '192.0.2.1' },
    dedupe_key: 'contract-test',
  });
  // Two days on, every key but the admin's is dormant for revoke-dormant's dry run.
  clock.now += 2 * DAY;
  return {
    db,
    api,
    orgId: acme.org.id,
    otherOrgId: globex.org.id,
    plaintexts: { admin: acme.adminKey, reader: reader.plaintext, writer: writer.plaintext, previousSecret: inGrace.plaintext },
    ids: {
      keyId: reader.key.id,
      rotateTarget: rotateTarget.key.id,
      revokeTarget: revokeTarget.key.id,
      revoked: revoked.key.id,
      webhookId: webhook.webhook.id,
      webhookToDelete: webhookToDelete.webhook.id,
    },
  };
}

function responseValidator() {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(document, DOC_ID);
  const seen = new Set<string>();

  function check(t: Test, template: string, method: string, response: TestResponse, label: string) {
    seen.add(`${method} ${template} ${response.status}`);
    const declared = document.paths[template]?.[method]?.responses?.[String(response.status)];
    if (!t.ok(declared, `${label}: ${response.status} is documented for ${method.toUpperCase()} ${template} (${response.text.slice(0, 200)})`)) return;
    const pointer: string = declared.$ref ? declared.$ref.slice(1) : `/paths/${escapePointer(template)}/${method}/responses/${response.status}`;
    if (!resolvePointer(document, pointer).content) {
      t.equal(response.text, '', `${label}: no body`);
      return;
    }
    for (const name of Object.keys(resolvePointer(document, pointer).headers ?? {})) {
      t.ok(response.headers.get(name), `${label}: the ${name} header the document declares is sent`);
    }
    const content = resolvePointer(document, pointer).content;
    if (content['text/csv']) {
      t.match(response.headers.get('content-type'), /^text\/csv; charset=utf-8$/, `${label}: CSV`);
      t.match(response.text, /^id,name,owner,.*\r\n/, `${label}: the header line first`);
      return;
    }
    t.match(response.headers.get('content-type'), /^application\/json/, `${label}: JSON`);
    const validate = ajv.getSchema(`${DOC_ID}#${pointer}/content/application~1json/schema`)!;
    const valid = validate(response.body);
    t.ok(valid, `${label}: the body matches the document${valid ? '' : `: ${ajv.errorsText(validate.errors)}`}`);
  }
  return { check, seen };
}

type World = Awaited<ReturnType<typeof buildWorld>>;

function urlOf(world: World, template: string, ids: Record<string, string> = {}, query = ''): string {
  const values: Record<string, string> = { id: world.orgId, keyId: world.ids.keyId, webhookId: world.ids.webhookId, ...ids };
  return template.replace(/\{(\w+)\}/g, (_match, name: string) => values[name]) + (query ? `?${query}` : '');
}

// Each refusal an operation documents, provoked for real.
async function refusals(t: Test, world: World, operationId: string, check: ReturnType<typeof responseValidator>['check']) {
  const { template, contract } = contracts.get(operationId)!;
  const { api, plaintexts } = world;
  const method = contract.method;
  const success = SUCCESS[operationId];
  // A documented status is not enough: each refusal must be the one its cause names.
  const call = (
    label: string,
    expected: ErrorCode,
    init: { key?: string; ids?: Record<string, string>; query?: string; body?: unknown; headers?: Record<string, string> },
  ) =>
    api
      .request(method.toUpperCase(), urlOf(world, template, { ...resolveIds(world, success.ids), ...init.ids }, init.query ?? success.query), {
        key: init.key,
        body: init.body ?? success.body,
        headers: init.headers,
      })
      .then((response) => {
        check(t, template, method, response, label);
        t.equal(response.body?.error?.code, expected, `${label}: ${expected}`);
      });
  const auth = contract.auth;
  if (auth) await call('no key', 'unauthorized', {});
  for (const scope of auth?.scopes ?? [])
    await call(`a key without ${scope}`, 'forbidden', { key: scope === 'keys:write' ? plaintexts.reader : plaintexts.writer });
  if (auth?.currentSecret) await call('the previous secret', 'stale_secret', { key: plaintexts.previousSecret });
  if (auth?.orgParam) await call('another org', 'not_found', { key: plaintexts.admin, ids: { id: world.otherOrgId } });
  const params = Object.keys(contract.params?.shape ?? {});
  const last = params[params.length - 1];
  if (last) await call(`${last} not a UUID`, 'invalid_request', { key: plaintexts.admin, ids: { [last]: 'not-a-uuid' } });
  if (last && last !== 'id') await call(`an unknown ${last}`, 'not_found', { key: plaintexts.admin, ids: { [last]: '00000000-0000-4000-8000-000000000000' } });
  // Every keyed route: a route without a query refuses one too (validation.ts, noQuery).
  if (auth || contract.query) await call('an unknown query parameter', 'invalid_request', { key: plaintexts.admin, query: 'bogus=1' });
  if (contract.body) {
    await call('an unknown body field', 'invalid_request', { key: plaintexts.admin, body: { bogus: 1 } });
    // Above every route's limit (revoke-dormant's is 512 kB, for 10,000 key ids).
    await call('a body too large', 'payload_too_large', { key: plaintexts.admin, body: { padding: 'x'.repeat(600_000) } });
    // The helper sends JSON; a plain-text body needs fetch.
    const url = api.baseUrl + urlOf(world, template, resolveIds(world, success.ids));
    const plain = await fetch(url, {
      method: method.toUpperCase(),
      headers: { authorization: `Bearer ${plaintexts.admin}`, 'content-type': 'text/plain' },
      body: 'hello',
    });
    const text = await plain.text();
    const body = JSON.parse(text);
    check(t, template, method, { status: plain.status, headers: plain.headers, text, body }, 'a text/plain body');
    t.equal(body.error?.code, 'unsupported_media_type', 'a text/plain body: unsupported_media_type');
  }
}

const resolveIds = (world: World, ids: Record<string, keyof World['ids']> = {}) =>
  Object.fromEntries(Object.entries(ids).map(([name, which]) => [name, world.ids[which]]));

t.test('every response of every route matches the document', async (t) => {
  const world = await buildWorld(t);
  const { check, seen } = responseValidator();
  t.same(Object.keys(SUCCESS).sort(), [...contracts.keys()].sort(), 'every operation has a success case here');

  for (const operationId of contracts.keys()) {
    await t.test(operationId, async (t) => {
      await refusals(t, world, operationId, check);
      const { template, contract } = contracts.get(operationId)!;
      const success = SUCCESS[operationId];
      const response = await world.api.request(contract.method.toUpperCase(), urlOf(world, template, resolveIds(world, success.ids), success.query), {
        key: contract.auth ? world.plaintexts.admin : undefined,
        body: success.body,
      });
      t.equal(response.status, Number(Object.keys(contract.responses)[0]), 'succeeds');
      check(t, template, contract.method, response, 'success');
      if (operationId === 'openApiDocument') t.same(response.body, document, 'GET /openapi.json serves the document');
    });
  }

  await t.test('rotating a revoked key', async (t) => {
    const { template } = contracts.get('rotateApiKey')!;
    const response = await world.api.request('POST', urlOf(world, template, { keyId: world.ids.revoked }), { key: world.plaintexts.admin, body: {} });
    t.equal(response.status, 409);
    check(t, template, 'post', response, 'conflict');
  });

  await t.test('restoring a key revoked for good', async (t) => {
    const { template } = contracts.get('restoreApiKey')!;
    const response = await world.api.request('POST', urlOf(world, template, { keyId: world.ids.revoked }), { key: world.plaintexts.admin });
    t.equal(response.status, 409);
    check(t, template, 'post', response, 'conflict');
  });

  await t.test("renewing a revoked key's expiry", async (t) => {
    const { template } = contracts.get('updateApiKey')!;
    const response = await world.api.request('PATCH', urlOf(world, template, { keyId: world.ids.revoked }), {
      key: world.plaintexts.admin,
      body: { expiresAt: '2030-01-01T00:00:00Z' },
    });
    t.equal(response.status, 409);
    check(t, template, 'patch', response, 'conflict');
  });

  // A retry with the same Idempotency-Key answers the first outcome without the plaintext or the
  // secret (ApiKeyReplay, WebhookReplay); the same key for another request, 422; a malformed one, 400.
  const idempotent: Record<string, { target: () => Promise<Record<string, string>>; body: object; other: object; revealed: string }> = {
    createApiKey: { target: async () => ({}), body: { name: 'made once', scopes: ['keys:read'] }, other: { name: 'another' }, revealed: 'key' },
    rotateApiKey: {
      target: async () => ({
        keyId: (await world.api.services.apiKeys.create(world.orgId, { name: 'replayed', scopes: ['keys:read'], expiresAt: null })).key.id,
      }),
      body: { gracePeriodSeconds: 0 },
      other: { gracePeriodSeconds: 1 },
      revealed: 'key',
    },
    createWebhook: {
      target: async () => ({}),
      body: { url: 'https://203.0.113.15/hook', events: ['*'] },
      other: { url: 'https://203.0.113.16/hook' },
      revealed: 'secret',
    },
    rotateWebhookSecret: {
      target: async () => ({
        webhookId: (await world.api.services.webhooks.create(world.orgId, { url: 'https://203.0.113.17/hook', events: ['*'] })).webhook.id,
      }),
      body: { gracePeriodSeconds: 0 },
      other: { gracePeriodSeconds: 1 },
      revealed: 'secret',
    },
  };
  for (const [operation, { target: targetOf, body, other, revealed }] of Object.entries(idempotent)) {
    await t.test(`${operation} with an Idempotency-Key: a replay, another request, a malformed key`, async (t) => {
      const { template } = contracts.get(operation)!;
      const target = await targetOf();
      const send = (key: string, sent: unknown) =>
        world.api.request('POST', urlOf(world, template, target), { key: world.plaintexts.admin, body: sent, headers: { 'idempotency-key': key } });
      const first = await send(`contract-${operation}`, body);
      check(t, template, 'post', first, 'first');
      t.type(first.body[revealed], 'string', `the first answer reveals ${revealed}`);
      const replay = await send(`contract-${operation}`, body);
      t.same([replay.status, replay.body.replayed, replay.body[revealed]], [first.status, true, undefined], `a replay, without ${revealed}`);
      check(t, template, 'post', replay, 'replay');
      const reused = await send(`contract-${operation}`, { ...body, ...other });
      t.equal(reused.body.error?.code, 'idempotency_key_reused');
      check(t, template, 'post', reused, 'another request');
      const malformed = await send('', body);
      t.equal(malformed.body.error?.code, 'invalid_request');
      check(t, template, 'post', malformed, 'an empty key');
    });
  }

  await t.test('applying the dormant clean-up on an API that records no uses', async (t) => {
    const { template } = contracts.get('revokeDormantApiKeys')!;
    const untracked = await startTestApi(t, world.db, { usageTracking: false });
    const response = await untracked.request('POST', urlOf(world, template, {}), { key: world.plaintexts.admin, body: { dormantDays: 90, dryRun: false } });
    t.equal(response.status, 409);
    check(t, template, 'post', response, 'conflict');
  });

  const overCaps = [
    { operation: 'createApiKey', cap: 'KEYS_MAX_PER_ORG', body: { name: 'one too many', scopes: ['keys:read'] } },
    { operation: 'createWebhook', cap: 'WEBHOOKS_MAX_PER_ORG', body: { url: 'https://203.0.113.12/hook', events: ['*'] } },
  ];
  for (const { operation, cap, body } of overCaps) {
    await t.test(`${operation} beyond ${cap}`, async (t) => {
      const { template } = contracts.get(operation)!;
      const capped = await startTestApi(t, world.db, { env: { [cap]: '1' } });
      const response = await capped.request('POST', urlOf(world, template, {}), { key: world.plaintexts.admin, body });
      t.equal(response.status, 409);
      check(t, template, 'post', response, 'conflict');
    });
  }

  await t.test("a ping while 10 of the webhook's pings are pending", async (t) => {
    const { template } = contracts.get('pingWebhook')!;
    const webhook = await world.api.services.webhooks.create(world.orgId, { url: 'https://203.0.113.13/hook', events: ['*'] });
    for (let i = 0; i < 10; i += 1) await world.api.services.webhooks.ping(world.orgId, webhook.webhook.id);
    const response = await world.api.request('POST', urlOf(world, template, { webhookId: webhook.webhook.id }), { key: world.plaintexts.admin });
    t.equal(response.status, 409);
    check(t, template, 'post', response, 'conflict');
  });

  await t.test("rotating a webhook's secret with a grace period while an earlier one's is open", async (t) => {
    const { template } = contracts.get('rotateWebhookSecret')!;
    const webhook = await world.api.services.webhooks.create(world.orgId, { url: 'https://203.0.113.14/hook', events: ['*'] });
    await world.api.services.webhooks.rotateSecret(world.orgId, webhook.webhook.id, { graceSeconds: 60 });
    const response = await world.api.request('POST', urlOf(world, template, { webhookId: webhook.webhook.id }), {
      key: world.plaintexts.admin,
      body: { gracePeriodSeconds: 60 },
    });
    t.equal(response.status, 409);
    check(t, template, 'post', response, 'conflict');
  });

  await t.test('too many failed attempts, an unexpected error, an unreachable database', async (t) => {
    const throttled = await startTestApi(t, world.db, { env: { AUTH_THROTTLE_MAX_FAILURES_PER_IP: '1' } });
    const whoami = '/api/whoami';
    await throttled.request('GET', whoami, { key: 'not-a-key' });
    const tooMany = await throttled.request('GET', whoami, { key: 'not-a-key' });
    t.equal(tooMany.status, 429);
    check(t, whoami, 'get', tooMany, 'throttled');

    const unreachable = createDb('postgres://nobody@127.0.0.1:1/none', { connectTimeoutMs: 1000 });
    t.teardown(() => unreachable.destroy());
    const down = await startTestApi(t, unreachable);
    const health = await down.request('GET', '/healthz');
    t.equal(health.status, 503);
    check(t, '/healthz', 'get', health, 'database down');
    const unavailable = await down.request('GET', whoami, { key: world.plaintexts.admin });
    t.equal(unavailable.status, 503);
    check(t, whoami, 'get', unavailable, 'database down');

    // A key the verifier has not cached must be looked up, and the pool is gone: not an outage the client can wait out.
    const { db: doomed } = await freshDatabase(t);
    const crashing = await startTestApi(t, doomed);
    const { adminKey } = await seedOrg(crashing, doomed, 'doomed');
    await doomed.destroy();
    const crashed = await crashing.request('GET', whoami, { key: adminKey });
    t.equal(crashed.status, 500);
    check(t, whoami, 'get', crashed, 'unexpected error');
  });

  // Every documented status was seen for real, but the server-side failures, provoked above on one route.
  const missing = [...operations(document)].flatMap(({ template, method, operation }) =>
    Object.keys(operation.responses)
      .filter((status) => !['429', '500', '503'].includes(status))
      .map((status) => `${method} ${template} ${status}`)
      .filter((case_) => !seen.has(case_)),
  );
  t.same(missing, [], 'every documented status of every route was exercised');
});
