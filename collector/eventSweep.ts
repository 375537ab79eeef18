import type { Db } from '../shared/db';
import type { Logger } from '../shared/logger';
import { sweepTimeEvents } from './eventStore';

export interface EventSweepOptions {
  db: Db;
  intervalMs: number;
  expiringDays: readonly number[];
  /** EVENTS_RETENTION_DAYS: events older than it are not written (retention would delete them). */
  retentionDays: number;
  /** EVENTS_NEW_IP_PER_KEY_HOUR: the sweep raises the key.new_ip events it deferred. */
  newIpPerKeyHour: number;
  /** EVENTS_MAX_PER_ORG_HOUR: deferred networks beyond an org's room wait for the next hour. */
  maxPerOrgHour: number;
  logger: Logger;
  now: () => number;
}

// The time-based events (key.dormant, key.expiring) need no traffic to happen, so no flush sees
// them: a periodic sweep looks for them. It also raises the key.new_ip events the hourly limit
// deferred, which may wait for an hour with room after the key's last use. Each is deduplicated in
// the database, so a sweep that runs twice, or on two collectors, records each event once.
export class EventSweep {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  readonly stats = { sweeps: 0, failedSweeps: 0, eventsRecorded: 0 };

  constructor(private readonly options: EventSweepOptions) {}

  start(): void {
    this.timer ??= setInterval(() => void this.sweep(), this.options.intervalMs).unref();
  }

  /** One sweep; a caller arriving during a sweep shares it. Failures are logged and retried next interval. */
  sweep(): Promise<void> {
    this.running ??= this.sweepOnce().finally(() => (this.running = undefined));
    return this.running;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  private async sweepOnce(): Promise<void> {
    try {
      const { db, now, expiringDays, retentionDays, newIpPerKeyHour, maxPerOrgHour } = this.options;
      const found = await sweepTimeEvents(db, new Date(now()), { expiringDays, retentionDays, newIpPerKeyHour, maxPerOrgHour });
      this.stats.sweeps += 1;
      this.stats.eventsRecorded += found.dormant + found.expiring + found.newIp;
    } catch (error) {
      this.stats.failedSweeps += 1;
      this.options.logger.warn({ err: { message: (error as Error).message } }, 'event sweep failed; retried at the next interval');
    }
  }
}
