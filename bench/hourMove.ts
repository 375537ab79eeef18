import { performance } from 'node:perf_hooks';
import { HOUR_MOVE, moveClosedHours } from '../collector/hourMove';
import { TABLE } from '../shared/tables';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { walPosition, walSince } from './lib/database';
import { fmt, type BenchResult } from './lib/report';
import { median } from './lib/stats';
import { HOUR_MS } from '../shared/timeUnits';

// Benchmark 4c. What the upkeep's hour move (collector/hourMove.ts) costs when every key was used
// in the hour that closed: N current-hour rows, in one org or spread over many, moved into the
// hourly buckets by moveClosedHours, as the upkeep calls it. Each round seeds a later hour for the
// same keys, so every row moved makes a new hourly bucket (as a closed hour does) and the hourly
// table grows round by round. The rows are made in SQL: the hour tables have no foreign key to
// api_keys, and the move reads nothing else.

interface Shape {
  keys: number;
  orgs: number;
}

interface Sample {
  shape: string;
  round: number;
  moved: number;
  wallMs: number;
  walBytes: number;
  /** The longest statement the move sent (its list of orgs included): a chunk holds its rows that long at most. */
  longestStatementMs: number;
}

const SCRATCH_KEYS = 'bench_hourmove_keys';
const shapeName = ({ keys, orgs }: Shape) => `${fmt.int(keys)} keys in ${fmt.int(orgs)} org${orgs === 1 ? '' : 's'}`;

async function seedKeys(ctx: BenchContext, { keys, orgs }: Shape): Promise<void> {
  await ctx.db.raw(`drop table if exists ${SCRATCH_KEYS}`);
  await ctx.db.raw(
    `create table ${SCRATCH_KEYS} as
     select o.org_id, gen_random_uuid() as key_id
       from (select gen_random_uuid() as org_id from generate_series(1, cast(:orgs as int))) o,
            generate_series(1, cast(:perOrg as int))`,
    { orgs, perOrg: Math.ceil(keys / orgs) },
  );
}

// One hour of use for every scratch key, analyzed as autovacuum would have by the time it closes.
async function seedHour(ctx: BenchContext, hour: Date): Promise<void> {
  await ctx.db.raw(
    `insert into ${TABLE.usageCurrentHours} (org_id, key_id, hour, request_count, ok_count)
     select org_id, key_id, :hour, 3, 3 from ${SCRATCH_KEYS} order by org_id, key_id`,
    { hour },
  );
  await ctx.db.raw(`analyze ${TABLE.usageCurrentHours}`);
}

// The wall time of each statement the move sends (the list of orgs, then the chunks), from knex's query events.
function timeStatements(ctx: BenchContext) {
  const startedAt = new Map<string, number>();
  const durations: number[] = [];
  const onQuery = (query: { __knexQueryUid: string }) => void startedAt.set(query.__knexQueryUid, performance.now());
  const onResponse = (_response: unknown, query: { __knexQueryUid: string }) => {
    const started = startedAt.get(query.__knexQueryUid);
    if (started !== undefined) durations.push(performance.now() - started);
  };
  ctx.db.on('query', onQuery);
  ctx.db.on('query-response', onResponse);
  const stop = () => {
    ctx.db.off('query', onQuery);
    ctx.db.off('query-response', onResponse);
  };
  return { durations, stop };
}

async function measureShape(ctx: BenchContext, shape: Shape, rounds: number, firstHour: number): Promise<Sample[]> {
  await seedKeys(ctx, shape);
  const samples: Sample[] = [];
  for (let round = 0; round < rounds; round++) {
    const hour = new Date(firstHour + round * HOUR_MS);
    ctx.log(`hour move: ${shapeName(shape)}, round ${round + 1}/${rounds}`);
    await seedHour(ctx, hour);
    const walBefore = await walPosition(ctx.db);
    const statements = timeStatements(ctx);
    const started = performance.now();
    const moved = await moveClosedHours(ctx.db, new Date(hour.getTime() + HOUR_MS)).finally(statements.stop);
    const wallMs = performance.now() - started;
    if (moved !== shape.keys) throw new Error(`the hour move moved ${moved} rows of ${shape.keys}`);
    const longestStatementMs = Math.max(...statements.durations);
    samples.push({ shape: shapeName(shape), round, moved, wallMs, walBytes: await walSince(ctx.db, walBefore), longestStatementMs });
  }
  return samples;
}

export async function runHourMove(ctx: BenchContext): Promise<BenchResult> {
  const shapes: Shape[] = ctx.quick
    ? [{ keys: 2_000, orgs: 1 }]
    : [
        { keys: 100_000, orgs: 1 },
        { keys: 1_000_000, orgs: 1 },
        { keys: 1_000_000, orgs: 100 },
      ];
  const rounds = ctx.quick ? 1 : 3;
  // Hours long closed, in a year of their own, so no other benchmark's rows are moved with them.
  const firstHour = Date.UTC(2001, 0, 1);
  const samples: Sample[] = [];
  try {
    for (const [i, shape] of shapes.entries()) samples.push(...(await measureShape(ctx, shape, rounds, firstHour + i * rounds * HOUR_MS)));
  } finally {
    await ctx.db.raw(`drop table if exists ${SCRATCH_KEYS}`);
  }
  return report(shapes, rounds, samples);
}

function report(shapes: Shape[], rounds: number, samples: Sample[]): BenchResult {
  const rows = shapes.map((shape) => {
    const mine = samples.filter((s) => s.shape === shapeName(shape));
    const walls = mine.map((s) => s.wallMs);
    return [
      shapeName(shape),
      fmt.ms(median(walls), 0),
      fmt.ms(Math.max(...walls), 0),
      fmt.us((median(walls) * 1000) / shape.keys, 2),
      fmt.ms(Math.max(...mine.map((s) => s.longestStatementMs)), 0),
      `${(median(mine.map((s) => s.walBytes)) / 1e6).toFixed(1)} MB`,
    ];
  });
  return {
    heading: HEADINGS.hourMove,
    tables: [
      {
        title: `every key used in the closed hour; ${rounds} round${rounds === 1 ? '' : 's'} per shape, each a later hour, so each row moved is a new hourly bucket`,
        columns: ['closed hour', 'wall p50', 'wall max', 'per row (p50)', 'longest statement (max)', 'WAL (p50)'],
        rows,
      },
    ],
    notes: [
      `moveClosedHours as the upkeep calls it: one statement per org and chunk of at most ${fmt.int(HOUR_MOVE.chunkRows)} rows, each its own transaction with its COMMIT (fsync on). The longest statement (the list of orgs counted too) bounds how long the move holds the rows it takes: a flush that carries a late use of one of them waits that long. No other flush waits for it: the current hour is not moved, and rows a flush holds are skipped.`,
    ],
    raw: { shapes, rounds, samples },
  };
}
