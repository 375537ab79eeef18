import type { Knex } from 'knex';
import type { Config } from '../shared/config';
import { expireIpData } from '../shared/ipRetention';
import { expireListeningSpans } from './listeningSpan';
import type { Logger } from '../shared/logger';
import { EventSweep } from './eventSweep';
import { expireOldEvents } from './eventStore';
import { closedBefore, HOUR_MOVE, moveClosedHours } from './hourMove';
import type { UsageStore } from './usageStore';
import { createWebhookWorker } from './webhookWorker';
import { HOUR_MS } from '../shared/timeUnits';

// The collector's work beside ingest: the webhook worker that delivers the outbox key events
// fill (docs/webhooks.md), the sweep for dormant and expiring keys, the move of closed hours into
// the hourly buckets, and the hourly retention cleanup. With several receiving processes only one
// of them runs it.

// Retention ran only an hour after start (and the hour move five minutes after): a collector
// restarted more often than that (a crash loop, short-lived sidecars) never erased an address or
// expired a row, nor moved a closed hour. A minute lets the start settle first.
const FIRST_RETENTION_MS = 60_000;

export interface UpkeepOptions {
  db: Knex;
  store: UsageStore;
  config: Config;
  logger: Logger;
  now: () => number;
  /** How often closed hours are moved and retention runs, and when both first run; tests shorten them. */
  intervals?: { moveHoursMs: number; retentionMs: number; firstRetentionMs: number };
}

export function createUpkeep(options: UpkeepOptions) {
  const { db, config, logger, now } = options;
  const intervals = options.intervals ?? { moveHoursMs: HOUR_MOVE.intervalMs, retentionMs: HOUR_MS, firstRetentionMs: FIRST_RETENTION_MS };
  const events = config.collector.events;
  const sweep = new EventSweep({
    db,
    intervalMs: events.sweepIntervalMs,
    expiringDays: events.expiringDays,
    retentionDays: events.retentionDays,
    newIpPerKeyHour: events.newIpPerKeyHour,
    maxPerOrgHour: events.maxPerOrgHour,
    logger,
    now,
  });
  // KEY_PEPPER_NEXT too: mid-rotation, an API already on it seals the webhook secrets it makes with it.
  const peppers = [config.api.keyPepper, ...config.api.previousKeyPeppers, config.api.nextKeyPepper].filter((pepper) => pepper !== null);
  const webhooks = createWebhookWorker({ db, peppers, config: config.webhooks, logger, now });
  let stopped = false;
  let firstRetention: NodeJS.Timeout | undefined;
  let retention: NodeJS.Timeout | undefined;
  let mover: NodeJS.Timeout | undefined;
  // Failures of the jobs that only log otherwise: retried at their next run, but a job that keeps
  // failing kept addresses past IP_RETENTION_DAYS, or left readers summing two bucket tables, with
  // one warning an hour to show for it. Counted once per run, however many of its parts failed.
  const stats = { failedHourMoves: 0, failedRetentions: 0 };
  const warn = (message: string) => (error: Error) => logger.warn({ err: { message: error.message } }, message);
  // One move at a time: a tick that finds one still running skips, and stop() waits for it.
  let moving: Promise<void> | undefined;
  const moveHours = () => {
    moving ??= moveClosedHours(db, closedBefore(now()))
      .then(
        () => undefined,
        (error: Error) => {
          stats.failedHourMoves += 1;
          warn('moving closed hours failed')(error);
        },
      )
      .finally(() => (moving = undefined));
  };
  // One cleanup at a time too: on Citus each of its deletes runs on every shard, and cleanups
  // started while earlier ones ran piled up on the pool until other statements timed out
  // waiting for a connection (test/hourMove.test.ts, under npm run test:citus).
  let cleaning: Promise<void> | undefined;
  const cleanUp = () => {
    cleaning ??= retentionRun(
      options,
      warn,
      () => stopped,
      (deliveries) => (webhooks.stats.gaveUp += deliveries),
    )
      .then((succeeded) => {
        if (!succeeded) stats.failedRetentions += 1;
      })
      .finally(() => (cleaning = undefined));
  };
  return {
    stats,
    sweep,
    webhooks,
    start(): void {
      webhooks.start();
      if (events.enabled) sweep.start();
      // The first move after the first retention, not beside it: the sweep's first tick may come
      // too, and the pool holds one connection for upkeep.
      firstRetention = setTimeout(() => {
        cleanUp();
        void cleaning?.then(() => {
          if (!stopped) moveHours();
        });
      }, intervals.firstRetentionMs).unref();
      retention = setInterval(cleanUp, intervals.retentionMs).unref();
      mover = setInterval(moveHours, intervals.moveHoursMs).unref();
    },
    /** Sends in flight are recorded; anything not yet sent stays in the outbox for the next start. */
    async stop(): Promise<void> {
      stopped = true;
      clearTimeout(firstRetention);
      clearInterval(retention);
      clearInterval(mover);
      // Every part stops claiming at once: the collector waits for upkeep only until its final
      // flush's deadline, and the webhook worker, stopped last, went on claiming (an attempt used up
      // and a send begun by a process about to exit) while a retention pass ran.
      await Promise.all([moving, cleaning, sweep.stop(), webhooks.stop()]);
    },
  };
}

export type Upkeep = ReturnType<typeof createUpkeep>;

// One retention run: usage rows and events past their retention, addresses past IP_RETENTION_DAYS,
// collectors' listening spans past the longest dormancy window.
// The parts run in turn, each on one connection: run at once they held three of the pool's
// connections (sized with one for upkeep), and with the hour move and the sweep on the same tick
// the flush waited for a connection. Each logs its own failure and the next still runs (until a
// stop); the run failed if any did.
async function retentionRun(
  options: UpkeepOptions,
  warn: (message: string) => (error: Error) => void,
  stopped: () => boolean,
  gaveUp: (deliveries: number) => void,
): Promise<boolean> {
  const { db, store, config } = options;
  const parts: Array<[string, () => Promise<unknown>]> = [
    ['retention cleanup failed', () => store.expireOldRows(config.collector.retentionDays)],
    ['retention cleanup failed', () => expireEvents(options, gaveUp)],
    ['IP retention cleanup failed', () => expireIpData(db, config.privacy.ipRetentionDays)],
    ['retention cleanup failed', () => expireListeningSpans(db, options.now())],
  ];
  let succeeded = true;
  for (const [message, part] of parts) {
    // At stop, the part running ends and no other begins beside the final flush.
    if (stopped()) break;
    try {
      await part();
    } catch (error) {
      warn(message)(error as Error);
      succeeded = false;
    }
  }
  return succeeded;
}

// Deliveries failed by retention are counted and logged as the worker's given up: each has its
// attempt saying why in its webhook's delivery log only until the next run deletes it.
async function expireEvents({ db, config, logger, now }: UpkeepOptions, gaveUp: (deliveries: number) => void): Promise<void> {
  const retentionDays = config.collector.events.retentionDays;
  const expired = await expireOldEvents(db, new Date(now()), retentionDays);
  if (expired === 0) return;
  gaveUp(expired);
  logger.error(
    { deliveries: expired, retentionDays },
    'webhook deliveries failed: still pending after EVENTS_RETENTION_DAYS, unsent; their payloads copy events kept no longer',
  );
}
