import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import t, { type Test } from 'tap';
import { fetchCollectorMetrics, parseCollectorMetrics } from '../harness/collectorProcess';
import { databaseUrl, openPostgresServer } from '../harness/postgres';
import {
  mainThreadSchedMs,
  processCpu,
  processCpuSeconds,
  processTreeCpu,
  processTreeCpuSeconds,
  processTreeMemory,
  receivingPids,
  udpCounters,
} from '../bench/lib/procs';
import { processMemory } from '../harness/processMemory';
import { isRunning, killAllChildren, REPO_ROOT, spawnProcess, stopChild } from '../harness/processes';
import { seededRandom, shuffled } from '../harness/random';
import { BUILD_LOCK, buildDist, compiledWith, fromSource, startSystem } from '../harness/systemProcess';
import { acquireDataFolderLock, lockFileFor } from '../scripts/lib/dataFolderLock';
import { parseProcfile } from '../scripts/lib/procfile';
import { httpStatus, sleep, waitFor } from '../harness/wait';
import { freeTcpPort, freeTcpPorts } from '../scripts/lib/freePort';
import { closeServer, listen } from '../shared/process';
import { freshDatabase } from './helpers/database';

// The harness the tests and the benchmarks share: the parts the other tests do not reach on their
// own (failure paths, the benchmark side), on real processes and sockets.

const nodeEval = (source: string) => spawnProcess('node -e', ['-e', source], { keepOutput: true });

t.test('waitFor: the value once the probe answers, a timeout naming what it waited for, a probe error at once', async (t) => {
  let calls = 0;
  t.equal(await waitFor('the third call', () => (++calls === 3 ? 'three' : undefined), 1000, 1), 'three');
  await t.rejects(
    waitFor('nothing', () => undefined, 30, 5),
    /timed out after 30 ms waiting for nothing/,
  );
  await t.rejects(
    waitFor(
      'a dead process',
      () => {
        throw new Error('it exited');
      },
      10_000,
    ),
    /it exited/,
    'a throwing probe ends the wait with its error, not a timeout',
  );
});

t.test('httpStatus: undefined while nothing listens, then the status whatever it is', async (t) => {
  const port = await freeTcpPort();
  t.equal(await httpStatus(`http://127.0.0.1:${port}/healthz`), undefined);
  const server = http.createServer((_req, res) => res.writeHead(503).end('{}'));
  await listen(server, '127.0.0.1', port, 'test');
  t.teardown(() => closeServer(server));
  t.equal(await httpStatus(`http://127.0.0.1:${port}/healthz`), 503);
});

t.test('child processes: whole output lines, stopChild by SIGTERM, SIGKILL for one that ignores it, killAllChildren', async (t) => {
  // Written in two chunks with a pause between: the line is still read whole.
  const writer = nodeEval("process.stdout.write('{\"half\":'); setTimeout(() => console.log('1}'), 50)");
  const { code } = await writer.exited;
  t.equal(code, 0);
  t.same(writer.lines, ['{"half":1}'], 'a line split across chunks is one line');

  const polite = nodeEval("console.log('up'); setInterval(() => {}, 1000)");
  await waitFor('the child to start', () => (polite.lines.length > 0 ? true : undefined), 10_000);
  t.equal(await stopChild(polite), null, 'stopped by SIGTERM (no exit code)');
  t.equal((await polite.exited).signal, 'SIGTERM');

  const stubborn = nodeEval("process.on('SIGTERM', () => {}); console.log('up'); setInterval(() => {}, 1000)");
  await waitFor('the child to start', () => (stubborn.lines.length > 0 ? true : undefined), 10_000);
  await stopChild(stubborn, 100);
  t.equal((await stubborn.exited).signal, 'SIGKILL', 'SIGKILL after the timeout');

  const forgotten = nodeEval('setInterval(() => {}, 1000)');
  t.ok(isRunning(forgotten));
  killAllChildren();
  t.equal((await forgotten.exited).signal, 'SIGKILL', 'killAllChildren stops what is still running');
});

t.test('the output kept is the last 40 lines unless keepOutput', async (t) => {
  const child = spawnProcess('counter', ['-e', 'for (let i = 0; i < 100; i++) console.log(i)']);
  await child.exited;
  t.equal(child.lines.length, 40);
  t.equal(child.lines[39], '99');
  t.match(child.output(), /^60\n61\n/);
});

t.test('processMemory reads the resident set of a live process and throws for a gone one', async (t) => {
  const memory = processMemory(process.pid);
  t.ok(memory.rss > 0 && memory.peakRss >= memory.rss, `rss ${memory.rss}, peak ${memory.peakRss}`);
  const child = nodeEval('');
  await child.exited;
  t.throws(() => processMemory(child.proc.pid!));
});

