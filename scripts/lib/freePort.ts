import dgram from 'node:dgram';
import net from 'node:net';

// A port the OS just handed out on 127.0.0.1, for tests and benchmarks that must pass a port to
// another process. Another process could take it before it is used; on loopback that race is rare.

export async function freeTcpPort(): Promise<number> {
  const [port] = await freeTcpPorts(1);
  return port;
}

/**
 * `count` different ports: each is held until all are found, since a port just closed may be
 * handed out again by the next request (two processes given one port: one fails to listen).
 */
export async function freeTcpPorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) servers.push(await listening());
    return servers.map((server) => (server.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  }
}

function listening(): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}
