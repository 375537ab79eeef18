import { ConfigError, type Config } from '../../shared/config';
import { SIGNATURE_LINE_BYTES } from '../../shared/datagramSignature';
import type { Logger } from '../../shared/logger';
import { MAX_DATAGRAM_BYTES } from '../../shared/usageWire';
import { signingSink } from './signingSink';
import { createStatsdSink } from './statsdSink';
import { UsageRecorder } from './usageRecorder';

// The recorder as the API runs it: hot-shots over UDP to the collector, signed when a signing
// secret is set (leaving room in each datagram for the signature line).
export function createUsageRecorder(usage: Config['usage'], logger: Logger): UsageRecorder {
  // 0 lets the collector bind a port of the system's choice; hot-shots took it as "unset" and sent
  // to 8125, where on loopback nothing listening raises no error: every use lost, silently.
  if (usage.collectorPort === 0) throw new ConfigError(['COLLECTOR_PORT: 0 is only for a collector; the API must be given the port the collector listens on']);
  return new UsageRecorder({
    sink: signingSink(
      createStatsdSink({
        host: usage.collectorHost,
        port: usage.collectorPort,
        onError: (error) => logger.warn({ err: { message: error.message } }, 'usage socket error'),
      }),
      usage.signingSecret,
    ),
    maxDatagramBytes: usage.signingSecret === undefined ? MAX_DATAGRAM_BYTES : MAX_DATAGRAM_BYTES - SIGNATURE_LINE_BYTES,
    maxEntries: usage.maxEntries,
    drainIntervalMs: usage.drainIntervalMs,
    logger,
  });
}