// The whole system's harness passes three TCP ports to its processes at once; one port given
// twice made the launcher refuse to start in a benchmark run.
t.test('freeTcpPorts gives different ports, each free again once returned', async (t) => {
  const ports = await freeTcpPorts(50);
  t.equal(new Set(ports).size, 50);
  const servers = ports.map(() => http.createServer());
  t.teardown(() => Promise.all(servers.map((server) => closeServer(server))));
  for (const [i, server] of servers.entries()) t.equal(await listen(server, '127.0.0.1', ports[i], 'test'), ports[i]);
});

/** A node process that starts one child running `childSource`, which prints 'up' when ready; SIGTERM stops both. */
async function parentOf(t: Test, childSource: string) {
  const parent = nodeEval(
    `const c = require('node:child_process').spawn(process.execPath, ['-e', ${JSON.stringify(childSource)}], { stdio: 'inherit' });` +
      "process.on('SIGTERM', () => { c.kill(); process.exit(0); }); setInterval(() => {}, 1000)",
  );
  t.teardown(() => stopChild(parent));
  await waitFor('the child to be up', () => (parent.lines.includes('up') ? true : undefined));
  return parent.proc.pid!;
}

// A cluster's workers hold the receivers' memory: the ingest benchmark sums the process tree.
t.test('processTreeMemory adds the memory of the descendants', async (t) => {
  const pid = await parentOf(t, "globalThis.held = Buffer.alloc(64 << 20, 1); console.log('up'); setInterval(() => {}, 1000)");
  const own = processMemory(pid);
  const tree = processTreeMemory(pid);
  t.ok(tree.rss >= own.rss + (60 << 20), `tree ${tree.rss} B, parent alone ${own.rss} B`);
  t.ok(tree.peakRss >= own.peakRss + (60 << 20), `tree peak ${tree.peakRss} B, parent alone ${own.peakRss} B`);
});

// The ingest benchmark's CPU columns: a receiver's tree (cluster workers) and its receiving loops.
t.test('CPU and scheduler time from /proc, for a process, its tree and its receiving children', async (t) => {
  const pid = await parentOf(t, "while (process.cpuUsage().user < 400_000); console.log('up'); setInterval(() => {}, 1000)");
  const [child] = receivingPids(pid);
  t.not(child, pid, 'a parent with a child: the child receives');
  t.strictSame(receivingPids(child), [child], 'a process without children receives itself');
  t.ok(processCpu(child).user >= 0.35, `the child's user CPU ${processCpu(child).user} s`);
  t.ok(processTreeCpu(pid).user >= processCpu(pid).user + 0.35, 'the tree adds the child');
  t.ok(processTreeCpuSeconds(pid) >= processCpuSeconds(pid) + 0.35, 'in seconds too');
  t.ok(mainThreadSchedMs([child]).runMs >= 350, `the child's main thread ran ${mainThreadSchedMs([child]).runMs} ms`);
  const udp = udpCounters();
  t.ok(Number.isInteger(udp.InDatagrams) && Number.isInteger(udp.RcvbufErrors), 'the kernel UDP counters');
});

t.test('collector metrics: the keyusage_collector_ samples, by name without the prefix', async (t) => {
  const text =
    '# HELP keyusage_collector_packets_total x\n# TYPE keyusage_collector_packets_total counter\nkeyusage_collector_packets_total 12\nkeyusage_collector_last_flush_duration_seconds 0.25\nother_metric 3\n';
  t.same(parseCollectorMetrics(text), { packets_total: 12, last_flush_duration_seconds: 0.25 });
  const server = http.createServer((_req, res) => res.end(text));
  const port = await listen(server, '127.0.0.1', 0, 'test');
  t.teardown(() => closeServer(server));
  t.same(await fetchCollectorMetrics(port), { packets_total: 12, last_flush_duration_seconds: 0.25 });
});

t.test('PostgreSQL: DATABASE_URL when given (nothing started, nothing to stop); database URLs on the same server', async (t) => {
  const saved = process.env.DATABASE_URL;
  process.env.DATABASE_URL = 'postgres://someone:secret@127.0.0.1:5999/postgres';
  t.teardown(() => (saved === undefined ? delete process.env.DATABASE_URL : (process.env.DATABASE_URL = saved)));
  const lines: string[] = [];
  const server = await openPostgresServer('unused-', (line) => lines.push(line));
  t.same([server.adminUrl, server.local, lines], [process.env.DATABASE_URL, false, []]);
  server.stop();
  t.equal(databaseUrl(server.adminUrl, 'kt_1'), 'postgres://someone:secret@127.0.0.1:5999/kt_1');
});

