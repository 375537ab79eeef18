import http from 'node:http';
import type { Test } from 'tap';
import { closeServer, listen } from '../../shared/process';

export interface ReceivedRequest {
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}

// A webhook receiver on 127.0.0.1 that records every request and answers as `respond` says
// (by the request's index, from 0); `respond` may also take over the response itself.
export async function startWebhookReceiver(t: Test, respond: (index: number, res: http.ServerResponse) => number | 'handled' = () => 200) {
  const requests: ReceivedRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      requests.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), at: Date.now() });
      const status = respond(requests.length - 1, res);
      if (status !== 'handled') res.writeHead(status).end();
    });
  });
  const port = await listen(server, '127.0.0.1', 0, 'receiver');
  t.teardown(() => {
    server.closeAllConnections();
    return closeServer(server);
  });
  return { url: `http://127.0.0.1:${port}/hook`, port, requests };
}
