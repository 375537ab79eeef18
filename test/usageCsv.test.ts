import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import t, { type Test } from 'tap';
import { insertKeys } from '../bench/lib/database';
import { TABLE } from '../shared/tables';
import { seedOrg, startTestApi, twoOrgWorld } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

// GET …/api-keys/usage.csv: every key the usage list's filters select, as CSV, through the real
// API against a real PostgreSQL.

const START = Date.parse('2026-11-20T12:00:00Z');
const HOUR_MS = 3_600_000;

/** RFC 4180 read back independently of the writer: quoted fields, doubled quotes, CRLF. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  const field = /("((?:[^"]|"")*)"|[^",\r\n]*)(,|\r\n|$)/gy;
  let row: string[] = [];
  while (field.lastIndex < text.length) {
    const match = field.exec(text);
    if (!match) throw new Error(`not CSV at ${field.lastIndex}: ${JSON.stringify(text.slice(field.lastIndex, field.lastIndex + 40))}`);
    row.push(match[2] === undefined ? match[1] : match[2].replaceAll('""', '"'));
    if (match[3] !== ',') {
      rows.push(row);
      row = [];
    }
  }
  return rows;
}

/** The report's lines as objects by column name. */
const records = (text: string) => {
  const [header, ...lines] = parseCsv(text);
  return lines.map((line) => Object.fromEntries(header.map((name, i) => [name, line[i]])));
};

async function world(t: Test) {
  const { db, api, clock, acme, globex } = await twoOrgWorld(t, START);
  const create = async (name: string, owner?: string) =>
    (await api.services.apiKeys.create(acme.org.id, { name, owner, scopes: ['keys:read'], expiresAt: null })).key.id;
  clock.now += 1000;
  const ci = await create('ci, "deploys"', 'platform team');
  clock.now += 1000;
  const formula = await create('=HYPERLINK("https://203.0.113.9/x","open")', '-ops');
  clock.now += 1000;
  const retired = await create('retired');
  await api.services.apiKeys.revoke(acme.org.id, retired);
  await db(TABLE.usage).insert({
    org_id: acme.org.id,
    key_id: ci,
    request_count: 7,
    ok_count: 5,
    forbidden_count: 2,
    last_used_at: new Date(clock.now),
    last_used_ip: '192.0.2.7',
  });
  await db(TABLE.usageHourly).insert({
    org_id: acme.org.id,
    key_id: ci,
    hour: new Date(Math.floor(clock.now / HOUR_MS) * HOUR_MS - HOUR_MS),
    request_count: 7,
    ok_count: 5,
    forbidden_count: 2,
  });
  return { db, api, clock, acme, globex, ids: { ci, formula, retired } };
}

t.test('the report: a header, one line per key of the org, oldest first, as the usage list says them', async (t) => {
  const { db, api, acme, ids } = await world(t);
  const path = `/api/orgs/${acme.org.id}/api-keys/usage.csv`;
  const response = await api.request('GET', path, { key: acme.adminKey });
  t.equal(response.status, 200);
  t.equal(response.headers.get('content-type'), 'text/csv; charset=utf-8');
  t.equal(response.headers.get('content-disposition'), `attachment; filename=api-keys-${acme.org.id}.csv`);
  t.ok(response.text.endsWith('\r\n') && !response.text.includes('\n\n'), 'CRLF line ends');
  const lines = records(response.text);
  t.strictSame(
    lines.map((line) => line.id),
    [acme.adminKeyId, ids.ci, ids.formula, ids.retired],
    "every key of the org, oldest first; none of the other org's",
  );
  const list = (await api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage?sort=createdAt&order=asc`, { key: acme.adminKey })).body.data;
  const ci = list.find((key: { id: string }) => key.id === ids.ci);
  t.match(lines[1], {
    name: 'ci, "deploys"',
    owner: 'platform team',
    displayPrefix: ci.displayPrefix,
    status: 'active',
    scopes: 'keys:read',
    createdAt: ci.createdAt,
    createdByKeyId: '',
    lastUsedAt: ci.lastUsedAt,
    lastUsedIp: '192.0.2.7',
    dormant: 'false',
    requestCount: '7',
    'outcomes.ok': '5',
    'outcomes.forbidden': '2',
    'outcomes.bad_secret': '0',
    'requests.last24h': '7',
    'requests.last30d': '7',
  });
  t.equal(lines[3].status, 'revoked');
  t.equal(lines[3].revokedAt, list.find((key: { id: string }) => key.id === ids.retired).revokedAt);
  t.equal(lines[3].owner, '', 'no owner: an empty field');
  t.strictSame(
    [lines[2].name, lines[2].owner],
    [`'=HYPERLINK("https://203.0.113.9/x","open")`, "'-ops"],
    'a name or owner a spreadsheet would run as a formula is written as text',
  );
  t.equal(lines[0].scopes, 'keys:read keys:write', 'scopes space-separated');
  const hashes = await db(TABLE.apiKeys).where({ org_id: acme.org.id }).pluck('secret_hash');
  t.ok(
    !response.text.includes(acme.adminKey) &&
      hashes.every((hash: Buffer) => !response.text.includes(hash.toString('hex')) && !response.text.includes(hash.toString('base64'))),
    'no key material: no plaintext, no hash',
  );
});