t.test('seeded randomness: the same seed gives the same sequence and the same order', async (t) => {
  const a = seededRandom(7);
  const b = seededRandom(7);
  const values = Array.from({ length: 5 }, () => a());
  t.same(
    values,
    Array.from({ length: 5 }, () => b()),
  );
  t.ok(values.every((v) => v >= 0 && v < 1));
  const items = Array.from({ length: 20 }, (_, i) => i);
  t.same(shuffled(items, 3), shuffled(items, 3));
  t.not(shuffled(items, 3).join(), items.join(), 'an order, not the identity');
  t.same(
    [...shuffled(items, 3)].sort((x, y) => x - y),
    items,
    'a permutation',
  );
});

t.test('the whole system from source: each Procfile command runs its TypeScript under tsx, its node options kept', async (t) => {
  t.same(fromSource({ name: 'web', command: 'node dist/api/main.js' }), { name: 'web', command: 'node --import tsx api/main.ts' });
  t.same(fromSource({ name: 'collector', command: 'node --max-semi-space-size=32 dist/collector/main.js' }, ['--import', './probe.ts']), {
    name: 'collector',
    command: 'node --import tsx --import ./probe.ts --max-semi-space-size=32 collector/main.ts',
  });
  t.throws(() => fromSource({ name: 'web', command: 'npm run serve' }), /Procfile "web" is not "node \[options\] dist\/<file>.js"/);
  for (const entry of parseProcfile(fs.readFileSync('Procfile', 'utf8'))) {
    const file = /(\S+\.ts)$/.exec(fromSource(entry).command)?.[1] ?? '';
    t.ok(fs.existsSync(file), `the Procfile's ${entry.name} maps to a source file (${file})`);
  }
});

t.test('the whole system compiled: each Procfile command as it is, the added node options first', async (t) => {
  t.same(compiledWith({ name: 'web', command: 'node dist/api/main.js' }), { name: 'web', command: 'node dist/api/main.js' });
  t.same(compiledWith({ name: 'collector', command: 'node --max-semi-space-size=32 dist/collector/main.js' }, ['--cpu-prof']), {
    name: 'collector',
    command: 'node --cpu-prof --max-semi-space-size=32 dist/collector/main.js',
  });
  t.throws(() => compiledWith({ name: 'web', command: 'npm run serve' }), /Procfile "web" is not "node \[options\] dist\/<file>.js"/);
});

// Two test files, or a benchmark beside the tests, may build dist/ at once; a process holding the
// build lock (another pid, alive) makes buildDist wait, and its release lets the build run.
t.test('buildDist waits for a build another process holds, then builds', async (t) => {
  const held = acquireDataFolderLock(BUILD_LOCK, process.ppid);
  t.teardown(() => held.release());
  let built = false;
  const building = buildDist().then(() => (built = true));
  await sleep(300);
  t.equal(built, false, 'waits while the lock is held');
  held.release();
  await building;
  t.ok(fs.existsSync(path.join(REPO_ROOT, 'dist', 'collector', 'main.js')), 'then builds dist/');
  t.notOk(fs.existsSync(lockFileFor(BUILD_LOCK)), 'and releases the lock');
});

// What the ingest benchmark starts: the launcher with the Procfile, the API and the collector as
// their own processes, compiled, on the ports it chose; SIGTERM stops them all cleanly.
t.test('startSystem runs npm start with the Procfile: API and collector serving from dist/, stopped with exit 0', async (t) => {
  const { url } = await freshDatabase(t);
  // Its processes' coverage (of dist/, or of sources under tsx) cannot be merged into tap's: not recorded.
  const system = await startSystem(url, { env: { _TAPJS_PROCESSINFO_COVERAGE_: '0' }, compiled: true });
  t.teardown(() => system.stop());
  t.equal(await httpStatus(`http://127.0.0.1:${system.apiPort}/healthz`), 200, 'the API serves');
  t.not(system.collectorPid, system.launcher.proc.pid, 'the collector is a process of its own');
  const collectorArgs = fs.readFileSync(`/proc/${system.collectorPid}/cmdline`, 'utf8').split('\0');
  t.ok(collectorArgs.includes('dist/collector/main.js'), 'it runs the compiled collector, built first', { collectorArgs });
  t.ok(processMemory(system.collectorPid).rss > 0, 'and it runs');
  t.type((await system.metrics()).packets_total, 'number', "the collector's metrics answer");
  t.equal(await system.stop(), 0);
});
