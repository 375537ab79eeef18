import { randomBytes, randomUUID } from 'node:crypto';
import { freeTcpPort } from '../scripts/lib/freePort';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { UNAUTHORIZED_MESSAGE } from '../api/errors';
import { SCOPES } from '../api/keys/scopes';
import { embeddedClusterRunning, main, openDatabase, runCli, stdio as cliStdio, USAGE, type CliDeps } from '../scripts/cli';
import { main as migrateMain, migrate, stdio as migrateStdio, USAGE as MIGRATE_USAGE } from '../scripts/migrate';
import { loadConfig } from '../shared/config';
import { createDb, MIGRATIONS_DIRECTORY, type Db } from '../shared/db';
import { startLocalPostgres } from '../scripts/lib/localPostgres';
import { mintDemoTrafficKey } from '../scripts/lib/demoTrafficKey';
import { parsePresentedKey } from '../api/keys/keyMaterial';
import { insertKeys } from '../bench/lib/database';
import { startTestApi } from './helpers/api';
import { emptyDatabase, freshDatabase, migrateDownTo } from './helpers/database';

// Every migration the repository holds, in the order knex applies them.
const MIGRATIONS = fs
  .readdirSync(MIGRATIONS_DIRECTORY)
  .filter((name) => name.endsWith('.ts'))
  .sort();

const KEY = /ku_[0-9a-f]{32}_[0-9A-Za-z]{49}/g;
const ONCE = /shown only once/;

// runCli in-process, with its output captured line by line.
function cli(db: Db, pepper: string, now: () => number = Date.now, usageSettings?: CliDeps['usageSettings']) {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    run: (...argv: string[]) => runCli(argv, { db, pepper, now, usageSettings, out: (text) => out.push(text), err: (text) => err.push(text) }),
    reset() {
      out.length = 0;
      err.length = 0;
    },
    json: () => JSON.parse(out.join('\n')),
  };
}

async function setup(t: Test) {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { KEY_CACHE_TTL_MS: '0' } });
  return { db, url, api, cli: cli(db, api.config.api.keyPepper, Date.now, api.config.api) };
}

const count = async (db: Db, table: string) => Number((await db(table).count({ n: '*' }))[0].n);

// Every stored hash, in the forms a careless print could take.
async function storedHashForms(db: Db): Promise<string[]> {
  const rows = await db('api_keys').select('secret_hash', 'previous_secret_hash');
  return rows
    .flatMap((row) => [row.secret_hash, row.previous_secret_hash])
    .filter((hash): hash is Buffer => Buffer.isBuffer(hash))
    .flatMap((hash) => [hash.toString('hex'), hash.toString('base64'), hash.toString('base64url')]);
}

t.test('org create prints the org and a working key with every scope, once', async (t) => {
  const { db, api, cli } = await setup(t);
  t.equal(await cli.run('org', 'create', 'Acme Inc'), 0);
  t.same(cli.err, []);
  const text = cli.out.join('\n');
  const keys = text.match(KEY) ?? [];
  t.equal(keys.length, 1, 'the plaintext key appears exactly once');
  t.match(text, ONCE, 'with the warning that it is shown only once');
  const org = await db('organizations').first();
  t.equal(org.name, 'Acme Inc');
  t.match(text, org.id);

  for (const header of ['bearer', 'x-api-key'] as const) {
    const whoami = await api.request('GET', '/api/whoami', { key: keys[0], header });
    t.equal(whoami.status, 200, `the key works as ${header}`);
    t.same(whoami.body.scopes, [...SCOPES]);
    t.equal(whoami.body.orgId, org.id);
  }
  t.same(
    api.uses.map((use) => use.outcome),
    ['ok', 'ok'],
  );
  for (const form of await storedHashForms(db)) t.notMatch(text, form, 'no stored hash is printed');
});

// An access review from a script read the API's usage.csv with curl and an admin key; the CLI
// writes the same report from the database, with no key to hand out.
t.test("key report writes the API's usage.csv of the org: every key, CRLF lines, the dormant days, no key material", async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org, key } = cli.json() as { org: { id: string }; key: { key: string } };
  await cli.run('org', 'create', 'globex');
  for (const name of ['=ci', 'deploys']) await cli.run('key', 'create', org.id, '--name', name, '--scopes', 'keys:read', '--owner', 'platform team');
  await db('api_keys')
    .where({ org_id: org.id, name: 'deploys' })
    .update({ created_at: new Date(Date.now() - 40 * 86_400_000) });
  cli.reset();
  t.equal(await cli.run('key', 'report', org.id), 0);
  t.same(cli.err, []);
  const printed = `${cli.out.join('\n')}\n`;
  const fromApi = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage.csv`, { key: key.key });
  t.equal(fromApi.status, 200);
  t.equal(printed, fromApi.text, "the API's report, byte for byte");
  const lines = printed.split('\r\n');
  t.same(
    lines.map((line) => line.split(',')[1]),
    ['name', 'deploys', 'admin', "'=ci", undefined],
    'a header, the three keys oldest first (the formula guarded), CRLF after each line, no other org',
  );
  const dormantColumn = lines[0].split(',').indexOf('dormant');
  t.equal(lines[1].split(',')[dormantColumn], 'true', 'unused for 40 days: dormant at the default 30');
  cli.reset();
  t.equal(await cli.run('key', 'report', org.id, '--days', '50'), 0);
  t.equal(cli.out.join('\n').split('\r\n')[1].split(',')[dormantColumn], 'false', 'not with --days 50');
  t.notMatch(printed, KEY, 'no plaintext key');
  for (const form of await storedHashForms(db)) t.notMatch(printed, form, 'no stored hash');
  cli.reset();
  const nobody = randomUUID();
  t.equal(await cli.run('key', 'report', nobody), 1, 'an unknown org exits 1');
  t.same(cli.out, [], 'nothing on stdout');
  t.match(cli.err.join('\n'), /^error: .*organization/i);
});

t.test("key report's filters give the API's usage.csv with the same filters, byte for byte", async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org, key } = cli.json() as { org: { id: string }; key: { key: string } };
  await cli.run('key', 'create', org.id, '--name', 'deploys', '--scopes', 'keys:read', '--owner', 'platform team');
  cli.reset();
  await cli.run('key', 'create', org.id, '--name', 'ci', '--scopes', 'keys:read', '--owner', 'platform team', '--json');
  const ci = (cli.json() as { id: string }).id;
  await cli.run('key', 'create', org.id, '--name', 'billing', '--scopes', 'keys:read', '--owner', 'finance');
  t.equal(await cli.run('key', 'revoke', org.id, ci), 0);
  await db('api_keys')
    .where({ org_id: org.id, name: 'deploys' })
    .update({ created_at: new Date(Date.now() - 40 * 86_400_000) });
  const names = (csv: string) =>
    csv
      .split('\r\n')
      .slice(1, -1)
      .map((line) => line.split(',')[1]);
  const cases: Array<[string[], string, string[]]> = [
    [['--dormant'], 'dormant=true', ['deploys']],
    [['--status', 'revoked'], 'status=revoked', ['ci']],
    [['--owner', 'platform team'], 'owner=platform%20team', ['deploys', 'ci']],
    [['--contains', 'BILL'], 'q=BILL', ['billing']],
    [['--status', 'active', '--owner', 'platform team', '--days', '50'], 'status=active&owner=platform%20team&dormantDays=50', ['deploys']],
  ];
  for (const [options, query, expected] of cases) {
    cli.reset();
    t.equal(await cli.run('key', 'report', org.id, ...options), 0, options.join(' '));
    const printed = `${cli.out.join('\n')}\n`;
    const fromApi = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage.csv?${query}`, { key: key.key });
    t.equal(fromApi.status, 200);
    t.equal(printed, fromApi.text, `${options.join(' ')}: the API's report with ${query}`);
    t.same(names(printed), expected, options.join(' '));
  }
  cli.reset();
  t.equal(await cli.run('key', 'report', org.id, '--status', 'paused'), 2);
  t.match(cli.err.join('\n'), /--status: must be active, expired, revoked/);
});

t.test('org create --json', async (t) => {
  const { db, api, cli } = await setup(t);
  t.equal(await cli.run('org', 'create', 'acme', '--json'), 0);
  const printed = cli.json();
  t.same(Object.keys(printed).sort(), ['key', 'org']);
  t.same(Object.keys(printed.org).sort(), ['createdAt', 'id', 'name']);
  t.match(printed.org, { name: 'acme', id: /^[0-9a-f-]{36}$/ });
  t.equal(new Date(printed.org.createdAt).toISOString(), printed.org.createdAt);
  t.match(printed.key, {
    orgId: printed.org.id,
    name: 'admin',
    scopes: [...SCOPES],
    status: 'active',
    expiresAt: null,
    revokedAt: null,
    key: /^ku_[0-9a-f]{32}_[0-9A-Za-z]{49}$/,
  });
  t.equal(printed.key.displayPrefix, printed.key.key.slice(0, 11));
  t.notOk('secretHash' in printed.key, 'no hash field');
  t.equal(cli.err.length, 1);
  t.match(cli.err[0], ONCE, 'the once-only warning goes to stderr, keeping stdout pure JSON');

  const whoami = await api.request('GET', '/api/whoami', { key: printed.key.key, header: 'x-api-key' });
  t.same(whoami.body, { keyId: printed.key.id, orgId: printed.org.id, name: 'admin', scopes: [...SCOPES] });
  const stored = await db('api_keys').where({ id: printed.key.id }).first();
  t.equal(stored.org_id, printed.org.id);
  for (const form of await storedHashForms(db)) t.notMatch(cli.out.join('\n'), form);
});

