import { performance } from 'node:perf_hooks';
import { BEFORE_EVERY_ORG, CLAIM, claimDueDeliveries, DUE_ORGS } from '../collector/webhookStore';
import { TABLE } from '../shared/tables';
import { DUE_ALONE, DUE_PER_ORG } from '../migrations/20261205000160_webhook_deliveries_due_per_org';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { orgsWithDueDeliveries } from './lib/database';
import { fmt, type BenchResult } from './lib/report';
import { median } from './lib/stats';

// Benchmark 4e. What the webhook worker's claim costs beside one org's backlog (a receiver that
// never answers, every event of 100,000 keys × its webhooks): one org with N due deliveries, a
// second with N / 10 due after them, and 100 orgs with one each; then 10,000 orgs with a webhook
// and nothing due (what every idle poll costs). Side by side, round by round: the statements
// before migration 20261205000160 (the due orgs read from every due delivery, through the index
// over next_attempt_at, which the round builds again in place of the new one) and after it (a
// probe per org with a webhook, the index over (org_id, next_attempt_at)). Claims are rolled
// back, so every round sees the same rows.

const PREVIOUS_DUE_ORGS = `
select org_id from ${TABLE.webhookDeliveries}
 where status = 'pending' and next_attempt_at <= now()
 group by org_id order by min(next_attempt_at)
 limit :limit`;
const FIRST_TURN = { limit: 10, after: BEFORE_EVERY_ORG };

type Variant = 'before' | 'after';
interface Sample {
  backlog: number;
  variant: Variant;
  dueOrgsMs: number;
  /** One claim of 5 of the backlogged org's deliveries. */
  backlogClaimMs: number;
  /** One claim of 5 of the second backlog's, due after every one of the first's. */
  newerBacklogClaimMs: number;
  /** One claim of a small org's delivery (its one delivery is newer than the whole backlog). */
  smallClaimMs: number;
  /** claimDueDeliveries as the worker calls it, limit 10 (after only). */
  workerClaimMs?: number;
}

async function timed(run: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await run();
  return performance.now() - started;
}

// Runs `work` in a transaction rolled back after it: claims change nothing between rounds.
async function rolledBack(ctx: BenchContext, work: (trx: BenchContext['db']) => Promise<unknown>): Promise<number> {
  const trx = await ctx.db.transaction();
  try {
    return await timed(() => work(trx));
  } finally {
    await trx.rollback();
  }
}

// The planner chooses among the indexes there are: the schema before the migration had the old one alone.
async function swapIndex(ctx: BenchContext, drop: { name: string }, build: { name: string; on: string }): Promise<void> {
  await ctx.db.raw('drop index ??', [drop.name]);
  await ctx.db.raw(`create index ?? on ${build.on}`, [build.name]);
}

interface Orgs {
  backlogged: string;
  newer: string;
  small: string;
}

async function measureRound(ctx: BenchContext, backlog: number, orgs: Orgs, variant: Variant): Promise<Sample> {
  if (variant === 'before') await swapIndex(ctx, DUE_PER_ORG, DUE_ALONE);
  try {
    const claimOf = (orgId: string, limit: number) => (trx: BenchContext['db']) => trx.raw(CLAIM, { orgId, limit, leaseMs: 60_000, maxAttempts: 8 });
    const sample: Sample = {
      backlog,
      variant,
      dueOrgsMs: await timed(() => ctx.db.raw(variant === 'before' ? PREVIOUS_DUE_ORGS : DUE_ORGS, FIRST_TURN)),
      backlogClaimMs: await rolledBack(ctx, claimOf(orgs.backlogged, 5)),
      newerBacklogClaimMs: await rolledBack(ctx, claimOf(orgs.newer, 5)),
      smallClaimMs: await rolledBack(ctx, claimOf(orgs.small, 5)),
    };
    if (variant === 'after')
      sample.workerClaimMs = await rolledBack(ctx, (trx) => claimDueDeliveries(trx, { leaseMs: 60_000, limit: 10, maxAttempts: 8, maxPerOrg: 5 }));
    return sample;
  } finally {
    if (variant === 'before') await swapIndex(ctx, DUE_ALONE, DUE_PER_ORG);
  }
}

// Webhooks and their deliveries of the shape before: the orgs with a webhook are this shape's alone.
const clearWebhooks = (ctx: BenchContext) => ctx.db.raw(`truncate ${TABLE.webhooks} cascade`);

