import type { RequestHandler } from 'express';
import { z } from 'zod';
import { databaseAnswers, type Db } from '../shared/db';
import { within } from '../shared/within';

// Load balancers and probes may ask every instance many times a second, and /healthz needs no key:
// without a cache anyone could turn it into a query per request. One answer serves every probe for
// this long after it came, and probes arriving while the query runs share it. Timed from its
// start, a database that answered slowly or not at all (up to DATABASE_REPLY_TIMEOUT_MS, 5 minutes
// by default) got a new query, on a new pool connection, every second, until the pool was full. A
// new one starts only once the last has run HEALTH_ANSWER_MS (one stuck on a dead connection must
// not keep the answer 503 after the database is back), and never more than two at once.
export const HEALTH_CACHE_MS = 1000;
// A probe is answered within this long: a database that has not answered by then is down for it
// (load balancers give up after a few seconds, and a hung probe says nothing).
export const HEALTH_ANSWER_MS = 5000;

// 503 answers the same shape: a probe reads the status code, a person the body.
export const healthBody = z.object({ status: z.enum(['ok', 'unavailable']), database: z.enum(['up', 'down']) }).meta({ id: 'Health' });

// Also the connections of the pool /healthz asks (api/main.ts): its own, so the answer is the
// database's, not the queue of the pool every route shares (made-up keys from many addresses filled
// that one, and /healthz answered 503 "database down" from every instance while PostgreSQL was up:
// a load balancer would have taken them all out). Two, so a query stuck on a dead connection does
// not hold the second.
export const HEALTH_MAX_RUNNING = 2;

export function healthHandler(db: Db, now: () => number): RequestHandler {
  let answered: { at: number; since: number; up: boolean } | undefined;
  const running: Array<{ since: number; up: Promise<boolean> }> = [];
  const query = (at: number): Promise<boolean> => {
    const latest = running.at(-1);
    if (latest && (at - latest.since < HEALTH_ANSWER_MS || running.length >= HEALTH_MAX_RUNNING)) return latest.up;
    const started = {
      since: at,
      up: databaseAnswers(db).then((up) => {
        // A query stuck on a dead connection may end after a newer one: the newer answer stands.
        if (answered === undefined || started.since >= answered.since) answered = { at: now(), since: started.since, up };
        running.splice(running.indexOf(started), 1);
        return up;
      }),
    };
    running.push(started);
    return started.up;
  };
  return async (_req, res) => {
    const at = now();
    const up = answered !== undefined && at - answered.at < HEALTH_CACHE_MS ? answered.up : ((await within(query(at), HEALTH_ANSWER_MS)) ?? false);
    const body: z.output<typeof healthBody> = up ? { status: 'ok', database: 'up' } : { status: 'unavailable', database: 'down' };
    res.status(up ? 200 : 503).json(body);
  };
}