t.test('org list', async (t) => {
  const { cli } = await setup(t);
  t.equal(await cli.run('org', 'list'), 0);
  t.match(cli.out.join('\n'), /No organizations yet/);
  cli.reset();
  t.equal(await cli.run('org', 'list', '--json'), 0);
  t.same(cli.json(), []);
  cli.reset();

  await cli.run('org', 'create', 'first', '--json');
  const first = cli.json().org;
  cli.reset();
  await cli.run('org', 'create', 'second', '--json');
  const second = cli.json().org;
  cli.reset();

  t.equal(await cli.run('org', 'list', '--json'), 0);
  t.same(cli.json(), [first, second], 'oldest first');
  cli.reset();
  t.equal(await cli.run('org', 'list'), 0);
  const lines = cli.out.join('\n').split('\n');
  t.match(lines[0], /^ID\s+NAME\s+CREATED$/);
  t.match(lines[1], new RegExp(`^${first.id}\\s+first\\s+${first.createdAt}$`));
  t.match(lines[2], new RegExp(`^${second.id}\\s+second\\s+`));
  t.equal(lines.length, 3);
});

t.test('key create, list and revoke', async (t) => {
  const now = Date.now();
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org, key: admin } = cli.json();
  cli.reset();

  const expiresAt = new Date(now + 86_400_000).toISOString();
  t.equal(
    await cli.run('key', 'create', org.id, '--name', 'ci deploys', '--scopes', 'keys:read, keys:read', '--expires-at', expiresAt, '--owner', 'platform team'),
    0,
  );
  const text = cli.out.join('\n');
  const [plaintext, ...more] = text.match(KEY) ?? [];
  t.same(more, [], 'the key is printed once');
  t.match(text, ONCE);
  t.match(text, /scopes:\s+keys:read\n/, 'duplicate scopes collapse');
  t.match(text, `expires at: ${expiresAt}`);
  t.match(text, /owner:\s+platform team\n/, 'the owner given is shown');
  const readOnly = await api.request('GET', '/api/whoami', { key: plaintext });
  t.same(readOnly.body.scopes, ['keys:read']);
  t.equal(readOnly.body.name, 'ci deploys');
  const refused = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: plaintext, body: { name: 'x', scopes: ['keys:read'] } });
  t.equal(refused.status, 403, 'the scopes given are the scopes enforced');
  cli.reset();

  t.equal(await cli.run('key', 'create', org.id, '--name', 'writer', '--scopes', 'keys:write', '--json'), 0);
  const writer = cli.json();
  t.match(writer, { orgId: org.id, name: 'writer', owner: null, scopes: ['keys:write'], expiresAt: null, status: 'active', key: /^ku_/ });
  t.match(cli.err.join('\n'), ONCE);
  cli.reset();

  t.equal(await cli.run('key', 'list', org.id, '--json'), 0);
  const listed = cli.json();
  t.same(
    listed.map((key: { name: string; owner: string | null }) => [key.name, key.owner]),
    [
      ['admin', null],
      ['ci deploys', 'platform team'],
      ['writer', null],
    ],
  );
  const { key: writerKey, ...writerView } = writer;
  t.same(listed[2], writerView, 'the same view as at creation, without the plaintext');
  t.notOk(
    listed.some((key: object) => 'key' in key || 'secretHash' in key),
    'neither plaintext nor hash is listed',
  );
  cli.reset();

  t.equal(await cli.run('key', 'revoke', org.id, writer.id), 0);
  t.match(cli.out.join('\n'), new RegExp(`Revoked API key ${writer.id} \\("writer"\\)`));
  const afterRevoke = await api.request('GET', '/api/whoami', { key: writerKey });
  t.same([afterRevoke.status, afterRevoke.body.error.message], [401, UNAUTHORIZED_MESSAGE], 'a revoked key is refused');
  cli.reset();

  t.equal(await cli.run('key', 'revoke', org.id, writer.id, '--json'), 0, 'revoking twice is harmless');
  const revoked = cli.json();
  t.match(revoked, { id: writer.id, status: 'revoked', revokedAt: /^\d{4}-/ });
  cli.reset();

  t.equal(await cli.run('key', 'list', org.id), 0);
  const lines = cli.out.join('\n').split('\n');
  t.match(lines[0], /^ID\s+PREFIX\s+NAME\s+OWNER\s+SCOPES\s+STATUS\s+CREATED\s+EXPIRES$/);
  t.equal(lines.length, 4);
  t.match(lines[1], new RegExp(`^${admin.id}\\s+${admin.displayPrefix}\\s+admin\\s+-\\s+keys:read,keys:write\\s+active\\s+\\S+\\s+-$`));
  t.match(lines[2], new RegExp(`ci deploys\\s+platform team\\s+keys:read\\s+active\\s+\\S+\\s+${expiresAt}$`));
  t.match(lines[3], new RegExp(`^${writer.id}\\s+.*writer\\s+-\\s+keys:write\\s+revoked`));

  const allOutput = [...cli.out, ...cli.err].join('\n');
  for (const form of await storedHashForms(db)) t.notMatch(allOutput, form, 'no stored hash is printed');
});

// An operator at the database could set a key's owner at its creation only.
t.test('key update: renames a key and names or clears its owner, audited as the CLI; refusals', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  const key = await api.services.apiKeys.create(org.id, { name: 'nightly', scopes: ['keys:read'], expiresAt: null });
  const stored = () => db('api_keys').where({ id: key.key.id }).first('name', 'owner');
  cli.reset();

  t.equal(await cli.run('key', 'update', org.id, key.key.id, '--name', 'nightly export', '--owner', 'data team'), 0);
  t.same(cli.out, [`API key ${key.key.id} is now "nightly export", owner "data team".`]);
  t.same(await stored(), { name: 'nightly export', owner: 'data team' });
  const audit = await db('audit_log').where({ target_key_id: key.key.id, action: 'key.update' }).first('actor_type', 'details');
  t.strictSame(
    audit,
    { actor_type: 'cli', details: { name: { from: 'nightly', to: 'nightly export' }, owner: { from: null, to: 'data team' } } },
    'audited as the CLI',
  );
  cli.reset();

  t.equal(await cli.run('key', 'update', org.id, key.key.id, '--no-owner', '--json'), 0);
  t.match(cli.json(), { id: key.key.id, name: 'nightly export', owner: null });
  t.same(await stored(), { name: 'nightly export', owner: null }, '--no-owner clears it, the name left');
  cli.reset();

  const refusals: Array<[string[], RegExp]> = [
    [[], /give --name, --owner or --no-owner/],
    [['--owner', 'x', '--no-owner'], /--owner and --no-owner: give one/],
    [['--owner', ' '], /--owner: must not be empty/],
    [['--name', 'evil\x1b[2J'], /--name: must not contain control characters/],
    [['--expires-at', 'never'], /--expires-at does not apply/],
  ];
  for (const [options, problem] of refusals) {
    t.equal(await cli.run('key', 'update', org.id, key.key.id, ...options), 2, options.join(' ') || 'no field');
    t.match(cli.err.join('\n'), problem);
    cli.reset();
  }
  t.equal(await cli.run('key', 'update', org.id, randomUUID(), '--name', 'x'), 1, 'an unknown key');
  t.same(await stored(), { name: 'nightly export', owner: null }, 'nothing changed by the refusals');
});

// key.expiring warned an operator who could renew a key only through the API (or make a new one,
// losing its id, usage history and networks).
t.test('key renew: a new expiry for an active key, never, and refusals', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  const soon = new Date(Date.now() + 3_600_000);
  const key = await api.services.apiKeys.create(org.id, { name: 'nightly', scopes: ['keys:read'], expiresAt: soon });
  const later = new Date(Date.now() + 30 * 86_400_000).toISOString();
  cli.reset();

  t.equal(await cli.run('key', 'renew', org.id, key.key.id, '--expires-at', later), 0);
  t.equal(cli.out[0], `API key ${key.key.id} ("nightly") now expires at ${later}.`);
  t.equal((await db('api_keys').where({ id: key.key.id }).first('expires_at')).expires_at.toISOString(), later, 'stored');
  const audit = await db('audit_log').where({ target_key_id: key.key.id, action: 'key.update' }).first('actor_type', 'details');
  t.strictSame(audit, { actor_type: 'cli', details: { expiresAt: { from: soon.toISOString(), to: later } } }, 'audited as the CLI');
  t.equal((await api.request('GET', '/api/whoami', { key: key.plaintext })).status, 200, 'the key works');
  cli.reset();

  t.equal(await cli.run('key', 'renew', org.id, key.key.id, '--expires-at', 'never', '--json'), 0);
  t.match(cli.json(), { id: key.key.id, expiresAt: null, status: 'active' });
  cli.reset();

  t.equal(await cli.run('key', 'renew', org.id, key.key.id), 2, '--expires-at is required');
  t.match(cli.err.join('\n'), /--expires-at is required/);
  cli.reset();
  t.equal(await cli.run('key', 'renew', org.id, key.key.id, '--expires-at', '2001-01-01T00:00:00Z'), 2);
  t.match(cli.err.join('\n'), /--expires-at: must be in the future/);
  cli.reset();

  await cli.run('key', 'revoke', org.id, key.key.id);
  cli.reset();
  t.equal(await cli.run('key', 'renew', org.id, key.key.id, '--expires-at', later), 1, 'a revoked key is not renewed');
  t.match(cli.err.join('\n'), /a revoked key cannot be renewed; create a new key/);
  t.equal((await db('api_keys').where({ id: key.key.id }).first('expires_at')).expires_at, null, 'unchanged');
  cli.reset();
  t.equal(await cli.run('key', 'renew', org.id, randomUUID(), '--expires-at', later), 1, 'an unknown key');
});

