import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../shared/logger';
import { kernelDropCounter } from './kernelDrops';

export interface Receiver {
  readonly host: string;
  readonly port: number;
  /** What the kernel granted; it caps SO_RCVBUF at net.core.rmem_max. */
  readonly recvBufferBytes: number;
  /**
   * Datagrams the kernel dropped for this socket so far (its receive buffer full) before they were
   * read; read from the kernel at each call. Absent where it does not say (no /proc/net/udp: not Linux).
   */
  readonly kernelDrops?: () => number;
  close(): Promise<void>;
}

// Binds one UDP socket and hands every datagram's bytes to `onPacket`. Socket errors are logged,
// never thrown: a bad packet or a transient error must not take the collector down.
export function startReceiver(options: {
  host: string;
  port: number;
  recvBufferBytes: number;
  /**
   * In a cluster worker: the primary opens the socket once and every worker reads the same one
   * (Node's cluster module with `exclusive: false`), so the kernel hands each datagram to
   * whichever worker reads first.
   */
  shared?: boolean;
  /** Warn when the kernel grants a smaller buffer than asked (default true; one receiver of a cluster warns for the socket they share). */
  reportCappedBuffer?: boolean;
  onPacket: (packet: Buffer) => void;
  logger: Logger;
}): Promise<Receiver> {
  const socket = dgram.createSocket({ type: isIP(options.host) === 6 ? 'udp6' : 'udp4' });
  socket.on('message', (message) => options.onPacket(message));
  return new Promise((resolve, reject) => {
    socket.once('error', (error: NodeJS.ErrnoException) => {
      reject(
        error.code === 'EADDRINUSE' ? new Error(`UDP port ${options.port} on ${options.host} is already in use; set COLLECTOR_PORT to a free port`) : error,
      );
    });
    socket.bind({ port: options.port, address: options.host, exclusive: options.shared !== true }, () => {
      socket.removeAllListeners('error');
      socket.on('error', (error) => options.logger.error({ err: { message: error.message } }, 'udp socket error'));
      try {
        socket.setRecvBufferSize(options.recvBufferBytes);
      } catch (error) {
        options.logger.warn({ err: { message: (error as Error).message } }, 'could not enlarge the UDP receive buffer');
      }
      const recvBufferBytes = grantedRecvBuffer(socket.getRecvBufferSize());
      if (options.reportCappedBuffer !== false) warnIfCapped(options.recvBufferBytes, recvBufferBytes, options.logger);
      const address = socket.address();
      resolve({
        host: address.address,
        port: address.port,
        recvBufferBytes,
        kernelDrops: kernelDropCounter(address),
        close: () => new Promise<void>((done) => socket.close(() => done())),
      });
    });
  });
}

/**
 * Resolves once `received` (a count of datagrams) has not moved for `quietMs`, or once `maxMs` have
 * passed whatever it does: a stop reads what is still arriving (an API's last drain, sent as it
 * stops beside the collector) before closing the socket, and a busy socket cannot hold it up long.
 */
export async function untilQuiet(received: () => number, quietMs: number, maxMs = STOP_QUIET_MAX_MS): Promise<void> {
  let last = received();
  for (let waited = 0; waited < maxMs && quietMs > 0; waited += quietMs) {
    await sleep(quietMs);
    const now = received();
    if (now === last) return;
    last = now;
  }
}

/** The longest a stop reads a socket that is never quiet. */
export const STOP_QUIET_MAX_MS = 2_000;

/**
 * The receive buffer the kernel granted, from what getRecvBufferSize reports: Linux grants at most
 * net.core.rmem_max and reports twice what it granted (the other half is its bookkeeping), so the
 * recv_buffer_bytes gauge read twice the grant, above rmem_max, beside a warning that the grant
 * was capped (a review).
 */
export const grantedRecvBuffer = (reported: number): number => (process.platform === 'linux' ? reported / 2 : reported);

// A capped buffer is the usual cause of datagrams dropped in bursts (a GC pause, a busy core) at
// rates the collector keeps up with on average (docs/benchmarks.md §3), and nothing else would tell
// the operator: the kernel only counts the drops.
function warnIfCapped(requested: number, granted: number, logger: Logger): void {
  if (granted >= requested) return;
  logger.warn(
    { requestedBytes: requested, grantedBytes: granted },
    `the kernel granted a UDP receive buffer of ${granted} bytes of the ${requested} that COLLECTOR_RECV_BUFFER_BYTES asks for; ` +
      `raise net.core.rmem_max (sysctl -w net.core.rmem_max=${requested}) or bursts of datagrams will be dropped`,
  );
}