async function measureBacklog(ctx: BenchContext, backlog: number, smallOrgs: number, rounds: number): Promise<Sample[]> {
  await clearWebhooks(ctx);
  const dueAt = new Date(Date.now() - 3_600_000);
  const [backlogged] = await orgsWithDueDeliveries(ctx.db, 1, backlog, dueAt);
  const [newer] = await orgsWithDueDeliveries(ctx.db, 1, backlog / 10, new Date(dueAt.getTime() + 30_000));
  const smalls = await orgsWithDueDeliveries(ctx.db, smallOrgs, 1, new Date(dueAt.getTime() + 60_000));
  const samples: Sample[] = [];
  for (let round = 0; round < rounds; round++) {
    ctx.log(`webhook claim: backlog ${fmt.int(backlog)}, round ${round + 1}/${rounds}`);
    // Alternate which goes first, so neither always meets a cold cache.
    const order: Variant[] = round % 2 === 0 ? ['before', 'after'] : ['after', 'before'];
    for (const variant of order) samples.push(await measureRound(ctx, backlog, { backlogged, newer, small: smalls[round % smalls.length] }, variant));
  }
  return samples;
}

// What the read of the orgs costs when nothing is due, every poll: before, one empty range of the
// due index; after, a probe per org with a webhook.
async function measureIdle(ctx: BenchContext, orgs: number, rounds: number): Promise<Record<Variant, number[]>> {
  await clearWebhooks(ctx);
  await orgsWithDueDeliveries(ctx.db, orgs, 0, new Date());
  const times: Record<Variant, number[]> = { before: [], after: [] };
  for (let round = 0; round < rounds; round++) {
    ctx.log(`webhook claim: ${fmt.int(orgs)} orgs with a webhook, nothing due, round ${round + 1}/${rounds}`);
    await swapIndex(ctx, DUE_PER_ORG, DUE_ALONE);
    times.before.push(await timed(() => ctx.db.raw(PREVIOUS_DUE_ORGS, FIRST_TURN)));
    await swapIndex(ctx, DUE_ALONE, DUE_PER_ORG);
    times.after.push(await timed(() => ctx.db.raw(DUE_ORGS, FIRST_TURN)));
  }
  return times;
}

const cell = (values: number[]) => `${fmt.ms(median(values), 1)} (worst ${fmt.ms(Math.max(...values), 1)})`;

export async function runWebhookClaim(ctx: BenchContext): Promise<BenchResult> {
  const backlogs = ctx.quick ? [2_000] : [100_000, 1_000_000];
  const smallOrgs = ctx.quick ? 10 : 100;
  const idleOrgs = ctx.quick ? 20 : 10_000;
  const rounds = ctx.quick ? 2 : 7;
  const samples: Sample[] = [];
  let idle: Record<Variant, number[]>;
  try {
    for (const backlog of backlogs) samples.push(...(await measureBacklog(ctx, backlog, smallOrgs, rounds)));
    idle = await measureIdle(ctx, idleOrgs, rounds);
  } finally {
    await clearWebhooks(ctx);
  }
  const rows = backlogs.flatMap((backlog) =>
    (['before', 'after'] as const).map((variant) => {
      const mine = samples.filter((s) => s.backlog === backlog && s.variant === variant);
      const worker = mine.flatMap((s) => (s.workerClaimMs === undefined ? [] : [s.workerClaimMs]));
      return [
        `${fmt.int(backlog)} + ${fmt.int(backlog / 10)} + ${smallOrgs} × 1`,
        variant === 'before' ? 'before 20261205000160' : 'after',
        cell(mine.map((s) => s.dueOrgsMs)),
        cell(mine.map((s) => s.backlogClaimMs)),
        cell(mine.map((s) => s.newerBacklogClaimMs)),
        cell(mine.map((s) => s.smallClaimMs)),
        worker.length > 0 ? cell(worker) : '–',
      ];
    }),
  );
  return {
    heading: HEADINGS.webhookClaim,
    tables: [
      {
        title: `one org's backlog of due deliveries, a second org's of a tenth due after it, and ${smallOrgs} orgs with one each; ${rounds} rounds a variant, alternated; median (worst)`,
        columns: [
          'due deliveries',
          'schema and statements',
          'orgs with due deliveries',
          "claim 5 of the backlog's",
          "claim 5 of the second backlog's",
          "claim a small org's",
          'a worker claim of 10',
        ],
        rows,
      },
      {
        title: `${fmt.int(idleOrgs)} orgs with a webhook and nothing due: the read of the orgs with due deliveries, which every poll makes; ${rounds} rounds, alternated; median (worst)`,
        columns: ['schema and statements', 'orgs with due deliveries'],
        rows: [
          ['before 20261205000160', cell(idle.before)],
          ['after', cell(idle.after)],
        ],
      },
    ],
    notes: [
      'Each claim runs in a transaction rolled back after it, so every round sees the same rows. The worker poll runs the read of the orgs after each send ends and every WEBHOOK_POLL_INTERVAL_MS, so its cost repeats as long as the backlog lasts.',
    ],
    raw: { backlogs, smallOrgs, idleOrgs, rounds, samples, idle },
  };
}
