import dns from 'node:dns';
import type { SocketOptions } from 'node:dgram';
import { isIP } from 'node:net';
import { StatsD } from 'hot-shots';
import { steadyNow } from '../../shared/steadyClock';
import type { DatagramSink } from './usageRecorder';

// hot-shots' public send() rewrites tags and may append DogStatsD extension fields; our lines are
// already encoded and packed, so they go straight to its transport through sendMessage().
interface RawSender {
  sendMessage(message: string, callback: (error?: Error | null) => void): void;
}

/** How long a host name's address is used before it is looked up again. */
export const COLLECTOR_ADDRESS_TTL_MS = 60_000;

/** How long a send waits for the first address of a host name before it fails. */
export const COLLECTOR_LOOKUP_TIMEOUT_MS = 5_000;

type Resolve = (hostname: string, options: { family: 4 }, callback: (error: Error | null, address: string) => void) => void;
type LookupCallback = (error: Error | null, address: string, family: number) => void;

// A host name's IPv4 address, looked up once a minute; while a lookup fails or hangs, the last
// address that worked. hot-shots' own cache (cacheDns) looked the name up with no family for its
// udp4 socket: a name whose first address is IPv6 (localhost, on many hosts) failed every send
// (EINVAL), and a refresh failing (the resolver down a moment) failed the datagram instead of
// keeping an address that had not changed. IPv4, as the collector binds a name (a udp4 socket).
//
// One lookup at a time, shared by every send, and a send never waits for it once an address is
// known: a refresh that hung (each send starting its own) held every send after the minute, so
// the recorder's backlog bound failed their uses although an address was cached, and each hung
// dns.lookup held one of libuv's four threads (see shared/lookupSlots.ts). Node cannot cancel a
// lookup, so none starts until the last one has ended, even past its deadline; the deadline is
// for the sends waiting on the first address (nothing cached), which then fail. One host name per
// lookup (one sink): the cache does not look at the name.
export function cachedIpv4Lookup(
  resolve: Resolve = dns.lookup,
  now: () => number = steadyNow,
  timeoutMs = COLLECTOR_LOOKUP_TIMEOUT_MS,
): NonNullable<SocketOptions['lookup']> {
  let cached: { address: string; at: number } | undefined;
  let resolving = false;
  let waiting: LookupCallback[] = [];
  let deadline: NodeJS.Timeout | undefined;

  function answerWaiting(error: Error | null): void {
    clearTimeout(deadline);
    deadline = undefined;
    const callers = waiting;
    waiting = [];
    for (const callback of callers) {
      if (cached) callback(null, cached.address, 4);
      else callback(error, '', 4);
    }
  }

  function refresh(hostname: string): void {
    resolving = true;
    resolve(hostname, { family: 4 }, (error, address) => {
      resolving = false;
      if (!error) cached = { address, at: now() };
      answerWaiting(error);
    });
  }

  return (hostname, _options, callback: LookupCallback) => {
    // The socket's own bind (0.0.0.0, before its first send) goes through this lookup too.
    if (isIP(hostname)) {
      process.nextTick(() => callback(null, hostname, isIP(hostname)));
      return;
    }
    if (cached) {
      const { address } = cached;
      process.nextTick(() => callback(null, address, 4));
    } else {
      waiting.push(callback);
      deadline ??= setTimeout(
        () => answerWaiting(Object.assign(new Error(`lookup of ${hostname} timed out after ${timeoutMs} ms`), { code: 'ETIMEOUT' })),
        timeoutMs,
      );
    }
    if (!resolving && (!cached || now() - cached.at >= COLLECTOR_ADDRESS_TTL_MS)) refresh(hostname);
  };
}

export function createStatsdSink(options: { host: string; port: number; onError: (error: Error) => void; resolve?: Resolve }): DatagramSink {
  const client = new StatsD({
    host: options.host,
    port: options.port,
    protocol: 'udp',
    maxBufferSize: 0,
    // Any DD_* variable (DD_ENV, DD_SERVICE… set on every pod by Datadog's tooling) turned on
    // hot-shots' Datadog mode and its client telemetry: datagrams of its own to the collector,
    // never signed, which kept its forged-datagram alert firing.
    datadog: false,
    includeDatadogTelemetry: false,
    // An address is sent to as it is (hot-shots picks udp4 or udp6 by it); a name through the
    // lookup above, on a udp4 socket.
    ...(isIP(options.host) ? {} : { udpSocketOptions: { type: 'udp4' as const, lookup: cachedIpv4Lookup(options.resolve) } }),
    // Without an errorHandler hot-shots re-throws some socket errors; usage must never throw.
    errorHandler: options.onError,
  });
  const raw = client as unknown as RawSender;
  return {
    send: (datagram, done) => raw.sendMessage(datagram, done),
    close: () => new Promise<void>((resolve) => client.close(() => resolve())),
  };
}
