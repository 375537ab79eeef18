import t from 'tap';
import { startApi } from '../api/main';
import { loadConfig } from '../shared/config';
import { MIN_SERVER_VERSION_NUM, serverVersion, warnIfServerOlder } from '../shared/db';
import { freshDatabase } from './helpers/database';
import { startTestCollector } from './helpers/collector';
import { capturingLogger } from './helpers/logLines';

// Pools fill under load, not at start: a collector whose receivers × (flush parallelism + 3,
// and flush parallelism more for the fold thread) connections, or an API whose DATABASE_POOL_MAX, exceeds what the server allows would start
// cleanly and fail its large flushes later with "Timeout acquiring a connection". Each says so at
// start instead, naming the variables; a cluster says it once (its first receiver).

const TOO_MANY =
  /= (\d+) connections under load, but the server allows (\d+) \(max_connections less superuser_reserved_connections, \d+ open now\): lower them or raise max_connections/;
const warnings = (lines: string[]) => lines.map((line) => JSON.parse(line)).filter((entry) => TOO_MANY.test(entry.msg));

t.test('a collector or API whose pools exceed max_connections says so at start, once per cluster', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { rows } = await db.raw(`select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int as allowed`);
  const allowed: number = rows[0].allowed;
  const crowded = { COLLECTOR_RECEIVERS: '16', COLLECTOR_FLUSH_PARALLELISM: '16' };
  t.ok(16 * 35 > allowed, `the test server allows ${allowed}, fewer than 16 × 35`);

  const first = await startTestCollector(t, url, crowded, { receiverIndex: 0 });
  const [warning, ...more] = warnings(first.logLines);
  t.equal(more.length, 0, 'one warning');
  t.match(warning, { level: 40, connectionsNeeded: 560, serverAllows: allowed }, 'a warning with the figures');
  t.match(
    warning?.msg,
    /^COLLECTOR_RECEIVERS \(16\) × \(COLLECTOR_FLUSH_PARALLELISM \(16\) \+ 3 \+ COLLECTOR_FLUSH_PARALLELISM for the fold thread\) = 560 connections/,
    'naming the variables',
  );
  await first.stop();

  const second = await startTestCollector(t, url, crowded, { receiverIndex: 1 });
  t.same(warnings(second.logLines), [], "the cluster's other receivers do not repeat it");
  await second.stop();

  const usual = await startTestCollector(t, url);
  t.same(warnings(usual.logLines), [], 'the defaults fit: nothing said');
  await usual.stop();

  const apiLines: string[] = [];
  const api = await startApi(
    loadConfig({ NODE_ENV: 'test', PORT: '0', API_METRICS_PORT: '0', DATABASE_POOL_MAX: '1000' }),
    capturingLogger(apiLines, 'api-test'),
    url,
  );
  await api.stop();
  t.match(
    warnings(apiLines),
    [{ connectionsNeeded: 1002, serverAllows: allowed, msg: /^DATABASE_POOL_MAX \(1000\) and \/healthz's own 2 = 1002 connections/ }],
    "the API too, its pool and /healthz's own",
  );
});

// PostgreSQL 13 would run everything but the key list's refresh (date_bin): the collector says so
// at start. The test server is newer, so an unreachable minimum stands in for an older server.
t.test('a collector on a server older than keyusage needs says so at start', async (t) => {
  const { db, url } = await freshDatabase(t);
  const server = await serverVersion(db);
  const tooOld = (lines: string[]) => lines.map((line) => JSON.parse(line)).filter((entry) => /is older than keyusage needs/.test(entry.msg));
  const lines: string[] = [];
  await warnIfServerOlder(db, capturingLogger(lines, 'test'), server.num + 1);
  t.match(
    tooOld(lines),
    [
      {
        level: 40,
        serverVersionNum: server.num,
        msg: `PostgreSQL ${server.version} is older than keyusage needs (server_version_num ${server.num + 1}): the collector's key list refreshes will fail until the server is upgraded`,
      },
    ],
    'the versions named',
  );
  const atTheMinimum: string[] = [];
  await warnIfServerOlder(db, capturingLogger(atTheMinimum, 'test'), server.num);
  t.same(tooOld(atTheMinimum), [], 'a server exactly at the minimum is enough');
  t.ok(server.num >= MIN_SERVER_VERSION_NUM, `the test server (${server.version}) is recent enough`);
  const collector = await startTestCollector(t, url);
  t.same(tooOld(collector.logLines), [], 'so a collector on it says nothing');
  await collector.stop();
  const onOlder = await startTestCollector(t, url, {}, { minServerVersionNum: server.num + 1 });
  t.equal(tooOld(onOlder.logLines).length, 1, 'and a collector that needs more says so once at start');
  await onOlder.stop();
});
