// One heading per table `npm run bench` prints; test/bench.quick.test.ts checks that each appears.
export const HEADINGS = {
  auth: '1. Auth path: req/s and server CPU per request (tracking off / on / naive UPDATE / hot-shots per request)',
  hook: '2. Usage hook cost inside the running server',
  keyCheck: '2b. Key checks on the auth path: checksum and failure throttle',
  ingest: '3. Collector ingest: our collector vs Etsy statsd 0.9.0',
  parse: '3b. Parse + aggregate in process (one core)',
  ingestManyKeys: '3c. Collector ingest over many distinct keys: our collector vs Etsy statsd 0.9.0',
  parseManyKeys: '3d. Parse + aggregate in process over many distinct keys (one core)',
  flush: '4. Flush: time and SQL statements per flush',
  rowCost: '4b. Row cost: one statement over every key, the floor under a flush',
  hourMove: '4c. Hour move: closed hours into the hourly buckets, up to 1 M keys',
  webhookClaim: "4e. Webhook claim beside one org's backlog of due deliveries",
  endpoint: '5. Usage endpoint: latency and query plan',
  staleness: '6. Staleness: request to visible in the usage endpoint',
  dashboard: '7. Dashboard: time to the first table and page weight (10 k keys)',
} as const;

export type BenchName =
  'auth' | 'hook' | 'keycheck' | 'ingest' | 'ingestkeys' | 'flush' | 'rowcost' | 'hourmove' | 'webhookclaim' | 'endpoint' | 'staleness' | 'dashboard';
export const BENCH_NAMES: readonly BenchName[] = [
  'auth',
  'hook',
  'keycheck',
  'ingest',
  'ingestkeys',
  'flush',
  'rowcost',
  'hourmove',
  'webhookclaim',
  'endpoint',
  'staleness',
  'dashboard',
];