t.test('key revoke-dormant: a dry run, then --apply selects again and revokes what it finds', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  const old = new Date(Date.now() - 100 * 86_400_000);
  const unused = (await api.services.apiKeys.create(org.id, { name: 'unused', owner: 'data team', scopes: ['keys:read'], expiresAt: null })).key.id;
  const fresh = (await api.services.apiKeys.create(org.id, { name: 'fresh', scopes: ['keys:read'], expiresAt: null })).key.id;
  await db('api_keys').where({ org_id: org.id }).whereNot({ id: fresh }).update({ created_at: old });
  await db('api_key_usage').insert({ org_id: org.id, key_id: fresh, request_count: 1, last_used_at: new Date() }); // uses are recorded
  cli.reset();

  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90'), 0);
  const text = cli.out.join('\n');
  t.match(text, /^Would revoke \(dry run; add --apply to revoke\) 2 key\(s\)/);
  t.match(text, new RegExp(`${unused}\\s+\\S+\\s+unused\\s+data team\\s+\\S+\\s+never`), 'with whom to ask');
  t.notMatch(text, fresh);
  t.equal(Number((await db('api_keys').whereNotNull('revoked_at').count({ n: '*' }))[0].n), 0, 'the dry run revoked nothing');
  cli.reset();

  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply', '--json'), 0);
  const result = cli.json();
  t.equal(result.dryRun, false);
  t.strictSame(result.keys.map((k: { name: string }) => k.name).sort(), ['admin', 'unused'], 'the CLI has no calling key to spare');
  t.ok(result.keys.every((k: { status: string }) => k.status === 'revoked'));
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id), 2, '--days is required');
  t.match(cli.err.join('\n'), /--days is required/);
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '0'), 2);
  t.match(cli.err.join('\n'), /--days: must be at least 1/);
});

t.test('key revoke-dormant --apply --key-ids: only the listed keys still dormant, inline or from a file', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  const make = async (name: string) => (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id;
  const [first, second, later] = [await make('first'), await make('second'), await make('later')];
  const age = (ids: string[]) =>
    db('api_keys')
      .whereIn('id', ids)
      .update({ created_at: new Date(Date.now() - 100 * 86_400_000) });
  await age([first, second]);
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90'), 0);
  const hint = /--apply --key-ids (\S+)$/m.exec(cli.out.join('\n'));
  t.strictSame(hint?.[1].split(',').sort(), [first, second].sort(), 'the dry run prints the ids to apply');
  await age([later]); // crossed the threshold after the dry run
  await db('api_key_usage').insert({ org_id: org.id, key_id: second, request_count: 1, last_used_at: new Date() }); // used since

  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply', '--key-ids', hint![1]), 0);
  t.match(cli.out.join('\n'), /^Revoked 1 key\(s\) of the 2 listed .*\n[\s\S]*key restore/);
  t.match(cli.out.join('\n'), /More keys are dormant than those listed: run a dry run again to see them/, 'the key that crossed the threshold is told of');
  const revoked = async () => (await db('api_keys').whereNotNull('revoked_at').pluck('id')).sort();
  t.strictSame(await revoked(), [first], 'neither the key used since nor the one that crossed the threshold unseen');

  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'keyids-')), 'ids.txt');
  t.teardown(() => fs.rmSync(path.dirname(file), { recursive: true, force: true }));
  fs.writeFileSync(file, `${later}\n${randomUUID()}\n`);
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply', '--key-ids', `@${file}`, '--json'), 0);
  t.strictSame(
    cli.json().keys.map((k: { id: string }) => k.id),
    [later],
    "a file's ids; an id of no key of the org selects nothing",
  );

  const refused = async (args: string[], code: number, message: RegExp) => {
    cli.reset();
    t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', ...args), code, args.join(' '));
    t.match(cli.err.join('\n'), message);
  };
  await refused(['--key-ids', first], 2, /--key-ids: only with --apply/);
  await refused(['--apply', '--key-ids', `${first},ku_secret`], 2, /--key-ids: "ku_secret"/);
  const pasted = `ku_${'a'.repeat(32)}_${'Sec'.repeat(16)}x`; // a whole key where an id belongs
  await refused(['--apply', '--key-ids', pasted], 2, /--key-ids: "ku_\[redacted\]"/);
  t.notMatch(cli.err.join('\n'), /Sec/, 'no character of its secret');
  await refused(['--apply', '--key-ids', ','], 2, /--key-ids: lists no key id/);
  fs.writeFileSync(file, '\n');
  await refused(['--apply', '--key-ids', `@${file}`], 1, /--key-ids @.*: lists no key id/);
  await refused(['--apply', '--key-ids', `@${file}.missing`], 1, /--key-ids: cannot read .*ENOENT/);
  t.strictSame(await revoked(), [first, later].sort(), 'nothing more revoked by the refused runs');
});

t.test('key revoke-dormant --apply where no use of the org was recorded within --days is refused without --key-ids', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  const ci = (await api.services.apiKeys.create(org.id, { name: 'ci', scopes: ['keys:read'], expiresAt: null })).key.id;
  // As where the API records no uses: every key unused since it was made, long ago, but one made
  // since (never dormant), so not every key of the org would be revoked.
  await db('api_keys')
    .where({ org_id: org.id })
    .update({ created_at: new Date(Date.now() - 100 * 86_400_000) });
  await api.services.apiKeys.create(org.id, { name: 'new', scopes: ['keys:read'], expiresAt: null });
  // An old use is no evidence that uses are recorded now.
  await db('api_key_usage').insert({ org_id: org.id, key_id: ci, request_count: 1, last_used_at: new Date(Date.now() - 95 * 86_400_000) });
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply'), 1);
  t.match(
    cli.err.join('\n'),
    /no key of organization .* has a recorded use in the last 90 days, so all 2 key\(s\) older than that look unused: check that the API records uses/,
  );
  t.equal((await db('api_keys').whereNotNull('revoked_at')).length, 0, 'nothing revoked');
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90'), 0, 'the dry run lists them');
  t.match(cli.err.join('\n'), /warning: no key of organization .* has a recorded use in the last 90 days/, 'and warns before their ids are copied');
  const ids = /--apply --key-ids (\S+)$/m.exec(cli.out.join('\n'))![1];
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply', '--key-ids', ids), 0, 'named, they are revoked');
  t.equal((await db('api_keys').whereNotNull('revoked_at')).length, 2);
});

t.test('key revoke-dormant: a dry run prints when uses may have been lost, and --apply alone is refused across it', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  const ci = (await api.services.apiKeys.create(org.id, { name: 'ci', scopes: ['keys:read'], expiresAt: null })).key.id;
  await api.services.apiKeys.create(org.id, { name: 'old', scopes: ['keys:read'], expiresAt: null });
  await db('api_keys')
    .where({ org_id: org.id })
    .update({ created_at: new Date(Date.now() - 100 * 86_400_000) });
  await db('api_key_usage').insert({ org_id: org.id, key_id: ci, request_count: 1, last_used_at: new Date() });
  const gap = { from: new Date(Date.now() - 20 * 86_400_000), to: new Date(Date.now() - 20 * 86_400_000 + 15_000) };
  await db('collector_listening_spans').insert([
    { collector: 'a', started_at: new Date(Date.now() - 95 * 86_400_000), heard_at: gap.from, lost_until: gap.to },
    { collector: 'a', started_at: gap.to, heard_at: new Date() },
  ]);
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90'), 0);
  t.strictSame(cli.err, [
    'warning: uses may have been lost 1 time(s) in the last 90 days, and a key used only then is listed here: check the collectors before applying',
    `  ${gap.from.toISOString()} to ${gap.to.toISOString()}: a collector refused uses (its aggregator or its replay cache full)`,
  ]);
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply'), 1);
  t.match(
    cli.err.join('\n'),
    /uses may have been lost 1 time\(s\) in the last 90 days \(the latest from .*: a collector refused uses\), so 2 key\(s\) used only then/,
  );
  t.equal((await db('api_keys').whereNotNull('revoked_at')).length, 0, 'nothing revoked');

  cli.reset();
  t.equal(await cli.run('collector', 'spans', '--days', '30'), 0);
  t.match(
    cli.out.join('\n'),
    /Collector spans heard in the last 30 days; tracked since .*\nCOLLECTOR +STARTED +LAST HEARD\s*\na +\S+ +\S+ *\na +\S+ +\S+ +refused uses by \S+\n/,
  );
  t.equal(cli.out.at(-1), `  ${gap.from.toISOString()} to ${gap.to.toISOString()}: a collector refused uses (its aggregator or its replay cache full)`);
  cli.reset();
  t.equal(await cli.run('collector', 'spans', '--days', '10', '--json'), 0);
  t.strictSame([cli.json().spans.length, cli.json().gaps], [1, []], 'the gap 20 days ago is outside 10 days');
  t.equal(await cli.run('collector', 'spans', '--days', 'x'), 2, 'a bad --days is a usage error');
});