t.test("the list's filters select the report's keys", async (t) => {
  const { api, acme, ids } = await world(t);
  const report = async (query: string) =>
    records((await api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage.csv?${query}`, { key: acme.adminKey })).text).map((line) => line.id);
  t.strictSame(await report('owner=platform%20team'), [ids.ci], 'owner');
  t.strictSame(await report('q=PLATFORM'), [ids.ci], 'q, on the owner too');
  t.strictSame(await report('status=revoked'), [ids.retired], 'status');
  t.strictSame(await report('q=nothing%20like%20it'), [], 'none selected: the header alone');
});

t.test('refusals are JSON errors before any line: bad query, another org, a key of another org', async (t) => {
  const { api, acme, globex } = await world(t);
  const path = `/api/orgs/${acme.org.id}/api-keys/usage.csv`;
  const unknown = await api.request('GET', `${path}?limit=5`, { key: acme.adminKey });
  t.match(unknown, { status: 400, body: { error: { code: 'invalid_request', message: /limit/ } } }, 'paging is not a report parameter');
  const status = await api.request('GET', `${path}?status=gone`, { key: acme.adminKey });
  t.match(status, { status: 400, body: { error: { message: /status: must be active, revoked or expired/ } } });
  const creator = await api.request('GET', `${path}?createdByKeyId=${globex.adminKeyId}`, { key: acme.adminKey });
  t.match(creator, { status: 404, body: { error: { code: 'not_found', message: 'API key not found' } } }, "another org's key is not found");
  const theirs = await api.request('GET', `/api/orgs/${globex.org.id}/api-keys/usage.csv`, { key: acme.adminKey });
  t.match(theirs, { status: 404, body: { error: { code: 'not_found' } } }, "another org's report is not found");
  const anonymous = await api.request('GET', path);
  t.equal(anonymous.status, 401);
});

t.test('an org of 1,203 keys: every key once, in order, across the pages the report reads', async (t) => {
  const { db, api, acme } = await world(t);
  const bulk = await insertKeys(db, acme.org.id, 1203, 'bulk-');
  const text = (await api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage.csv?q=bulk-`, { key: acme.adminKey })).text;
  t.strictSame(
    records(text).map((line) => line.id),
    bulk,
    'each key once, oldest first',
  );
});

t.test('a report whose place is deleted fails rather than ending short', async (t) => {
  const { db, api, acme } = await world(t);
  await insertKeys(db, acme.org.id, 500, 'page-');
  const pages = api.services.usage.report(acme.org.id, { dormantDays: 30 });
  const first = await pages.next();
  t.equal(first.done, false);
  const keys = first.value as Array<{ id: string }>;
  t.equal(keys.length, 500, 'a full first page');
  // The page's last key and every key after it gone: the next page has nothing after a key that is no more.
  const last = keys[keys.length - 1].id;
  const after = await db(TABLE.apiKeys)
    .where({ org_id: acme.org.id })
    .whereNotIn(
      'id',
      keys.slice(0, -1).map((key) => key.id),
    )
    .pluck('id');
  t.ok(after.includes(last));
  await db(TABLE.apiKeys).whereIn('id', after).delete();
  await t.rejects(pages.next(), /The CSV report lost its place: the last key it read was deleted meanwhile/);
});

