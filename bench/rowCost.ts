import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Client } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { OUTCOMES } from '../shared/usageWire';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { walPosition, walSince } from './lib/database';
import { fmt, type BenchResult } from './lib/report';
import { interleavedSchedule, median } from './lib/stats';

// Benchmark 4b. What one statement costs per row on this PostgreSQL, with nothing of the flush
// around it: the floor under benchmark 4. Each operation touches every one of N keys once, in its
// own transaction with its COMMIT (fsync on), on scratch tables shaped like the flush's: a
// totals table (the counters of api_key_usage, fillfactor 50, primary key only), an address table
// (api_key_recent_ips' key) and an append-only log without or with an index. The flush of the
// same-address shape is, per key, one row COPYed into each of three staging tables and one upsert
// into each of three tables; the operations below price each kind of step apart, so the sum says
// how far a design with that many steps per key can go.

const counters = ['request_count', ...OUTCOMES.map((outcome) => `${outcome}_count`)];
const LOG_COLUMNS = `org_id uuid, key_id uuid, ${counters.map((c) => `${c} bigint`).join(', ')}, last_used_ms float8, last_ip text`;

const SETUP = `
create table rowcost_totals (org_id uuid, key_id uuid, ${counters.map((c) => `${c} bigint not null default 0`).join(', ')},
  last_used_at timestamptz, last_used_ip text, updated_at timestamptz, primary key (org_id, key_id)) with (fillfactor = 50);
create table rowcost_log (${LOG_COLUMNS});
create table rowcost_log_indexed (${LOG_COLUMNS});
create index on rowcost_log_indexed (org_id, key_id);
create table rowcost_ips (org_id uuid, key_id uuid, ip text, first_seen timestamptz, last_seen timestamptz, n bigint,
  primary key (org_id, key_id, ip)) with (fillfactor = 85);
create temporary table rowcost_staged (${LOG_COLUMNS});`;
const TEARDOWN = 'drop table if exists rowcost_totals, rowcost_log, rowcost_log_indexed, rowcost_ips, rowcost_staged';

const usedAt = `timestamptz 'epoch' + s.last_used_ms * interval '1 millisecond'`;
const add = (column: string) => `${column} = t.${column} + excluded.${column}`;

interface Operation {
  name: string;
  run(client: Client, lines: string, round: number): Promise<unknown>;
}

const copyInto = (table: string) => (client: Client, lines: string) => pipeline(Readable.from([lines]), client.query(copyFrom(`copy ${table} from stdin`)));

const OPERATIONS: Operation[] = [
  { name: 'COPY into a table without an index (an append-only log)', run: copyInto('rowcost_log') },
  { name: 'COPY into a table with an index on (org_id, key_id)', run: copyInto('rowcost_log_indexed') },
  { name: 'UPDATE of every row, nothing joined', run: (client) => client.query('update rowcost_totals set request_count = request_count + 1') },
  {
    name: 'UPDATE joined to the staged rows (hash join)',
    run: (client) =>
      client.query(`update rowcost_totals t set ${counters.map((c) => `${c} = t.${c} + s.${c}`).join(', ')},
        last_used_at = greatest(t.last_used_at, ${usedAt}), last_used_ip = s.last_ip, updated_at = now()
        from rowcost_staged s where t.org_id = s.org_id and t.key_id = s.key_id`),
  },
  {
    name: "INSERT … ON CONFLICT DO UPDATE from the staged rows, key order (the flush's upsert's shape)",
    run: (client) =>
      client.query(`insert into rowcost_totals as t (org_id, key_id, ${counters.join(', ')}, last_used_at, last_used_ip, updated_at)
        select s.org_id, s.key_id, ${counters.map((c) => `s.${c}`).join(', ')}, ${usedAt}, s.last_ip, now()
          from rowcost_staged s order by s.key_id, s.org_id
        on conflict (org_id, key_id) do update set ${counters.map(add).join(', ')},
          last_used_at = greatest(t.last_used_at, excluded.last_used_at), last_used_ip = excluded.last_used_ip, updated_at = excluded.updated_at`),
  },
  {
    name: 'INSERT of a new row per key into a table with a primary key (a new address per key)',
    run: (client, _lines, round) =>
      client.query(
        `insert into rowcost_ips select s.org_id, s.key_id, '10.${round % 250}.' || s.last_ip, now(), now(), 1 from rowcost_staged s order by s.key_id`,
      ),
  },
];