// An org whose admin key was used just now (uses are recorded), a CLI at a fixed clock, and keys
// made unused for 100 days, dormant for --days 90.
async function dormantWorld(t: Test) {
  const { db, api, cli: plain } = await setup(t);
  await plain.run('org', 'create', 'acme', '--json');
  const { org, key: admin } = plain.json();
  const now = Date.now();
  await db('api_key_usage').insert({ org_id: org.id, key_id: admin.id, request_count: 1, last_used_at: new Date(now) });
  const idleKey = async (name: string, expiresAt: Date | null = null) => {
    const made = await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt });
    await db('api_keys')
      .where({ id: made.key.id })
      .update({ created_at: new Date(now - 100 * 86_400_000) });
    return { id: made.key.id, plaintext: made.plaintext };
  };
  const stored = (id: string) => db('api_keys').where({ id }).first('revoked_at', 'restorable_until', 'restored_at');
  const whoami = async (plaintext: string) => (await api.request('GET', '/api/whoami', { key: plaintext })).status;
  const cliAt = (at: number) => cli(db, api.config.api.keyPepper, () => at);
  return { db, org, admin, now, idleKey, stored, whoami, cliAt, cli: cliAt(now) };
}

t.test('key restore: a key the clean-up revoked works again, as it was; the dry run and the apply say until when, and how', async (t) => {
  const { db, org, admin, now, idleKey, stored, whoami, cli } = await dormantWorld(t);
  const idle = await idleKey('idle');
  const until = new Date(now + 30 * 86_400_000).toISOString();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90'), 0);
  t.match(cli.out.join('\n'), `An apply now leaves them restorable until ${until} (--restorable-days <n> to change it; 0: revoked for good).`);
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply'), 0);
  t.match(cli.out.join('\n'), `Each can be restored, as it was, until ${until}: npm run cli -- key restore ${org.id} <keyId>.`);
  t.equal((await stored(idle.id)).restorable_until.toISOString(), until, '30 days by default');
  t.equal(await whoami(idle.plaintext), 401, 'revoked: refused');
  cli.reset();
  t.equal(await cli.run('key', 'list', org.id), 0);
  t.match(
    cli.out.join('\n'),
    new RegExp(`^${idle.id}\\s+\\S+\\s+idle\\s+-\\s+keys:read\\s+revoked \\(restorable until ${until}\\)`, 'm'),
    'key list says until when',
  );
  cli.reset();

  t.equal(await cli.run('key', 'restore', org.id, idle.id), 0);
  t.same(cli.out, [
    `Restored API key ${idle.id} ("idle") at ${new Date(now).toISOString()}: it is active again, and its secret works again.`,
    'Running API servers accept it again within their key cache TTL (KEY_CACHE_TTL_MS, 2 s by default).',
  ]);
  t.same(cli.err, []);
  t.same(await stored(idle.id), { revoked_at: null, restorable_until: null, restored_at: new Date(now) }, 'stored as restored');
  t.equal(await whoami(idle.plaintext), 200, 'its secret works again');
  t.equal((await db('audit_log').where({ target_key_id: idle.id, action: 'key.restore' }).first('actor_type')).actor_type, 'cli', 'audited as the CLI');
  cli.reset();

  t.equal(await cli.run('key', 'restore', org.id, idle.id, '--json'), 0, 'restoring an active key changes nothing');
  t.match(cli.json(), { id: idle.id, status: 'active', revokedAt: null, restorableUntil: null, restoredAt: new Date(now).toISOString() });
  cli.reset();
  t.equal(await cli.run('key', 'restore', org.id, idle.id), 0);
  t.same(cli.out, [`API key ${idle.id} ("idle") is active: it was not revoked, there is nothing to restore.`], 'not "restored" again');
  cli.reset();
  t.equal(await cli.run('key', 'restore', org.id, admin.id), 0);
  t.same(cli.out, [`API key ${admin.id} ("admin") is active: it was not revoked, there is nothing to restore.`]);
});

t.test('key restore: a key revoked for good (--restorable-days 0, or key revoke) is refused with the reason, exit 1', async (t) => {
  const { org, now, idleKey, stored, cli } = await dormantWorld(t);
  const forGood = await idleKey('for good');
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply', '--restorable-days', '0'), 0);
  t.match(cli.out.join('\n'), 'Revoked for good (--restorable-days 0): their holders need new keys.');
  t.same(await stored(forGood.id), { revoked_at: new Date(now), restorable_until: null, restored_at: null }, 'restorable_until null');
  const refused = async (id: string) => {
    cli.reset();
    t.equal(await cli.run('key', 'restore', org.id, id), 1);
    t.same(cli.err, [
      'error: This API key cannot be restored: it was revoked for good (a single revoke, or a clean-up with restorableForDays 0); create a new key',
    ]);
    t.same(cli.out, []);
    t.equal((await stored(id)).restored_at, null, 'not restored');
  };
  await refused(forGood.id);

  const leaked = await idleKey('leaked');
  cli.reset();
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply', '--restorable-days', '7'), 0);
  t.equal((await stored(leaked.id)).restorable_until.toISOString(), new Date(now + 7 * 86_400_000).toISOString(), '--restorable-days 7');
  t.equal(await cli.run('key', 'revoke', org.id, leaked.id), 0, 'a single revoke makes it final');
  await refused(leaked.id);
});

t.test('key restore of a key that expired while revoked says its secret still fails', async (t) => {
  const { org, now, idleKey, cli, cliAt } = await dormantWorld(t);
  const expiresAt = new Date(now + 3_600_000).toISOString();
  const expiring = await idleKey('expiring', new Date(expiresAt));
  t.equal(await cli.run('key', 'revoke-dormant', org.id, '--days', '90', '--apply'), 0);
  const later = cliAt(now + 2 * 3_600_000);
  t.equal(await later.run('key', 'restore', org.id, expiring.id), 0);
  t.same(later.out, [`API key ${expiring.id} ("expiring") expired at ${expiresAt}: restored or not, its secret no longer works; create a new key.`]);
});

t.test('collector spans: before any collector of this version ran', async (t) => {
  const { cli } = await setup(t);
  t.equal(await cli.run('collector', 'spans'), 0);
  t.strictSame(cli.out, ['No collector has recorded when it listens: none of this version has run on this database.']);
});

t.test('key list of an org without keys, and a long list', async (t) => {
  const { db, cli } = await setup(t);
  const [org] = await db('organizations').insert({ name: 'empty' }).returning('*');
  t.equal(await cli.run('key', 'list', org.id), 0);
  t.same(cli.out, [`Organization ${org.id} has no API keys.`]);
  cli.reset();
  // More than one service page (200).
  await db('api_keys').insert(
    Array.from({ length: 205 }, (_, i) => ({
      id: randomUUID(),
      org_id: org.id,
      name: `bulk ${i}`,
      display_prefix: 'ku_00000000',
      secret_hash: randomBytes(32),
      scopes: ['keys:read'],
    })),
  );
  t.equal(await cli.run('key', 'list', org.id, '--json'), 0);
  t.equal(cli.json().length, 205, 'every key, across pages');
});

