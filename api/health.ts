import type { RequestHandler } from 'express';
import { z } from 'zod';
import { databaseAnswers, type Db } from '../shared/db';
import { within } from '../shared/within';

// Load balancers and probes may ask every instance many times a second, and /healthz needs no key:
// without a cache anyone could turn it into a query per request. One answer serves every probe for
// this long after it came, and probes arriving while the query runs share it. At most one query
// runs: timed from its start, a database that answered slowly or not at all (up to
// DATABASE_REPLY_TIMEOUT_MS, 5 minutes by default) got a new query, on a new pool connection, every
// second, until the pool was full.
export const HEALTH_CACHE_MS = 1000;
// A probe is answered within this long: a database that has not answered by then is down for it
// (load balancers give up after a few seconds, and a hung probe says nothing).
export const HEALTH_ANSWER_MS = 5000;

// 503 answers the same shape: a probe reads the status code, a person the body.
export const healthBody = z.object({ status: z.enum(['ok', 'unavailable']), database: z.enum(['up', 'down']) }).meta({ id: 'Health' });

export function healthHandler(db: Db, now: () => number): RequestHandler {
  let answered: { at: number; up: boolean } | undefined;
  let running: Promise<boolean> | undefined;
  const query = () =>
    (running ??= databaseAnswers(db).then((up) => {
      answered = { at: now(), up };
      running = undefined;
      return up;
    }));
  return async (_req, res) => {
    const up = answered !== undefined && now() - answered.at < HEALTH_CACHE_MS ? answered.up : ((await within(query(), HEALTH_ANSWER_MS)) ?? false);
    const body: z.output<typeof healthBody> = up ? { status: 'ok', database: 'up' } : { status: 'unavailable', database: 'down' };
    res.status(up ? 200 : 503).json(body);
  };
}
