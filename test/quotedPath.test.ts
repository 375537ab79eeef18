import t from 'tap';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A path that matches no route was quoted whole, in the request log line and the 404's message:
// only Node's 16 KiB header limit bounded it, so each request, unauthenticated, wrote 16 KB to the
// log and was answered as much (fails without the fix).
t.test('a long path is quoted cut, in the request log line and the 404, its key material still redacted', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { adminKey } = await seedOrg(api, db);
  // '/api/' and 234 characters and '/': a key there starts 16 characters before the cut. Cut before
  // it was redacted, it would no longer be key-shaped, and its start (ku_ and its id) would pass.
  const beforeKey = `/api/${'x'.repeat(234)}/`;
  const cases: Array<[string, string]> = [
    ['a 15,000-character path', `/api/${'x'.repeat(14_995)}`],
    ['a key across the cut', `${beforeKey}${adminKey}/${'y'.repeat(14_700)}`],
    ['a percent-encoded key across the cut', `${beforeKey}%6B${adminKey.slice(1)}/${'y'.repeat(14_700)}`],
  ];
  for (const [label, path] of cases) {
    const response = await api.request('GET', path);
    t.equal(response.status, 404, `${label}: 404`);
    const requestId = response.headers.get('x-request-id');
    const line = await waitFor(`${label}: its log line`, () =>
      api.evidence.logLines.find((logged) => {
        const fields = JSON.parse(logged);
        return fields.msg === 'request' && fields.requestId === requestId;
      }),
    );
    const message: string = response.body.error.message;
    for (const [where, text] of [
      ['log line', line],
      ['404 message', message],
    ]) {
      t.ok(Buffer.byteLength(text) < 1024, `${label}: the ${where} is under 1 KB (${Buffer.byteLength(text)} bytes)`);
      t.ok(text.includes(`/api/${'x'.repeat(200)}`), `${label}: the ${where} names the start of the path`);
      t.ok(text.includes(`…(${path.length} characters)`), `${label}: the ${where} says how long the path was`);
      t.notMatch(text, /ku_[0-9a-f]/, `${label}: the ${where} holds no part of the key`);
      t.notOk(text.includes(adminKey.slice(3, 11)), `${label}: nor the start of its id`);
    }
    t.equal(JSON.parse(line).path, message.replace(/^No route for GET /, ''), `${label}: both quote the path alike`);
  }
  t.strictSame(api.evidence.leaksOf([adminKey.slice(3)]), [], 'the key is in no answer or log line');
});