t.test('unknown organizations and keys give a clear error and exit 1', async (t) => {
  const { db, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const acme = cli.json();
  cli.reset();
  await cli.run('org', 'create', 'globex', '--json');
  const globex = cli.json();
  cli.reset();
  const missing = randomUUID();
  const keysBefore = await count(db, 'api_keys');

  for (const argv of [
    ['key', 'create', missing, '--name', 'x', '--scopes', 'keys:read'],
    ['key', 'list', missing],
    ['key', 'revoke', missing, acme.key.id],
  ]) {
    t.equal(await cli.run(...argv), 1, argv.slice(0, 2).join(' '));
    t.same(cli.err, [`error: organization ${missing} not found`]);
    t.same(cli.out, []);
    cli.reset();
  }
  t.equal(await count(db, 'api_keys'), keysBefore, 'no key was created');

  t.equal(await cli.run('key', 'revoke', acme.org.id, randomUUID()), 1);
  t.same(cli.err, ['error: API key not found']);
  cli.reset();
  t.equal(await cli.run('key', 'revoke', acme.org.id, globex.key.id), 1, "another org's key is not found through this org");
  t.same(cli.err, ['error: API key not found']);
  const untouched = await db('api_keys').where({ id: globex.key.id }).first();
  t.equal(untouched.revoked_at, null, 'and stays active');
});

t.test('bad usage prints the usage on stderr and exits 2 without touching the database', async (t) => {
  const { db, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const org = cli.json().org.id as string;
  cli.reset();
  const before = [await count(db, 'organizations'), await count(db, 'api_keys')];
  const yesterday = new Date(Date.now() - 86_400_000).toISOString();

  const cases: Array<[string[], RegExp]> = [
    [[], /no command given/],
    [['org'], /unknown command "org"/],
    [['frob'], /unknown command "frob"/],
    [['org', 'delete', 'acme'], /unknown command "org delete"/],
    [['org', 'create'], /org create: missing <name>/],
    [['org', 'create', 'a', 'b'], /unexpected argument "b"/],
    [['org', 'create', '   '], /<name>: must not be empty/],
    [['org', 'create', 'x'.repeat(201)], /<name>: must be at most 200 characters/],
    [['org', 'list', 'extra'], /unexpected argument "extra"/],
    [['org', 'list', '--name', 'x'], /org list: --name does not apply/],
    [['org', 'create', 'acme', '--scopes', 'keys:read'], /--scopes does not apply/],
    [['--bogus'], /Unknown option '--bogus'/],
    [['key', 'list'], /key list: missing <orgId>/],
    [['key', 'list', 'not-a-uuid'], /<orgId>: must be a UUID/],
    [['key', 'report', org, '--json'], /key report: --json does not apply \(the report is CSV\)/],
    [['key', 'report', org, '--days', '0'], /--days: must be at least 1/],
    [['key', 'report', org, '--apply'], /key report: --apply does not apply/],
    [['key', 'revoke', org], /key revoke: missing <keyId>/],
    [['key', 'revoke', org, 'nope'], /<keyId>: must be a UUID/],
    [['key', 'restore', org], /key restore: missing <keyId>/],
    [['key', 'revoke-dormant', org, '--days', '90', '--restorable-days', '7'], /--restorable-days: only with --apply \(a dry run revokes nothing\)/],
    [['key', 'revoke-dormant', org, '--days', '90', '--apply', '--restorable-days', '366'], /--restorable-days: must be at most 365/],
    [['key', 'revoke-dormant', org, '--days', '90', '--apply', '--restorable-days', '1.5'], /--restorable-days: must be a whole number/],
    [['key', 'create', org, '--scopes', 'keys:read'], /--name is required/],
    [['key', 'create', org, '--name'], /--name/],
    [['key', 'create', org, '--name', ' ', '--scopes', 'keys:read'], /--name: must not be empty/],
    [['key', 'create', org, '--name', 'x', '--scopes', 'keys:read', '--owner', ' '], /--owner: must not be empty/],
    [['key', 'create', org, '--name', 'x', '--scopes', 'keys:read', '--owner', 'o'.repeat(201)], /--owner: must be at most 200 characters/],
    [['key', 'create', org, '--name', 'x'], /--scopes is required/],
    [['key', 'create', org, '--name', 'x', '--scopes', ' , '], /--scopes: must list at least one scope/],
    [['key', 'create', org, '--name', 'x', '--scopes', 'keys:read,admin'], /unknown scope "admin" \(known: keys:read, keys:write\)/],
    [['key', 'create', org, '--name', 'x', '--scopes', 'keys:read', '--expires-at', 'tomorrow'], /--expires-at .*ISO 8601/],
    [['key', 'create', org, '--name', 'x', '--scopes', 'keys:read', '--expires-at', yesterday], /--expires-at: must be in the future/],
    [
      ['key', 'create', org, '--name', 'x', '--scopes', 'keys:read', '--expires-at', '9999-12-31T23:59:59-23:59'],
      /--expires-at .*: must be between 1970-01-01T00:00:00\.000Z and 9999-12-31T23:59:59\.999Z/,
    ],
  ];
  for (const [argv, problem] of cases) {
    const label = argv.join(' ').slice(0, 60) || '(nothing)';
    t.equal(await cli.run(...argv), 2, `${label}: exit 2`);
    t.match(cli.err.join('\n'), problem, `${label}: names the problem`);
    t.match(cli.err.join('\n'), /^error: [^]*Usage: npm run cli -- <command>/, `${label}: followed by the usage`);
    t.same(cli.out, [], `${label}: nothing on stdout`);
    cli.reset();
  }
  t.same([await count(db, 'organizations'), await count(db, 'api_keys')], before, 'nothing was written');

  for (const argv of [['help'], ['--help'], ['-h'], ['key', 'create', '--help']]) {
    t.equal(await cli.run(...argv), 0, `${argv.join(' ')} exits 0`);
    t.same(cli.out, [USAGE], 'usage on stdout');
    t.same(cli.err, []);
    cli.reset();
  }
  for (const command of [
    'org create',
    'org list',
    'key list',
    'key report',
    'key create',
    'key revoke',
    'key restore',
    'key renew',
    'key revoke-dormant',
    'collector spans',
  ])
    t.match(USAGE, command);
});

// A usage error quotes the arguments, and a key pasted in the wrong place was echoed whole.
t.test('a key pasted as a command, an extra argument or an option is never echoed by a usage error', async (t) => {
  const secret = 'S3cr'.repeat(12) + 'x';
  const key = `ku_${randomBytes(16).toString('hex')}_${secret}`;
  const cases: Array<[string, string[], RegExp]> = [
    ['as the command', [key], /^error: unknown command "ku_\[redacted\]"/],
    ['as an extra argument', ['key', 'revoke', randomUUID(), randomUUID(), key], /^error: key revoke: unexpected argument "ku_\[redacted\]"/],
    ['as an option', ['org', 'list', `--${key}`], /^error: Unknown option '--ku_\[redacted\]'/],
  ];
  for (const [label, argv, problem] of cases) {
    const { out, err, io } = captured();
    t.equal(await main(argv, {}, io), 2, `${label}: exit 2`);
    t.match(err.join('\n'), problem, `${label}: the argument is named, redacted`);
    t.notOk(err.join('\n').includes(secret), `${label}: without the secret`);
    t.same(out, [], `${label}: nothing on stdout`);
  }
});

t.test('names with control characters are refused, and any already stored cannot reach the terminal', async (t) => {
  const { db, cli } = await setup(t);
  t.equal(await cli.run('org', 'create', 'acme\x1b[2J'), 2, 'an org name with ESC is refused');
  t.match(cli.err.join('\n'), /<name>: must not contain control characters/);
  cli.reset();
  await cli.run('org', 'create', 'acme', '--json');
  const { org } = cli.json();
  cli.reset();
  t.equal(await cli.run('key', 'create', org.id, '--name', 'evil\x1b]0;owned\x07', '--scopes', 'keys:read'), 2, 'a key name with OSC is refused');
  t.match(cli.err.join('\n'), /--name: must not contain control characters/);
  t.equal(await count(db, 'api_keys'), 1, "nothing but the org's first key was stored");
  cli.reset();

  t.equal(await cli.run('key', 'create', org.id, '--name', 'x', '--owner', 'evil\x1b[2J', '--scopes', 'keys:read'), 2, 'an owner with ESC is refused');
  t.match(cli.err.join('\n'), /--owner: must not contain control characters/);
  cli.reset();

  // Rows written before names were checked (or by SQL) still print safely.
  await db('organizations').where({ id: org.id }).update({ name: 'acme\x1b[2J\u2028' });
  await db('api_keys').where({ org_id: org.id }).update({ name: 'evil\x1b]0;owned\x07', owner: 'mallory\x1b[2J' });
  await cli.run('org', 'list');
  await cli.run('key', 'list', org.id);
  const text = cli.out.join('\n');
  t.notMatch(text, /[\x00-\x09\x0b-\x1f\x7f]/, 'no control character but newlines in text output');
  t.match(text, 'evil?]0;owned?');
  t.match(text, 'acme?[2J?', 'a line separator too');
  t.notMatch(text, /[\u2028\u2029]/);
  t.match(text, 'mallory?[2J');
});

t.test('service errors print `error: <message>` and exit 1', async (t) => {
  const { db, api, cli: plain } = await setup(t);
  await plain.run('org', 'create', 'acme', '--json');
  const { org } = plain.json();
  // The CLI refuses a past expiry itself; a clock that moves on between parsing and creating
  // reaches the service's own check, an AppError.
  let clock = Date.now();
  const ticking = cli(db, api.config.api.keyPepper, () => (clock += 60_000));
  const expiresAt = new Date(clock + 90_000).toISOString();
  t.equal(await ticking.run('key', 'create', org.id, '--name', 'x', '--scopes', 'keys:read', '--expires-at', expiresAt), 1);
  t.same(ticking.err, ['error: expiresAt: must be in the future'], 'a service error, without the HTTP wording');
  t.same(ticking.out, []);
});

t.test('other failures are not swallowed', async (t) => {
  const { db, cli } = await setup(t);
  await db.destroy();
  await t.rejects(cli.run('org', 'list'), /Unable to acquire a connection/, 'a broken database rejects: main prints it and exits 1');
});

function captured() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (text: string) => out.push(text), err: (text: string) => err.push(text) } };
}

