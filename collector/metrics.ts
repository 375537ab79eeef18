import http from 'node:http';

export interface MetricSample {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  value: number;
}

// Prometheus text exposition, written by hand: a dozen numbers that already live in plain
// objects do not justify a registry library on the collector's hot path.
export function renderPrometheus(samples: readonly MetricSample[]): string {
  return samples
    .map((s) => `# HELP ${s.name} ${s.help}\n# TYPE ${s.name} ${s.type}\n${s.name} ${Number.isFinite(s.value) ? s.value : 0}\n`)
    .join('');
}

export function metricsServer(options: { samples: () => MetricSample[]; health: () => { healthy: boolean; [field: string]: unknown } }) {
  return http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(renderPrometheus(options.samples()));
    } else if (req.method === 'GET' && req.url === '/healthz') {
      const health = options.health();
      res.writeHead(health.healthy ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(health));
    } else {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not found; try /metrics or /healthz' }));
    }
  });
}
