import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import { READ_ORG, type Requirement } from '../auth/authorize';
import type { RouteContract } from '../openapi/contract';
import { dateParam, displayName, pagination, parseInput, queryInteger, rangeEndParam, uuid } from '../validation';
import { orgUsageSeries, usageList, usageSeries, type UsageService } from './usage.service';
import { sendCsv } from '../csvResponse';
import { AppError } from '../errors';
import { CSV_HEADER, csvRows, usageCsv } from './usageCsv';

const booleanParam = z.enum(['true', 'false'], { error: 'must be true or false' }).transform((v) => v === 'true');

const listQuery = z
  .object({
    // Absent: every key; true: only dormant keys; false: only keys that are not dormant.
    dormant: booleanParam.optional(),
    status: z.enum(['active', 'revoked', 'expired'], { error: 'must be active, revoked or expired' }).optional(),
    dormantDays: queryInteger(1, 3650, 30),
    sort: z.enum(['createdAt', 'lastUsedAt', 'requestCount'], { error: 'must be createdAt, lastUsedAt or requestCount' }).default('createdAt'),
    order: z.enum(['asc', 'desc'], { error: 'must be asc or desc' }).default('desc'),
    keyId: uuid.optional(),
    createdByKeyId: uuid.optional().meta({ description: 'Only the keys this key created; a key of another org, or none, is a 404' }),
    q: displayName.optional().meta({ description: 'Only the keys whose name or owner contains it, case-insensitively (% and _ taken literally)' }),
    owner: displayName.optional().meta({ description: "Only the keys with this owner, exactly as set (the key's owner)" }),
    after: uuid.optional().meta({
      description:
        "With sort=createdAt: the keys after this one (the previous page's page.nextAfter), filters applied as usual; not with offset. A key of another org, or none, is a 400",
    }),
    ...pagination,
  })
  .strict();

// Over HTTP/1.0 an answer ends at the connection's close, so a report cut short (closed before its
// end) reads as whole; nginx speaks 1.0 to the API unless told proxy_http_version 1.1 (a review).
const HTTP_1_0_REFUSED =
  'The CSV report needs HTTP/1.1: over HTTP/1.0 a report cut short cannot be told from a whole one (behind nginx, set proxy_http_version 1.1)';

// The list's filters; the report has every key they select, oldest first.
const reportQuery = listQuery.pick({ dormant: true, status: true, dormantDays: true, createdByKeyId: true, q: true, owner: true }).strict();

const seriesQuery = z
  .object({
    from: dateParam.optional(),
    to: rangeEndParam.optional(),
    granularity: z.enum(['hour', 'day'], { error: 'must be hour or day' }).default('hour'),
    byOutcome: booleanParam.default(false),
  })
  .strict();

const orgParams = z.object({ id: uuid });
const keyParams = z.object({ id: uuid, keyId: uuid });

export const usageRoutes: RouteContract[] = [
  {
    method: 'get',
    path: '/usage',
    operationId: 'listKeyUsage',
    summary: "The org's keys with their usage: counts by outcome and window, recent addresses, failures, events",
    description:
      "Offset pages (limit, offset) shift when a key enters or leaves the filtered set (created, deleted, revoked, used, expiring, crossing the dormancy threshold): a script that acts on the keys it pages, such as revoking them, walks with `after` (sort=createdAt; page.nextAfter is the next page's) or uses revoke-dormant. During a key's rotation grace period each item also says when its previous secret stops working and when and from where it was last used, as the key's view does (previousSecretExpiresAt, previousSecretLastUsedAt, previousSecretLastUsedIp); null outside a grace period.",
    auth: READ_ORG,
    params: orgParams,
    query: listQuery,
    responses: { 200: { description: 'A page of keys with their usage', body: usageList } },
  },
  {
    method: 'get',
    path: '/usage.csv',
    operationId: 'keyUsageReport',
    summary: 'Every key the filters select with its usage, as CSV (a credential report), oldest first',
    description:
      "The usage list's filters and fields, one line per key, for an access review in a spreadsheet (docs/api-keys.md#the-csv-report). Written as it is read, a page of keys at a time: a key created meanwhile may or may not be in it. A download that fails midway ends without the answer's end, never as a short report.",
    auth: READ_ORG,
    params: orgParams,
    query: reportQuery,
    responses: {
      200: {
        description: 'The keys as CSV (RFC 4180, UTF-8), a header line first',
        body: usageCsv,
        mediaType: 'text/csv',
        headers: { 'Content-Disposition': 'attachment; filename="api-keys-<orgId>.csv": the file name a browser saves it under' },
      },
    },
    errors: ['too_many_requests'],
  },
  {
    method: 'get',
    path: '/:keyId/usage',
    operationId: 'keyUsageSeries',
    summary: "A key's uses per hour or day (at most 2232 buckets; default: the last 7 days)",
    auth: READ_ORG,
    params: keyParams,
    query: seriesQuery,
    responses: { 200: { description: 'The time series', body: usageSeries } },
  },
];

