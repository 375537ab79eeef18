import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { freeTcpPort, freeUdpPort } from '../scripts/lib/freePort';
import t, { type Test } from 'tap';
import { insertOrganization } from '../api/orgs/orgs.repository';
import { createApiKeysService } from '../api/keys/apiKeys.service';
import { loadConfig } from '../shared/config';
import { freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

const ROOT = path.resolve(__dirname, '..');

// Started as the Procfile starts them, as separate processes configured by env only. They run
// with this test's own TypeScript loader (process.execArgv) rather than tsx, so their coverage
// merges with the in-process coverage; the Procfile's compiled form runs in start.smoke and
// productionInstall.
function startProcess(t: Test, entry: string, env: Record<string, string>) {
  const child = spawn(process.execPath, [...process.execArgv, entry], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  child.stdout.on('data', (chunk) => output.push(chunk.toString()));
  child.stderr.on('data', (chunk) => output.push(chunk.toString()));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return { child, output };
}

async function stopped(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  return code as number | null;
}

t.test('api and collector as separate processes: one use is recorded, sent, flushed and shown', async (t) => {
  const { db, url } = await freshDatabase(t);
  const defaults = loadConfig({ NODE_ENV: 'test' });
  const org = await insertOrganization(db, 'e2e');
  const service = createApiKeysService({ db, pepper: defaults.api.keyPepper, defaultGraceSeconds: 60, now: Date.now });
  const { plaintext, key } = await service.create(org.id, { name: 'e2e', scopes: ['keys:read'], expiresAt: null });
  // The usage endpoint is polled with another key: each poll is a use of the key that makes it.
  const reader = (await service.create(org.id, { name: 'reader', scopes: ['keys:read'], expiresAt: null })).plaintext;

  const env = {
    DATABASE_URL: url,
    PORT: String(await freeTcpPort()),
    API_METRICS_PORT: String(await freeTcpPort()),
    COLLECTOR_PORT: String(await freeUdpPort()),
    COLLECTOR_METRICS_PORT: String(await freeTcpPort()),
    LOG_LEVEL: 'info',
  };
  const collector = startProcess(t, 'collector/main.ts', env);
  const api = startProcess(t, 'api/main.ts', env);
  const base = `http://127.0.0.1:${env.PORT}`;
  await waitFor(
    'the api to answer',
    () =>
      fetch(`${base}/healthz`).then(
        (r) => (r.ok ? true : undefined),
        () => undefined,
      ),
    30_000,
    100,
  );
  await waitFor(
    'the collector to answer',
    () =>
      fetch(`http://127.0.0.1:${env.COLLECTOR_METRICS_PORT}/healthz`).then(
        (r) => (r.ok ? true : undefined),
        () => undefined,
      ),
    30_000,
    100,
  );

  const usedAt = Date.now();
  const whoami = await fetch(`${base}/api/whoami`, { headers: { authorization: `Bearer ${plaintext}` } });
  t.equal(whoami.status, 200);
  const seen = await waitFor(
    'the use in the usage endpoint',
    async () => {
      const body = (await (await fetch(`${base}/api/orgs/${org.id}/api-keys/usage`, { headers: { 'x-api-key': reader } })).json()) as {
        data: Array<{ id: string; outcomes: { ok: number }; lastUsedAt: string | null }>;
      };
      const row = body.data.find((k: { id: string }) => k.id === key.id);
      return row && row.outcomes.ok === 1 && row.lastUsedAt ? Date.now() : undefined;
    },
    5_000,
    50,
  );
  // How long it took is a figure for the reader, not an assertion (benchmarks measure it).
  t.comment(`staleness with default settings: ${seen - usedAt} ms`);

  const metrics = await (await fetch(`http://127.0.0.1:${env.API_METRICS_PORT}/metrics`)).text();
  t.match(metrics, /^keyusage_api_uses_recorded_total [1-9]/m, 'the API counts the uses it recorded');
  t.match(
    metrics,
    /^keyusage_api_request_duration_seconds_count\{method="GET",route="\/api\/whoami",status="200"\} 1$/m,
    'and times the whoami by route and status',
  );
  t.equal((await fetch(`${base}/metrics`)).status, 404, 'the public port serves no metrics');

  t.equal(await stopped(api.child), 0, 'the api exits 0 on SIGTERM');
  t.equal(await stopped(collector.child), 0, 'the collector exits 0 on SIGTERM after its final flush');
  const row = await db('api_key_usage').where({ key_id: key.id }).first();
  t.equal(Number(row.request_count), 1, 'the whoami key: its one use, persisted once');
  t.equal(Number(row.ok_count), 1, 'with its outcome');
  const logs = [...api.output, ...collector.output].join('');
  t.notOk(logs.includes(plaintext.slice(36, 79)), 'no secret in either process log');
  t.match(logs, /collector listening/);
  t.match(logs, /api listening/);
});

// A bad setting was thrown uncaught: a stack trace, every problem on one line.
t.test('api and collector with bad settings: exit 1, one line per problem naming its variable, no stack trace', async (t) => {
  const cases: Array<[string, Record<string, string>, string[]]> = [
    ['api/main.ts', { PORT: 'abc' }, ['PORT: must be a whole number']],
    ['collector/main.ts', { COLLECTOR_PORT: 'abc' }, ['COLLECTOR_PORT: must be a whole number']],
  ];
  for (const [entry, setting, problems] of cases) {
    const { child, output } = startProcess(t, entry, { ...setting, DATABASE_POOL_MAX: '0' });
    const [code] = await once(child, 'exit');
    t.equal(code, 1, `${entry} exits 1`);
    t.notMatch(output.join(''), /^ {4}at /m, `${entry}: no stack trace`);
    t.same(output.join('').trimEnd().split('\n'), ['DATABASE_POOL_MAX: must be at least 1', ...problems], `${entry}: each problem on its own line`);
  }
});