// A report held its org's turn (API_MAX_CONCURRENT_PER_ORG) until its end: a download the client
// left midway never gave it back (the writer stopped without ending the answer), and a slow one
// held it while the client read; with a limit of 1 the org's next request waited (a self-review
// and a review; fails without the fixes). A report now gives its turn back after its first page,
// and an org writes one report at a time.
t.test("a report gives its org's turn back after its first page, one report of an org at a time, and a client gone frees it", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { API_MAX_CONCURRENT_PER_ORG: '1' } });
  const { org, adminKey } = await seedOrg(api, db);
  // About 12 MB of CSV, 60 pages: seconds of writing, still under way when the checks below run
  // (the client stops reading too, though loopback's buffers may take much of it).
  await insertKeys(db, org.id, 30_000, 'bulk-');
  const path = `/api/orgs/${org.id}/api-keys/usage.csv`;
  const request = http.get(`${api.baseUrl}${path}`, { headers: { authorization: `Bearer ${adminKey}` } });
  const [response] = (await once(request, 'response')) as [http.IncomingMessage];
  t.equal(response.statusCode, 200);
  await once(response, 'data');
  response.pause();
  await waitFor("the org's turn given back", () => (api.orgTurns.busyOrgs() === 0 ? true : undefined));
  const meanwhile = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?limit=1`, { key: adminKey });
  t.equal(meanwhile.status, 200, "the org's other requests are answered while the client reads slowly");
  const second = await api.request('GET', path, { key: adminKey });
  t.match(second, { status: 429, body: { error: { code: 'too_many_requests', message: /CSV report of this organization is being written already/ } } });
  t.equal(second.headers.get('retry-after'), '5');
  request.destroy();
  await waitFor('a report again once the client left', async () =>
    (await api.request('GET', `${path}?q=none`, { key: adminKey })).status === 200 ? true : undefined,
  );
  t.pass('the next report is written');
});

// Over HTTP/1.0 an answer ends at the connection's close: a report cut short would read as whole.
t.test('the report refuses HTTP/1.0, which cannot tell a cut-short report from a whole one', async (t) => {
  const { api, acme } = await world(t);
  const socket = net.connect(api.port, '127.0.0.1');
  await once(socket, 'connect');
  socket.write(`GET /api/orgs/${acme.org.id}/api-keys/usage.csv HTTP/1.0\r\nAuthorization: Bearer ${acme.adminKey}\r\n\r\n`);
  let answer = '';
  for await (const chunk of socket) answer += chunk;
  t.match(answer, /^HTTP\/1\.1 400 /, '400');
  t.match(
    answer,
    /The CSV report needs HTTP\/1\.1: over HTTP\/1\.0 a report cut short cannot be told from a whole one \(behind nginx, set proxy_http_version 1\.1\)/,
  );
});

// A failure after the first page closes the answer without its end; it was logged as a client
// that left (499), out of the 5xx rates an operator watches (a review).
t.test('a report that fails after its first page is logged as a 500, and the answer has no end', async (t) => {
  const { db, api, acme } = await world(t);
  await insertKeys(db, acme.org.id, 600, 'bulk-');
  const report = api.services.usage.report.bind(api.services.usage);
  api.services.usage.report = async function* (orgId, query) {
    const pages = report(orgId, query);
    const first = await pages.next();
    if (!first.done) yield first.value;
    throw new Error('the database went away');
  };
  t.teardown(() => void (api.services.usage.report = report));
  await t.rejects(
    fetch(`${api.baseUrl}/api/orgs/${acme.org.id}/api-keys/usage.csv`, { headers: { authorization: `Bearer ${acme.adminKey}` } }).then((response) =>
      response.text(),
    ),
    'the download fails',
  );
  const logged = await waitFor('the request logged', () => api.evidence.logLines.find((line) => line.includes('usage.csv') && line.includes('"status"')));
  t.match(JSON.parse(logged), { status: 500 }, 'as a 500');
  t.ok(
    api.evidence.logLines.some((line) => line.includes('answer cut short') && line.includes('the database went away')),
    'with its cause',
  );
});

// An answer queued behind another on its connection (pipelined) never closes when its client
// leaves: the org's place among the reports being written was kept until the process restarted,
// and every later report of the org refused (a review; fails without the fix).
t.test("a pipelined report whose client leaves frees its org's place among the reports", async (t) => {
  const { db, api, acme, globex } = await world(t);
  await insertKeys(db, globex.org.id, 30_000, 'bulk-');
  // Acme's queued report has pages to write too: it must stop when its client leaves, not wait
  // out the stall limit (30 s) holding its org's place.
  await insertKeys(db, acme.org.id, 30_000, 'bulk-');
  const report = api.services.usage.report.bind(api.services.usage);
  let acmeAsked = false;
  api.services.usage.report = (orgId, query) => {
    if (orgId === acme.org.id) acmeAsked = true;
    return report(orgId, query);
  };
  t.teardown(() => void (api.services.usage.report = report));
  const socket = net.connect(api.port, '127.0.0.1');
  await once(socket, 'connect');
  socket.pause();
  const get = (orgId: string, key: string) => `GET /api/orgs/${orgId}/api-keys/usage.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n\r\n`;
  socket.write(get(globex.org.id, globex.adminKey) + get(acme.org.id, acme.adminKey));
  await waitFor("acme's report, queued behind globex's, under way", () => (acmeAsked ? true : undefined));
  socket.destroy();
  const path = `/api/orgs/${acme.org.id}/api-keys/usage.csv?q=none`;
  await waitFor('a report of acme again', async () => ((await api.request('GET', path, { key: acme.adminKey })).status === 200 ? true : undefined));
  t.pass("acme's place was freed when the connection closed");
});