t.test("main: key report of three pages is the API's usage.csv, byte for byte", async (t) => {
  const { db, url, api } = await setup(t);
  const env = { NODE_ENV: 'test', DATABASE_URL: url };
  const { out, err, io } = captured();
  t.equal(await main(['org', 'create', 'acme', '--json'], env, io), 0);
  const { org, key } = JSON.parse(out.join('\n')) as { org: { id: string }; key: { key: string } };
  await insertKeys(db, org.id, 1203, 'bulk-');
  out.length = 0;
  err.length = 0;
  t.equal(await main(['key', 'report', org.id], env, io), 0);
  t.same(err, []);
  const fromApi = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage.csv`, { key: key.key });
  const printed = `${out.join('\n')}\n`;
  t.equal(printed.split('\r\n').length, 1 + 1204 + 1, 'the header, the admin key and 1,203 more, each line ended with CRLF');
  t.equal(printed, fromApi.text, "the API's report");
});

// The report's keyset loses its place when the last key it read is deleted before the next page:
// the lines printed are then not every key, which the exit status and stderr must say.
t.test('key report: a report that loses its place exits 1 after the page it printed, saying it is not every key', async (t) => {
  const { db, api, cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  const org = cli.json().org.id as string;
  await insertKeys(db, org, 499, 'bulk-');
  const out: string[] = [];
  const err: string[] = [];
  let flushes = 0;
  // Each page waits for the one before it to be written: the last key printed goes meanwhile.
  const flush = async () => {
    flushes += 1;
    const lastPrinted = out[out.length - 1].split('\r\n').at(-1)!.split(',')[0];
    await db('api_keys').where({ id: lastPrinted }).delete();
  };
  const deps = {
    db,
    pepper: api.config.api.keyPepper,
    now: Date.now,
    usageSettings: api.config.api,
    out: (text: string) => out.push(text),
    err: (text: string) => err.push(text),
    flush,
  };
  t.equal(await runCli(['key', 'report', org], deps), 1);
  t.equal(flushes, 1, 'the first page written, then the second read');
  t.equal(out.length, 2, 'the header and the first page of 500 keys');
  t.match(
    err.join('\n'),
    /^error: The CSV report lost its place: the last key it read was deleted meanwhile; the lines printed are not every key: run it again$/,
  );
});

t.test('main: wiring to DATABASE_URL', async (t) => {
  const { url, api } = await setup(t);
  const { out, err, io } = captured();
  t.equal(await main(['org', 'create', 'acme', '--json'], { NODE_ENV: 'test', DATABASE_URL: url }, io), 0);
  const printed = JSON.parse(out.join('\n'));
  t.equal((await api.request('GET', '/api/whoami', { key: printed.key.key })).status, 200, 'the key works with the API on the same database');
  t.match(err.join('\n'), ONCE);
  t.notMatch(err.join('\n'), /Applied/, 'an up-to-date database needs no migration');

  const help = captured();
  t.equal(await main(['help'], { DATABASE_URL: 'postgres://127.0.0.1:1/unreachable' }, help.io), 0, 'help needs no database');
  t.same(help.out, [USAGE]);
  const bad = captured();
  t.equal(await main(['org'], { DATABASE_URL: 'mysql://nope' }, bad.io), 2, 'nor does a usage error, nor the config');
  const config = captured();
  t.equal(await main(['org', 'list'], { DATABASE_URL: 'mysql://nope' }, config.io), 1);
  t.same(config.err, ['error: Invalid configuration: DATABASE_URL: must be a postgres:// URL']);
  const down = captured();
  t.equal(await main(['org', 'list'], { NODE_ENV: 'test', DATABASE_URL: 'postgres://nobody:x@127.0.0.1:1/none' }, down.io), 1);
  t.match(down.err.join('\n'), /^error: .*ECONNREFUSED/, 'an unreachable database is an error, not a crash');
});

// It printed only `error: connect ECONNREFUSED …`, where npm run migrate names the host and the variable.
t.test('main: a database it cannot reach is named by host and variable, without its password', async (t) => {
  const port = await freeTcpPort();
  const down = captured();
  t.equal(await main(['org', 'list'], { NODE_ENV: 'test', DATABASE_URL: `postgres://nobody:hunter2@127.0.0.1:${port}/none` }, down.io), 1);
  t.match(down.err, [new RegExp(`^error: cannot reach the database at 127\\.0\\.0\\.1:${port} named by DATABASE_URL: .*ECONNREFUSED`)]);
  t.notMatch(down.err.join('\n'), /hunter2/, 'the password is not echoed');
});

// A new key's secret goes to stdout once, after its transaction committed. A full disk or a closed
// pipe crashed the CLI with "Unhandled 'error' event" (skipping database.close()): the key was
// made, its secret lost, and nothing said which key to revoke.
const cliConnections = async (db: Db) =>
  Number((await db.raw(`select count(*) as n from pg_stat_activity where application_name = 'keyusage-cli' and datname = current_database()`)).rows[0].n);
const writeFailure = (code: string) => Object.assign(new Error(`${code}: the output is gone`), { code });

t.test('main: a stdout that fails after a key is created names the key to revoke, never its secret, and closes the database', async (t) => {
  const { db, url } = await freshDatabase(t);
  const env = { NODE_ENV: 'test', DATABASE_URL: url };
  const created = captured();
  t.equal(await main(['org', 'create', 'acme', '--json'], env, created.io), 0);
  const orgId = JSON.parse(created.out.join('\n')).org.id;

  for (const json of [[], ['--json']]) {
    const err: string[] = [];
    const full = {
      out: () => {
        throw writeFailure('ENOSPC');
      },
      err: (text: string) => err.push(text),
    };
    t.equal(await main(['key', 'create', orgId, '--name', `lost${json.length}`, '--scopes', 'keys:read', ...json], env, full), 1);
    const key = await db('api_keys')
      .where({ org_id: orgId, name: `lost${json.length}` })
      .first();
    t.ok(key, 'the key was created');
    t.match(
      err.join('\n'),
      new RegExp(`^error: the output could not be written \\(ENOSPC.*API key ${key.id} of organization ${orgId} was created.*key revoke ${orgId} ${key.id}`),
    );
    t.notMatch(err.join('\n'), KEY, 'no key material');
    t.equal(await cliConnections(db), 0, 'the database is closed');
  }

  // A pipe closed while the output was on its way: the write came back with EPIPE.
  const err: string[] = [];
  const closed = { out: () => {}, err: (text: string) => err.push(text), flush: () => Promise.reject(writeFailure('EPIPE')) };
  t.equal(await main(['org', 'create', 'acme2', '--json'], env, closed), 1);
  const org = await db('organizations').where({ name: 'acme2' }).first();
  const admin = await db('api_keys').where({ org_id: org.id }).first();
  t.match(
    err.join('\n'),
    new RegExp(`^error: the output could not be written \\(EPIPE.*API key ${admin.id} of organization ${org.id}.*key revoke ${org.id} ${admin.id}`, 'm'),
  );
  t.equal(await cliConnections(db), 0);

  const listErr: string[] = [];
  t.equal(
    await main(['org', 'list'], env, { out: () => {}, err: (text: string) => listErr.push(text), flush: () => Promise.reject(writeFailure('EPIPE')) }),
    1,
  );
  t.match(listErr, [/^error: the output could not be written \(EPIPE/], 'any command: a lost output is an error');
});

t.test('pepper status: the advice to drop a previous pepper names the webhooks sealed under it', async (t) => {
  const { cli } = await setup(t);
  await cli.run('org', 'create', 'acme', '--json');
  cli.reset();
  t.equal(await cli.run('pepper', 'status'), 0);
  t.match(cli.out.join('\n'), /can be removed from KEY_PEPPER_PREVIOUS once no row names it .*and no webhook made before the pepper changed.*rotate-secret/);
});

// DATABASE_URL is the app role's in production, which may not touch knex_migrations; with the
// owner's URL, a read-only command applied a release's migrations before the planned migrate.
t.test('main: a DATABASE_URL is never migrated; an unmigrated one is named as such', async (t) => {
  const url = await emptyDatabase(t);
  const { err, io } = captured();
  t.equal(await main(['org', 'list'], { NODE_ENV: 'test', DATABASE_URL: url }, io), 1);
  t.match(err.join('\n'), /^error: .*relation "organizations" does not exist \(is the schema migrated\? `npm run migrate`, as the schema owner\)$/m);
  const db = createDb(url, { poolMax: 1 });
  t.teardown(() => db.destroy());
  t.equal(await db.schema.hasTable('knex_migrations'), false, 'no migration ran');
});

// An erasure waiting for a key's row (a flush, a session left open) held its org's audit lock:
// every key and webhook change of the org failed meanwhile, for up to DATABASE_REPLY_TIMEOUT_MS
// (5 minutes), and the CLI then printed a connection error (fails without CLI_LOCK_TIMEOUT_MS).
t.test('main: a command waiting for a lock gives up after CLI_LOCK_TIMEOUT_MS, changing nothing and holding nothing', async (t) => {
  const { db, url, api } = await setup(t);
  const created = captured();
  t.equal(await main(['org', 'create', 'acme', '--json'], { NODE_ENV: 'test', DATABASE_URL: url }, created.io), 0);
  const { org, key } = JSON.parse(created.out.join('\n'));
  await db('api_key_usage').insert({ org_id: org.id, key_id: key.id, request_count: 1, last_used_ip: '198.51.100.7' });
  const holder = await db.transaction();
  t.teardown(() => holder.rollback().catch(() => undefined));
  await holder('api_key_usage').where({ key_id: key.id }).forUpdate();
  const erase = captured();
  const env = { NODE_ENV: 'test', DATABASE_URL: url, CLI_LOCK_TIMEOUT_MS: '300' };
  t.equal(await main(['key', 'erase-ips', org.id, key.id], env, erase.io), 1);
  t.match(erase.err.join('\n'), /lock timeout.*CLI_LOCK_TIMEOUT_MS passed waiting for a row or lock another session holds.*nothing was changed/s);
  const made = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: key.key, body: { name: 'meanwhile', scopes: ['keys:read'] } });
  t.equal(made.status, 201, "the org's changes go on while the row is still held: the erasure let go of the audit lock");
  await holder.rollback();
  t.equal((await db('api_key_usage').where({ key_id: key.id }).first()).last_used_ip, '198.51.100.7', 'nothing was erased');
});

