import { signDatagram } from '../../shared/datagramSignature';
import type { DatagramSink } from './usageRecorder';

// With USAGE_SIGNING_SECRET set, every datagram leaves with a signature line (shared/datagramSignature.ts).
// Signing happens at drain time, off the request path: one HMAC per datagram.
export function signingSink(sink: DatagramSink, secret: string | undefined, now: () => number = Date.now): DatagramSink {
  if (secret === undefined) return sink;
  return { send: (datagram, done) => sink.send(signDatagram(datagram, secret, now()), done), close: () => sink.close() };
}
