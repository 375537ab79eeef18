import http from 'node:http';

// Prometheus text exposition, written by hand for both processes: their numbers already live in
// plain stats objects read at scrape time, and the one labelled series (the API's request
// durations) is a fixed-bucket histogram; neither justifies a registry library on a hot path.

export interface MetricSample {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  value: number;
}

const header = (name: string, help: string, type: string) => `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;

export function renderPrometheus(samples: readonly MetricSample[]): string {
  return samples.map((s) => `${header(s.name, s.help, s.type)}${s.name} ${Number.isFinite(s.value) ? s.value : 0}\n`).join('');
}

export type Labels = Readonly<Record<string, string>>;

const escapeLabel = (value: string) => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const renderLabels = (labels: Labels, extra = '') =>
  `{${[...Object.entries(labels).map(([name, value]) => `${name}="${escapeLabel(value)}"`), ...(extra ? [extra] : [])].join(',')}}`;

interface Series {
  labels: Labels;
  /** Observations per bucket, not cumulative; the last one is +Inf. */
  counts: number[];
  sum: number;
}

// One series per label set, created on its first observation. Callers keep the label values
// bounded (route patterns, never raw paths), so the map stays small.
export class Histogram {
  private readonly series = new Map<string, Series>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly buckets: readonly number[],
  ) {}

  observe(labels: Labels, value: number): void {
    const key = Object.values(labels).join('\u0000');
    let series = this.series.get(key);
    if (!series) {
      series = { labels, counts: new Array<number>(this.buckets.length + 1).fill(0), sum: 0 };
      this.series.set(key, series);
    }
    const bucket = this.buckets.findIndex((bound) => value <= bound);
    series.counts[bucket === -1 ? this.buckets.length : bucket] += 1;
    series.sum += value;
  }

  render(): string {
    let text = header(this.name, this.help, 'histogram');
    for (const { labels, counts, sum } of this.series.values()) {
      let cumulative = 0;
      counts.forEach((count, i) => {
        cumulative += count;
        const le = i < this.buckets.length ? String(this.buckets[i]) : '+Inf';
        text += `${this.name}_bucket${renderLabels(labels, `le="${le}"`)} ${cumulative}\n`;
      });
      text += `${this.name}_sum${renderLabels(labels)} ${sum}\n${this.name}_count${renderLabels(labels)} ${cumulative}\n`;
    }
    return text;
  }
}

export type Health = { healthy: boolean; [field: string]: unknown };

// Either may be asynchronous: a collector with several receiving processes asks them first.
export interface MetricsServerOptions {
  exposition: () => string | Promise<string>;
  /** Answers /healthz (503 when not healthy); without it /healthz and /livez are 404. */
  health?: () => Health | Promise<Health>;
  /** Whether the process's parts answer (/livez: 503 when not); without it, answering is enough. */
  alive?: () => Promise<boolean>;
}

// /healthz says whether the process does its work (a collector's flushes fail while PostgreSQL is
// down); restarted on it, a collector lost the batches it held for the database's return. /livez
// says only that the process answers: the probe to restart on.
const ALIVE = JSON.stringify({ status: 'alive' });
const NOT_ALIVE = JSON.stringify({ status: 'a part of the process does not answer' });

export function metricsServer(options: MetricsServerOptions) {
  return http.createServer((req, res) => {
    const failed = (error: Error) => res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: error.message }));
    if (req.method === 'GET' && req.url === '/metrics') {
      Promise.resolve(options.exposition()).then((text) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text), failed);
    } else if (req.method === 'GET' && req.url === '/livez' && options.health) {
      Promise.resolve(options.alive?.() ?? true).then(
        (alive) => res.writeHead(alive ? 200 : 503, { 'content-type': 'application/json' }).end(alive ? ALIVE : NOT_ALIVE),
        failed,
      );
    } else if (req.method === 'GET' && req.url === '/healthz' && options.health) {
      const { health } = options;
      Promise.resolve(health()).then((h) => res.writeHead(h.healthy ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h)), failed);
    } else {
      res
        .writeHead(404, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: `not found; try /metrics${options.health ? ', /healthz or /livez' : ''}` }));
    }
  });
}
