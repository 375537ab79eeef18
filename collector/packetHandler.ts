import type { Config } from '../shared/config';
import { datagramVerifier, SIGNATURE_METRIC } from '../shared/datagramSignature';
import { redactKeyMaterial } from '../shared/logger';
import type { RateLimitedWarn } from '../shared/rateLimitedLog';
import { truncateIp } from '../shared/ipTruncation';
import { createDatagramParser } from '../shared/usageDatagram';
import type { UsageSample } from '../shared/usageWire';
import type { Aggregator } from './aggregator';
import type { Relay } from './relay';

// The parser stage: a datagram's bytes from the receiver → signature check (if signing is on) →
// parseDatagram → the aggregator, other StatsD lines to the relay, and the counters the metrics
// report. Everything here runs once per datagram on the receive loop.

export interface IngestCounters {
  packets: number;
  rejectedPackets: number;
  lines: number;
  usageLines: number;
  otherLines: number;
  uncheckedSignatureLines: number;
  badLines: number;
  usesReceived: number;
}

export interface ReplayCacheState {
  capacity: number;
  overflows: number;
  entries(): number;
  /** Datagrams accepted signed ahead of this clock: an API's lead, for which a restart lets them be replayed. */
  signedAhead(): number;
}

const SIGNATURE_WINDOW_MS = 30_000;
const SIGNATURE_LINE_START = `${SIGNATURE_METRIC}:`;

export function createPacketHandler(options: { config: Config; aggregator: Aggregator; relay: Relay | undefined; warn: RateLimitedWarn; now: () => number }) {
  const { config, aggregator, relay, warn, now } = options;
  const { signingSecrets, replayCacheSize, aggregatorMaxKeys } = config.collector;
  const ingest: IngestCounters = {
    packets: 0,
    rejectedPackets: 0,
    lines: 0,
    usageLines: 0,
    otherLines: 0,
    uncheckedSignatureLines: 0,
    badLines: 0,
    usesReceived: 0,
  };
  const verify =
    signingSecrets.length > 0 ? datagramVerifier({ secrets: signingSecrets, windowMs: SIGNATURE_WINDOW_MS, maxRemembered: replayCacheSize, now }) : undefined;
  // A full replay cache drops genuine datagrams: counted apart so it is not mistaken for forgery.
  const replayCache: ReplayCacheState = {
    capacity: replayCacheSize,
    overflows: 0,
    entries: () => verify?.size() ?? 0,
    signedAhead: () => verify?.signedAhead() ?? 0,
  };
  // A signature line reaches here when the API signs and this collector has no secret to check it
  // (the order for turning signing on). Never relayed: its nonce and MAC make each one a new
  // series on a tag-aware StatsD server. Only with a relay is a line other than usage copied out
  // of the datagram to look at (a port shared with an application's metrics sends many).
  const relayLine =
    relay &&
    ((line: string) => {
      if (line.startsWith(SIGNATURE_LINE_START)) ingest.uncheckedSignatureLines += 1;
      else relay.relay(line);
    });
  const parseDatagram = createDatagramParser(aggregatorMaxKeys);
  // One clock read per datagram, not per line: the lines of a datagram arrived together.
  let packetTime = now();
  // IP_TRUNCATE: cut before aggregation, so a full address is never held, merged or written.
  const truncateIps = config.privacy.truncateIps;
  const addSample = (sample: UsageSample) => {
    ingest.usesReceived += sample.count;
    aggregator.add(truncateIps ? { ...sample, ip: truncateIp(sample.ip) } : sample, packetTime);
  };
  let overflowLogged = 0;
  let unlistedLogged = 0;
  // Two kinds, each rate-limited on its own: keys missing from the key list refused at half the cap
  // (a flood of forged ids, most likely), and any key refused at the cap itself.
  const warnOverflow = () => {
    const { overflowUses, unlistedOverflowUses } = aggregator;
    const fields = { overflowUses, unlistedOverflowUses, maxPendingKeys: aggregatorMaxKeys };
    if (overflowUses - overflowLogged > unlistedOverflowUses - unlistedLogged) warn('overflow', fields, 'pending-key cap reached; uses of new keys dropped');
    if (unlistedOverflowUses > unlistedLogged) {
      warn('unlisted_overflow', fields, 'keys missing from the key list hold half the pending-key cap; uses of further such keys dropped (forged ids?)');
    }
    overflowLogged = overflowUses;
    unlistedLogged = unlistedOverflowUses;
  };

  // The datagram's body, or undefined when its signature fails (counted and logged here).
  const verified = (received: Buffer): Buffer | undefined => {
    if (!verify) return received;
    // The verifier reads latin1 text, one character per byte: the body is that many bytes.
    const verdict = verify(received.toString('latin1'));
    if (verdict.ok) return received.subarray(0, verdict.body.length);
    ingest.rejectedPackets += 1;
    const full = verdict.reason === 'replay_cache_full';
    if (full) replayCache.overflows += 1;
    const message = full
      ? 'replay cache full: a signed datagram was dropped; raise COLLECTOR_REPLAY_CACHE_SIZE'
      : verdict.reason === 'signed_before_start'
        ? "dropped a datagram signed before this collector started (a replay, or a sender's clock behind this one's)"
        : 'dropped a datagram without a valid signature';
    warn(`rejected_${verdict.reason}`, { reason: verdict.reason, rejectedPackets: ingest.rejectedPackets }, message);
    return undefined;
  };

  const onPacket = (received: Buffer) => {
    ingest.packets += 1;
    const packet = verified(received);
    if (packet === undefined) return;
    packetTime = now();
    const signatureLines = ingest.uncheckedSignatureLines;
    const result = parseDatagram(packet, addSample, relayLine);
    ingest.lines += result.lines;
    ingest.usageLines += result.usage;
    ingest.otherLines += result.other - (ingest.uncheckedSignatureLines - signatureLines);
    ingest.badLines += result.invalid;
    if (result.invalid > 0) {
      warn('bad_line', { badLines: ingest.badLines, reason: redactKeyMaterial(result.firstError ?? '') }, 'dropped malformed StatsD lines');
    }
    if (aggregator.overflowUses > overflowLogged) warnOverflow();
  };
  return { onPacket, ingest, replayCache };
}