// Of the totals table's updates, the share that were HOT. A backend sends its statistics at most
// once a second unless told to; this one is told, then reads them in a new snapshot.
async function hotShare(client: Client): Promise<number> {
  await client.query('select pg_stat_force_next_flush()');
  await client.query('select pg_stat_clear_snapshot()');
  const { rows } = await client.query<{ updates: string; hot: string }>(
    "select n_tup_upd as updates, n_tup_hot_upd as hot from pg_stat_user_tables where relname = 'rowcost_totals'",
  );
  return Number(rows[0].hot) / Number(rows[0].updates);
}

interface Sample {
  operation: string;
  round: number;
  wallMs: number;
  walBytes: number;
}

// One line per key, in rowcost_log's column order: what a flush would COPY.
function logLines(orgId: string, keyIds: readonly string[]): string {
  const now = Date.now();
  const zeros = OUTCOMES.slice(1).map(() => '0');
  return keyIds.map((keyId, i) => [orgId, keyId, 1, 1, ...zeros, now, `0.${i & 255}`].join('\t') + '\n').join('');
}

async function timed(ctx: BenchContext, client: Client, operation: Operation, lines: string, round: number): Promise<Sample> {
  const walBefore = await walPosition(ctx.db);
  const started = performance.now();
  await client.query('begin');
  await operation.run(client, lines, round);
  await client.query('commit');
  const wallMs = performance.now() - started;
  return { operation: operation.name, round, wallMs, walBytes: await walSince(ctx.db, walBefore) };
}

async function measure(ctx: BenchContext, client: Client, rows: number, rounds: number) {
  await client.query(SETUP);
  const lines = logLines(
    randomUUID(),
    Array.from({ length: rows }, () => randomUUID()),
  );
  await copyInto('rowcost_staged')(client, lines);
  await client.query(`insert into rowcost_totals (org_id, key_id) select org_id, key_id from rowcost_staged`);
  await client.query('vacuum analyze rowcost_totals');
  await client.query('analyze rowcost_staged');
  const samples: Sample[] = [];
  for (const [round, order] of interleavedSchedule(OPERATIONS, rounds).entries()) {
    ctx.log(`row cost: round ${round + 1}/${rounds}`);
    for (const operation of order) samples.push(await timed(ctx, client, operation, lines, round));
  }
  return { samples, hot: await hotShare(client) };
}

export async function runRowCost(ctx: BenchContext): Promise<BenchResult> {
  const rows = ctx.quick ? 2_000 : 100_000;
  const rounds = ctx.quick ? 1 : 5;
  const client = new Client({ connectionString: ctx.databaseUrl, application_name: 'keyusage-bench-rowcost' });
  await client.connect();
  try {
    const { samples, hot } = await measure(ctx, client, rows, rounds);
    return report(rows, rounds, samples, hot);
  } finally {
    await client.query(TEARDOWN).catch(() => undefined);
    await client.end();
  }
}

function report(rows: number, rounds: number, samples: Sample[], hot: number): BenchResult {
  const tableRows = OPERATIONS.map(({ name }) => {
    const mine = samples.filter((s) => s.operation === name);
    const walls = mine.map((s) => s.wallMs);
    return [
      name,
      fmt.ms(median(walls), 0),
      fmt.ms(Math.max(...walls), 0),
      fmt.us((median(walls) * 1000) / rows, 2),
      `${(median(mine.map((s) => s.walBytes)) / 1e6).toFixed(1)} MB`,
    ];
  });
  return {
    heading: HEADINGS.rowCost,
    tables: [
      {
        title: `${fmt.int(rows)} keys, each statement over all of them in its own transaction with its commit; ${rounds} interleaved rounds`,
        columns: ['operation', 'wall p50', 'wall max', 'per row (p50)', 'WAL (p50)'],
        rows: tableRows,
      },
    ],
    notes: [
      `HOT share of the updates of the totals table over every round: ${fmt.pct(hot, 1)}.`,
      'Wall time from BEGIN to the end of COMMIT as the client sees it (the COPY includes sending its text, built beforehand). The staged rows are a temporary table, COPYed once before the rounds, as the flush stages its rows. The sum over the steps a design takes per key is its floor on this server: the same-address flush COPYs three staging tables and upserts three tables.',
    ],
    raw: { rows, rounds, samples },
  };
}
