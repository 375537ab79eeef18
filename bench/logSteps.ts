import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { PoolClient } from 'pg';
import Cursor from 'pg-cursor';
import { Aggregator, capHolding, DeltaCoalescer } from '../collector/aggregator';
import { connectionOf } from '../collector/flushStaging';
import { createUsageStore, TAKE_BATCH_ROWS, TAKE_LOG } from '../collector/usageLog';
import { decodeDelta } from '../collector/logDelta';
import { uuidArrayLiteral } from '../collector/usageStore';
import { loadConfig } from '../shared/config';
import type { Db } from '../shared/db';
import { TABLE } from '../shared/tables';
import { KnownKeys } from '../collector/knownKeys';
import { createKeysInOrgs, openBenchDatabase } from './lib/database';

// What the usage log's steps cost beside a direct write of the same keys (docs/benchmarks.md §4,
// "The usage log by default from 5,000 keys"): the append's key check in three forms (the keys'
// rows read, an anti-join returning only the missing ones, a count), and a fold taken apart: its
// rows read out of the log (the DELETE … RETURNING through the cursor, rolled back) and decoded,
// then the whole fold; and an append of keys confirmed by an earlier one (no check). 100 orgs ×
// 1,000 keys, one address, detection on. One process per run.
// Usage: tsx bench/logSteps.ts [rounds]
const rounds = Number(process.argv[2] ?? 3);

const CHECKS: Record<string, string> = {
  rows: `select id, org_id from ${TABLE.apiKeys} where id = any(cast($1 as uuid[]))`,
  antiJoin: `with found as (select id, org_id from ${TABLE.apiKeys} where id = any(cast($1 as uuid[])))
             select k.id, k.org_id from unnest(cast($1 as uuid[]), cast($2 as uuid[])) as k(id, org_id) except all select id, org_id from found`,
  count: `select count(*)::int as n from ${TABLE.apiKeys} a
          join unnest(cast($2 as uuid[]), cast($1 as uuid[])) as k(org_id, key_id) on a.org_id = k.org_id and a.id = k.key_id`,
};

async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; cpuMs: number; value: T }> {
  const started = performance.now();
  const cpu = process.cpuUsage();
  const value = await work();
  const used = process.cpuUsage(cpu);
  return { ms: Math.round(performance.now() - started), cpuMs: Math.round((used.user + used.system) / 1000), value };
}

async function checkForms(db: Db, keyIds: string[], orgIds: string[]) {
  const connection = (await db.client.acquireConnection()) as PoolClient;
  try {
    const forms: Record<string, { ms: number; cpuMs: number }> = {};
    const time = async (params: unknown[], sql: string) => {
      const { ms, cpuMs } = await timed(() => connection.query(sql, params));
      return { ms, cpuMs };
    };
    for (const [name, sql] of Object.entries(CHECKS)) {
      const params = sql.includes('$2') ? [keyIds, orgIds] : [keyIds];
      forms[name] = await time(params, sql);
      // The same arrays sent as one array literal each, built by a join instead of pg's per-element serializer.
      forms[`${name}Literal`] = await time(params.map(uuidArrayLiteral), sql);
    }
    return forms;
  } finally {
    await db.client.releaseConnection(connection);
  }
}

// The fold's reading and decoding of every log row, in a transaction rolled back: the log is left
// for the fold timed after it.
async function takeOnly(db: Db, orgIds: string[]) {
  const trx = await db.transaction();
  try {
    const cursor = (await connectionOf(trx)).query(new Cursor<{ org_id: string; key_id: string; delta: string }>(TAKE_LOG, [[...new Set(orgIds)]]));
    const coalescer = new DeltaCoalescer();
    let [readMs, decodeMs] = [0, 0];
    for (;;) {
      const read = await timed(() => cursor.read(TAKE_BATCH_ROWS));
      readMs += read.ms;
      if (read.value.length === 0) break;
      const started = performance.now();
      for (const row of read.value) coalescer.add(decodeDelta(row.key_id, row.org_id, row.delta));
      decodeMs += performance.now() - started;
    }
    return { readMs, decodeMs: Math.round(decodeMs), keys: coalescer.keys().length };
  } finally {
    await trx.rollback();
  }
}

async function main() {
  const bench = await openBenchDatabase(() => undefined);
  try {
    const { orgIds, keyIds } = await createKeysInOrgs(bench.db, 100_000, 100, 'logsteps');
    const { events } = loadConfig({ NODE_ENV: 'development' }).collector;
    const logged = createUsageStore(bench.db, { events, logMinKeys: 1 });
    const direct = createUsageStore(bench.db, { events, logMinKeys: undefined });
    // An append whose keys an earlier one confirmed (COLLECTOR_KNOWN_KEYS_TTL_MS), beside one that asks.
    const trusting = createUsageStore(bench.db, { events, logMinKeys: 1 }, new KnownKeys(3_600_000, Date.now));
    const batch = () => {
      const aggregator = new Aggregator({ maxKeys: capHolding(keyIds.length), now: Date.now });
      keyIds.forEach((keyId, i) => aggregator.add({ keyId, orgId: orgIds[i], ip: '10.0.0.1', outcome: 'ok', count: 1 }));
      return { id: randomUUID(), batch: aggregator.drain() };
    };
    await direct.write([batch()]); // the rows created: the rounds update them
    await trusting.write([batch()]); // its keys confirmed
    await logged.fold();
    for (let round = 1; round <= rounds; round++) {
      const checks = await checkForms(bench.db, keyIds, orgIds);
      const directWrite = await timed(() => direct.write([batch()]));
      const append = await timed(() => logged.write([batch()]));
      const appendKnown = await timed(() => trusting.write([batch()]));
      const take = await takeOnly(bench.db, orgIds);
      const fold = await timed(() => logged.fold());
      console.log(
        JSON.stringify({
          round,
          checks,
          directMs: directWrite.ms,
          appendMs: append.ms,
          appendCpuMs: append.cpuMs,
          appendKnownMs: appendKnown.ms,
          appendKnownCpuMs: appendKnown.cpuMs,
          take,
          foldMs: fold.ms,
          foldCpuMs: fold.cpuMs,
        }),
      );
    }
  } finally {
    await bench.close();
  }
}

void main();