/** Mounted at /api/orgs/:id/usage: the org's uses over time, every key summed. */
export const orgSeriesRoutes: RouteContract[] = [
  {
    method: 'get',
    path: '/',
    operationId: 'orgUsageSeries',
    summary: "The org's uses per hour or day, every key summed, with the keys used (at most 2232 buckets; default: the last 7 days)",
    description:
      "The range and buckets follow the key series' rules, revoked and expired keys included. keysUsed counts keys with a proven use; failed attempts appear in the outcomes only.",
    auth: READ_ORG,
    params: orgParams,
    query: seriesQuery,
    responses: { 200: { description: "The org's time series", body: orgUsageSeries } },
  },
];

export function orgSeriesRouter(deps: { service: UsageService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });
  router.get('/', deps.authorize(READ_ORG), async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    res.json(await deps.service.orgTimeSeries(id, parseInput(seriesQuery, req.query, 'query')));
  });
  return router;
}

export function orgUsageRouter(deps: { service: UsageService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });
  const readUsage = deps.authorize(READ_ORG);

  router.get('/usage', readUsage, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const query = parseInput(listQuery, req.query, 'query');
    res.json(await deps.service.list(id, { ...query, nameOrOwnerContains: query.q }));
  });

  // One report of an org at a time in this process: past its first page a report writes at its
  // client's pace, outside its org's turns (API_MAX_CONCURRENT_PER_ORG), which a slow download
  // held, and a keys:read key's few slow downloads froze its org's API (a review).
  const reportsInProgress = new Set<string>();
  router.get('/usage.csv', readUsage, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const { q, ...query } = parseInput(reportQuery, req.query, 'query');
    if (req.httpVersion === '1.0') throw new AppError('invalid_request', HTTP_1_0_REFUSED);
    if (reportsInProgress.has(id)) {
      res.setHeader('Retry-After', '5');
      throw new AppError('too_many_requests', 'A CSV report of this organization is being written already; retry when it is done');
    }
    // Freed when its writing ends, which a client gone ends at once (api/csvResponse.ts), and
    // only then: freed at the answer's close too, a report still reading its pages (a pipelined
    // one, or one whose client left mid-query) later freed the place of the next report of its
    // org, which then ran beside a third (a review).
    reportsInProgress.add(id);
    try {
      const pages = deps.service.report(id, { ...query, nameOrOwnerContains: q });
      const lines = (async function* () {
        for await (const keys of pages) yield csvRows(keys);
      })();
      await sendCsv(res, `api-keys-${id}.csv`, CSV_HEADER, lines, { onStarted: () => res.locals.releaseOrgTurn?.() });
    } finally {
      reportsInProgress.delete(id);
    }
  });

  router.get('/:keyId/usage', readUsage, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    const query = parseInput(seriesQuery, req.query, 'query');
    res.json(await deps.service.timeSeries(id, keyId, query));
  });

  return router;
}
