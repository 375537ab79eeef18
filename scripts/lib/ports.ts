import dgram from 'node:dgram';
import net from 'node:net';

// Every port `npm start` will need, checked before anything is started.

export interface PortNeed {
  variable: string;
  host: string;
  port: number;
  protocol: 'tcp' | 'udp';
}

function probe(need: PortNeed): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    if (need.protocol === 'udp') {
      const socket = dgram.createSocket(net.isIPv6(need.host) ? 'udp6' : 'udp4');
      socket.once('error', (error) => {
        socket.close();
        resolve(error);
      });
      socket.bind(need.port, need.host, () => socket.close(() => resolve(undefined)));
    } else {
      const server = net.createServer();
      server.once('error', (error) => resolve(error));
      server.listen({ port: need.port, host: need.host, exclusive: true }, () => server.close(() => resolve(undefined)));
    }
  });
}

// Zero ports and clashes are found without binding anything.
function settingProblems(needs: PortNeed[]): string[] {
  const problems: string[] = [];
  for (const need of needs) {
    if (need.port === 0) {
      problems.push(`${need.variable} is 0: npm start needs a fixed port, so set ${need.variable} to a free port`);
    }
  }
  for (const [index, need] of needs.entries()) {
    const clash = needs.slice(0, index).find((other) => other.port === need.port && other.protocol === need.protocol && need.port !== 0);
    if (clash) problems.push(`${clash.variable} and ${need.variable} are both ${need.port}; set ${need.variable} to another port`);
  }
  return problems;
}

// Every problem at once, each naming the port and the variable that changes it.
export async function portProblems(needs: PortNeed[]): Promise<string[]> {
  const problems = settingProblems(needs);
  if (problems.length > 0) return problems;
  for (const need of needs) {
    const error = await probe(need);
    if (!error) continue;
    const why =
      error.code === 'EADDRINUSE' ? 'is already in use' : error.code === 'EACCES' ? 'needs privileges' : `cannot be bound (${error.code ?? error.message})`;
    const spare = await sparePort(need, needs);
    const example = spare === undefined ? '' : `, e.g. ${need.variable}=${spare} npm start`;
    problems.push(`Port ${need.port} (${need.protocol.toUpperCase()} on ${need.host}) ${why}; set ${need.variable} to a free port${example}`);
  }
  return problems;
}

// The example a problem gives must work when followed: port + 1 was often another of npm start's
// own ports (9102's next is the API's metrics port), and following it gave a clash (a review).
const SPARE_TRIES = 20;

async function sparePort(need: PortNeed, needs: readonly PortNeed[]): Promise<number | undefined> {
  for (let port = need.port + 1; port <= Math.min(65_535, need.port + SPARE_TRIES); port++) {
    if (needs.some((other) => other.port === port)) continue;
    if ((await probe({ ...need, port })) === undefined) return port;
  }
  return undefined;
}

/** A host for URLs that reach a listener bound to `host` (a wildcard becomes loopback). */
export const urlHost = (host: string) => {
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return net.isIPv6(reachable) ? `[${reachable}]` : reachable;
};
