import { randomBytes, randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import t from 'tap';
import { createLogger } from '../shared/logger';
import { freshDatabase } from './helpers/database';

// A failed write's error reaches the API's "unhandled error" log line. knex on PostgreSQL names
// the statement with placeholders only, but PostgreSQL's detail of a constraint violation quotes
// the failing row: a key's secret hash, cut at about 30 bytes.

t.test('a failed write of a secret hash: neither the error message nor its log line holds the hash', async (t) => {
  const { db } = await freshDatabase(t);
  const hash = randomBytes(32);
  const hex = hash.toString('hex').slice(0, 32);
  // No name: the NOT NULL violation's detail quotes the failing row, hash included.
  const error = (await db('api_keys')
    .insert({ id: randomUUID(), org_id: randomUUID(), name: null, display_prefix: 'ku_x', secret_hash: hash, scopes: [] })
    .then(
      () => undefined,
      (failure: unknown) => failure,
    )) as Error & { detail?: string; code?: string };
  t.equal(error?.code, '23502', 'the write failed on the NOT NULL');
  t.match(error.message, /insert into "api_keys"/, 'the message still names the statement');
  t.notOk(error.message.toLowerCase().includes(hex), 'the message holds no value');
  t.ok(error.detail?.toLowerCase().includes(hex), "PostgreSQL's detail quotes the row, hash included");

  const lines: string[] = [];
  const logger = createLogger({
    level: 'info',
    name: 'test',
    destination: new Writable({ write: (chunk, _encoding, done) => (lines.push(String(chunk)), done()) }),
  });
  logger.error({ err: error }, 'unhandled error');
  t.equal(lines.length, 1);
  t.match(JSON.parse(lines[0]).err, { code: '23502', message: /insert into "api_keys"/ }, 'the line keeps the code and the statement');
  t.notOk(lines[0].toLowerCase().includes(hex), 'the log line holds no hash');
});