// The API refused an apply without usage tracking; the CLI, run with the same environment, did not.
t.test('main: revoke-dormant --apply is refused where USAGE_TRACKING=false, as by the API', async (t) => {
  const { db, url } = await setup(t);
  const created = captured();
  t.equal(await main(['org', 'create', 'acme', '--json'], { NODE_ENV: 'test', DATABASE_URL: url }, created.io), 0);
  const orgId = JSON.parse(created.out.join('\n')).org.id;
  await db('api_keys')
    .where({ org_id: orgId })
    .update({ created_at: new Date(Date.now() - 100 * 86_400_000) });
  const env = { NODE_ENV: 'test', DATABASE_URL: url, USAGE_TRACKING: 'false' };
  const refused = captured();
  t.equal(await main(['key', 'revoke-dormant', orgId, '--days', '90', '--apply'], env, refused.io), 1);
  t.match(refused.err.join('\n'), /USAGE_TRACKING=false/);
  t.equal((await db('api_keys').where({ org_id: orgId }).whereNotNull('revoked_at')).length, 0, 'nothing revoked');
  t.equal(await main(['key', 'revoke-dormant', orgId, '--days', '90'], env, captured().io), 0, 'a dry run still lists');
});

t.test('main: the embedded PostgreSQL, started and stopped only when the CLI started it', async (t) => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-cli-'));
  fs.chmodSync(scratch, 0o711); // the CLI opens only folders it creates; this one is ours
  const env = { EMBEDDED_PG_DIR: path.join(scratch, 'pg'), EMBEDDED_PG_PORT: String(await freeTcpPort()) };
  let cluster: ReturnType<typeof startLocalPostgres> | undefined;
  t.teardown(() => {
    if (embeddedClusterRunning(env.EMBEDDED_PG_DIR))
      (cluster ?? startLocalPostgres({ dataDir: env.EMBEDDED_PG_DIR, port: Number(env.EMBEDDED_PG_PORT) })).stop();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  const first = captured();
  t.equal(await main(['org', 'create', 'acme', '--json'], env, first.io), 0, 'creates the cluster on first use');
  t.match(first.err.join('\n'), /Started the embedded PostgreSQL/);
  t.match(first.err.join('\n'), `Applied ${MIGRATIONS.length} migration(s): ${MIGRATIONS.join(', ')}`, 'and migrates it');
  const { org } = JSON.parse(first.out.join('\n'));
  t.equal(embeddedClusterRunning(env.EMBEDDED_PG_DIR), false, 'stopped again afterwards');

  cluster = startLocalPostgres({ dataDir: env.EMBEDDED_PG_DIR, port: Number(env.EMBEDDED_PG_PORT) });
  t.equal(embeddedClusterRunning(env.EMBEDDED_PG_DIR), true);
  const second = captured();
  t.equal(await main(['org', 'list', '--json'], env, second.io), 0);
  t.same(JSON.parse(second.out.join('\n')), [org], 'the data persists in the data folder');
  t.same(second.err, [], 'a running cluster is reused silently');
  t.equal(embeddedClusterRunning(env.EMBEDDED_PG_DIR), true, 'and left running: someone else started it');
  await demoTrafficMintsItsKey(t, loadConfig({ ...env, NODE_ENV: 'test' }));
  cluster.stop();
  t.match(
    await mintDemoTrafficKey(loadConfig({ ...env, NODE_ENV: 'test' })),
    { problem: /no embedded PostgreSQL running.*npm start/ },
    'demo-traffic mints nothing when no npm start runs',
  );

  // An `npm start` that connects while the CLI runs keeps its database.
  const notes: string[] = [];
  const config = loadConfig({ ...env, NODE_ENV: 'test' });
  const database = openDatabase(config, (text) => notes.push(text));
  const bystander = createDb(`${startLocalPostgres({ dataDir: env.EMBEDDED_PG_DIR, port: config.database.embeddedPort }).url}`, {
    poolMax: 1,
    applicationName: 'keyusage-api',
  });
  await bystander.raw('select 1');
  await database.close();
  t.match(notes.join('\n'), /left running: another process is connected/);
  t.equal(embeddedClusterRunning(env.EMBEDDED_PG_DIR), true);
  await bystander.destroy();
  cluster.stop();
  t.equal(embeddedClusterRunning(env.EMBEDDED_PG_DIR), false);
});

// `npm run demo-traffic` without DEMO_KEY, against the running embedded cluster that `config` names.
async function demoTrafficMintsItsKey(t: Test, config: ReturnType<typeof loadConfig>) {
  t.match(await mintDemoTrafficKey(config), { problem: /no "demo" organization/ }, 'no demo org: demo-traffic says to run npm start');
  t.equal(
    await main(
      ['org', 'create', 'demo'],
      { EMBEDDED_PG_DIR: config.database.embeddedDir, EMBEDDED_PG_PORT: String(config.database.embeddedPort) },
      captured().io,
    ),
    0,
  );
  const minted = await mintDemoTrafficKey(config);
  if (!('plaintext' in minted)) {
    t.fail(`no key minted: ${minted.problem}`);
    return;
  }
  const database = openDatabase(config, () => {});
  const stored = await database.db('api_keys').where({ id: minted.keyId }).first();
  t.same(stored.scopes, ['keys:read', 'keys:write'], 'the minted key can create and read keys');
  t.equal(stored.name, 'demo-traffic-admin');
  t.equal(parsePresentedKey(minted.plaintext)?.keyId, minted.keyId, 'the plaintext is that key');
  await database.close();
  const external = loadConfig({ NODE_ENV: 'test', DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' });
  t.match(await mintDemoTrafficKey(external), { problem: /DATABASE_URL.*DEMO_KEY/ }, 'with DATABASE_URL it asks for DEMO_KEY');
}

// A migration waiting behind a long transaction (a backup, a session left open) queued every
// query of the running API behind it. Each try now gives up after MIGRATE_LOCK_TIMEOUT_MS; after
// its last try (each retry said on a line of its own) the run fails, saying why.
t.test('npm run migrate: a migration waiting on a table in use fails after MIGRATE_LOCK_TIMEOUT_MS, and runs again once it is free', async (t) => {
  const url = await emptyDatabase(t);
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url }, captured().io), 0);
  const db = createDb(url, { poolMax: 2 });
  t.teardown(() => db.destroy());
  // 20261207000200 alters webhooks, which waits for its readers. (A concurrent index build waits
  // without MIGRATE_LOCK_TIMEOUT_MS: migrateLockRetry.test.ts.)
  await migrateDownTo(db, '20261206000190_webhook_creator.ts');
  const writer = await db.transaction();
  await writer.raw('lock table webhooks in access share mode');
  const held = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url, MIGRATE_LOCK_TIMEOUT_MS: '200' }, held.io), 1);
  t.match(held.err.join('\n'), /^error: migration failed: .*\(a migration waited MIGRATE_LOCK_TIMEOUT_MS, 200 ms, for a table another session holds/m);
  await writer.rollback();
  const freed = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url }, freed.io), 0, freed.err.join('\n'));
  t.match(freed.out.join('\n'), /^Applied \d+ migration\(s\):\n {2}20261207000200_webhook_secret_rotation.ts/);
});

t.test('two migration runs at once: one applies, the other waits, saying so, and finds nothing to do', async (t) => {
  const url = await emptyDatabase(t);
  const runs = [captured(), captured()];
  t.same(await Promise.all(runs.map((run) => migrate({ NODE_ENV: 'test', DATABASE_URL: url }, run.io))), [0, 0], runs.flatMap((run) => run.err).join('\n'));
  const [applier, waiter] = [...runs].sort((a, b) => (a.out.join('\n') < b.out.join('\n') ? -1 : 1));
  t.match(applier.out.join('\n'), `Applied ${MIGRATIONS.length} migration(s)`);
  t.same(applier.err, [], 'the run that applies waits for no one');
  t.same(waiter.out, ['Database is already up to date.']);
  // Silent for up to 10 minutes, it looked hung to a deploy pipeline.
  t.match(waiter.err, [/^Waiting for another migration run \(pid \d+, keyusage-migrate\) to finish/], 'it says once whom it waits for');
});

