import { StatsD } from 'hot-shots';
import type { DatagramSink } from './usageRecorder';

// hot-shots' public send() rewrites tags and may append DogStatsD extension fields; our lines are
// already encoded and packed, so they go straight to its transport through sendMessage().
interface RawSender {
  sendMessage(message: string, callback: (error?: Error | null) => void): void;
}

export function createStatsdSink(options: { host: string; port: number; onError: (error: Error) => void }): DatagramSink {
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
    // A host name was looked up for every datagram.
    cacheDns: true,
    // Without an errorHandler hot-shots re-throws some socket errors; usage must never throw.
    errorHandler: options.onError,
  });
  const raw = client as unknown as RawSender;
  return {
    send: (datagram, done) => raw.sendMessage(datagram, done),
    close: () => new Promise<void>((resolve) => client.close(() => resolve())),
  };
}
