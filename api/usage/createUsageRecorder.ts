import type { Config } from '../../shared/config';
import { SIGNATURE_LINE_BYTES } from '../../shared/datagramSignature';
import type { Logger } from '../../shared/logger';
import { MAX_DATAGRAM_BYTES } from '../../shared/usageWire';
import { signingSink } from './signingSink';
import { createStatsdSink } from './statsdSink';
import { UsageRecorder } from './usageRecorder';

// The recorder as the API runs it: hot-shots over UDP to the collector, signed when a signing
// secret is set (leaving room in each datagram for the signature line).
export function createUsageRecorder(usage: Config['usage'], logger: Logger): UsageRecorder {
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