// `npm run migrate -- --dry-run` applied every migration, and `--help` migrated a database too.
t.test('npm run migrate: --help answers without touching the database, any other argument is refused', async (t) => {
  const url = await emptyDatabase(t);
  const db = createDb(url, { poolMax: 1 });
  t.teardown(() => db.destroy());
  const migrated = async () => (await db.raw(`select to_regclass('knex_migrations') as t`)).rows[0].t !== null;
  for (const help of ['--help', '-h']) {
    const run = captured();
    t.equal(await migrateMain([help], { DATABASE_URL: url }, run.io), 0, help);
    t.same([run.out, run.err], [[MIGRATE_USAGE], []]);
  }
  t.match(MIGRATE_USAGE, /^usage: DATABASE_URL=.* npm run migrate\n/);
  for (const wrong of [['--dry-run'], ['--bogus'], ['keyusage']]) {
    const run = captured();
    t.equal(await migrateMain(wrong, { DATABASE_URL: url }, run.io), 2, wrong[0]);
    t.same(run.out, []);
    t.match(run.err.join('\n'), new RegExp(`^error: .*${wrong[0]}[^]*usage: DATABASE_URL=`), 'names the argument, with the usage');
  }
  t.notOk(await migrated(), 'nothing was migrated');
  const run = captured();
  t.equal(await migrateMain([], { DATABASE_URL: url }, run.io), 0, 'no argument migrates');
  t.ok(await migrated());
});

t.test('npm run migrate', async (t) => {
  const url = await emptyDatabase(t);

  const unset = captured();
  t.equal(await migrate({ NODE_ENV: 'test' }, unset.io), 1, 'DATABASE_URL is required');
  t.match(unset.err.join('\n'), /DATABASE_URL is not set/);
  t.match(unset.err.join('\n'), /npm start/, 'and the message points at the embedded database');

  const first = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url }, first.io), 0);
  t.match(first.out.join('\n'), `Applied ${MIGRATIONS.length} migration(s):\n${MIGRATIONS.map((name) => `  ${name}`).join('\n')}`);
  const second = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url }, second.io), 0);
  t.same(second.out, ['Database is already up to date.']);

  // A run killed while a migration ran outside a transaction left knex's lock row set, and every
  // run after failed with "Migration table is already locked".
  const db = createDb(url, { poolMax: 1 });
  await db('knex_migrations_lock').update({ is_locked: 1 });
  await db.destroy();
  const afterKill = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: url }, afterKill.io), 0, afterKill.err.join('\n'));
  t.same(afterKill.out, ['Database is already up to date.'], "a dead run's lock does not stop the next");

  const unreachable = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: 'postgres://nobody:x@127.0.0.1:1/none' }, unreachable.io), 1);
  t.match(unreachable.err.join('\n'), /^error: migration failed: .*ECONNREFUSED/);
  const config = captured();
  t.equal(await migrate({ NODE_ENV: 'test', DATABASE_URL: 'mysql://db.example/x' }, config.io), 1);
  t.match(config.err.join('\n'), /^error: Invalid configuration: DATABASE_URL: must be a postgres:\/\/ URL/, 'a bad config names the variable');
});

// The documented `DATABASE_URL=… npm run migrate` (the upgrade notes, docs/scaling.md) failed on
// KEY_PEPPER, which migrate never uses, and without DATABASE_URL that hid the message made for it.
t.test('npm run migrate reads the database variables alone: no NODE_ENV or KEY_PEPPER needed', async (t) => {
  const url = await emptyDatabase(t);
  const unset = captured();
  t.equal(await migrate({}, unset.io), 1);
  t.match(unset.err, [/^error: DATABASE_URL is not set\. /], 'the message made for it');
  const run = captured();
  t.equal(await migrate({ DATABASE_URL: url }, run.io), 0, run.err.join('\n'));
  t.match(run.out.join('\n'), `Applied ${MIGRATIONS.length} migration(s)`);
});

t.test('embeddedClusterRunning reads postmaster.pid as pg_ctl does', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyusage-pid-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.equal(embeddedClusterRunning(dir), false, 'no pid file');
  fs.writeFileSync(path.join(dir, 'postmaster.pid'), `${process.pid}\n${dir}\n`);
  t.equal(embeddedClusterRunning(dir), true, 'a live pid');
  fs.writeFileSync(path.join(dir, 'postmaster.pid'), '2147483646\n');
  t.equal(embeddedClusterRunning(dir), false, 'a stale pid left by a killed server');
  fs.writeFileSync(path.join(dir, 'postmaster.pid'), 'garbage\n');
  t.equal(embeddedClusterRunning(dir), false, 'an unreadable pid');
});

// The real commands from their sources (`npm run cli` and `npm run migrate` run the compiled copies,
// test/productionInstall.test.ts runs those).
function runScript(script: string, args: string[], env: Record<string, string | undefined>) {
  const tsx = path.resolve(__dirname, '..', 'node_modules', '.bin', 'tsx');
  // tap records coverage in every child it can see; the child's tsx-transpiled code does not map
  // onto the in-process coverage of the same files and would skew the report, so opt out.
  const childEnv = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', DATABASE_URL: undefined, ...env };
  return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(tsx, [path.resolve(__dirname, '..', 'scripts', script), ...args], { env: childEnv }, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

t.test('the scripts as processes: exit codes and a pure JSON stdout', async (t) => {
  const { url, api } = await setup(t);
  const [created, usage, migrateUnset] = await Promise.all([
    runScript('cli.ts', ['org', 'create', 'acme', '--json'], { DATABASE_URL: url }),
    runScript('cli.ts', ['org'], { DATABASE_URL: url }),
    runScript('migrate.ts', [], {}),
  ]);
  t.equal(created.code, 0);
  const printed = JSON.parse(created.stdout);
  t.match(created.stderr, ONCE);
  for (const header of ['bearer', 'x-api-key'] as const) {
    t.equal((await api.request('GET', '/api/whoami', { key: printed.key.key, header })).status, 200, `the printed key works (${header})`);
  }
  t.same([usage.code, usage.stdout], [2, ''], 'usage error: exit 2, nothing on stdout');
  t.match(usage.stderr, /^error: unknown command "org"/);
  t.equal(migrateUnset.code, 1);
  t.match(migrateUnset.stderr, /DATABASE_URL is not set/);
});

// `cli key create … > /dev/full` crashed with "Unhandled 'error' event … ENOSPC", and `| true`
// with EPIPE: the key made, its secret lost, no id to revoke, the database left unclosed.
t.test(
  'the CLI as a process: stdout on a full disk is an error naming the key to revoke',
  { skip: !fs.existsSync('/dev/full') && 'no /dev/full' },
  async (t) => {
    const { db, url } = await freshDatabase(t);
    const created = captured();
    t.equal(await main(['org', 'create', 'acme', '--json'], { NODE_ENV: 'test', DATABASE_URL: url }, created.io), 0);
    const orgId = JSON.parse(created.out.join('\n')).org.id;
    const full = fs.openSync('/dev/full', 'w');
    t.teardown(() => fs.closeSync(full));
    const tsx = path.resolve(__dirname, '..', 'node_modules', '.bin', 'tsx');
    const child = spawn(tsx, [path.resolve(__dirname, '..', 'scripts', 'cli.ts'), 'key', 'create', orgId, '--name', 'n', '--scopes', 'keys:read'], {
      env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', DATABASE_URL: url },
      stdio: ['ignore', full, 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (chunk) => (stderr += chunk));
    const [code] = await once(child, 'exit');
    const key = await db('api_keys').where({ org_id: orgId, name: 'n' }).first();
    t.equal(code, 1, stderr);
    t.notMatch(stderr, /Unhandled/);
    t.match(stderr, new RegExp(`^error: the output could not be written \\(ENOSPC.*key revoke ${orgId} ${key.id}`));
    t.notMatch(stderr, KEY);
  },
);

t.test('the process streams get whole lines', async (t) => {
  // Swapped for a moment, with no assertion in between: tap reports on this process's stdout.
  const written: Array<[string, string]> = [];
  const streams = { stdout: process.stdout.write, stderr: process.stderr.write };
  const capture = (stream: string) => ((chunk: string) => written.push([stream, chunk]) > 0) as typeof process.stdout.write;
  process.stdout.write = capture('stdout');
  process.stderr.write = capture('stderr');
  try {
    cliStdio.out('{"a":1}');
    cliStdio.err('warning: x');
    migrateStdio.out('Database is already up to date.');
    migrateStdio.err('error: y');
  } finally {
    process.stdout.write = streams.stdout;
    process.stderr.write = streams.stderr;
  }
  t.same(written, [
    ['stdout', '{"a":1}\n'],
    ['stderr', 'warning: x\n'],
    ['stdout', 'Database is already up to date.\n'],
    ['stderr', 'error: y\n'],
  ]);
});
