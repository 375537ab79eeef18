import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { MAX_DATAGRAM_BYTES } from './usageWire';

// An optional shared-secret signature on usage datagrams, for a collector that listens beyond
// loopback (USAGE_SIGNING_SECRET). The signature is the datagram's last line and is itself a valid
// StatsD counter, which a plain StatsD server takes as one more metric (a tag-aware one, as a new
// series each time; the collector never relays it, collector/packetHandler.ts):
//
//   keyusage.sig:1|c|#v:1,ts:<unix ms>,n:<16-char nonce>,mac:<HMAC-SHA-256, base64url>
//
// The MAC covers the version, the timestamp, the nonce and every byte before the signature line.
// The collector accepts a datagram once (the nonce is remembered for the window) and only within
// ±windowMs of its own clock, so a captured datagram cannot be replayed to that collector to
// inflate counts (across its restart, only while the sender's clock is ahead: see below). Another
// collector taking the same secret keeps its own nonces: one secret per collector where the wire
// is not private (docs/security.md).
// It authenticates; it does not hide ids or addresses (use a private network or a tunnel for that).

export const SIGNATURE_METRIC = 'keyusage.sig';
const NONCE_CHARS = 16; // 12 random bytes, base64url
/** The most a signature line adds to a datagram, its newline included: reserve it when packing. */
export const SIGNATURE_LINE_BYTES = `\n${SIGNATURE_METRIC}:1|c|#v:1,ts:${'9'.repeat(15)},n:${'n'.repeat(NONCE_CHARS)},mac:${'m'.repeat(43)}`.length;
const SIGNATURE_LINE = /\nkeyusage\.sig:1\|c\|#v:1,ts:(\d{1,15}),n:([A-Za-z0-9_-]{16}),mac:([A-Za-z0-9_-]{43})$/;

function macOf(secret: string, ts: string, nonce: string, body: Buffer): Buffer {
  return createHmac('sha256', secret).update(`v1\n${ts}\n${nonce}\n`).update(body).digest();
}

export function signDatagram(body: string, secret: string, now: number, nonce = randomBytes(12).toString('base64url')): string {
  const ts = String(Math.floor(now));
  const mac = macOf(secret, ts, nonce, Buffer.from(body, 'utf8')).toString('base64url');
  return `${body}\n${SIGNATURE_METRIC}:1|c|#v:1,ts:${ts},n:${nonce},mac:${mac}`;
}

/**
 * A signature dated further ahead of the receiver's clock than this says the sender's clock is
 * ahead (the wire and the drain take milliseconds); `signedAhead()` counts the datagrams accepted so.
 */
export const SIGNED_AHEAD_NOTICE_MS = 1_000;

export type SignatureVerdict =
  | { ok: true; body: string }
  | {
      ok: false;
      reason: 'oversized' | 'unsigned' | 'bad_signature' | 'stale' | 'signed_before_start' | 'replayed' | 'replay_cache_full';
    };

/**
 * Returns a checker for packets as the receiver decodes them (latin1: one char per byte). Several
 * secrets may be accepted at once, so the secret can be rotated without a gap. `size()` is how
 * many nonces it remembers now, out of `maxRemembered`; `signedAhead()`, how many datagrams it
 * accepted signed more than SIGNED_AHEAD_NOTICE_MS ahead of its clock.
 */
export function datagramVerifier(options: { secrets: readonly string[]; windowMs: number; maxRemembered: number; now: () => number }) {
  if (options.secrets.length === 0) throw new RangeError('datagramVerifier needs at least one secret');
  // nonce → forget-after; insertion order is forget-after order, since it is `now` + a constant.
  // On the wall clock, as the signatures' freshness is: a nonce forgotten on a steady clock was
  // gone when a clock stepped back made its datagram fresh again, and the datagram could be
  // replayed. The cost: after a step back of X, nothing is forgotten for X, and past the cache's
  // size genuine datagrams are refused (replay_cache_full, counted and logged) until it passes.
  const remembered = new Map<string, { forgetAt: number; ts: number }>();
  // The latest signature time of a forgotten nonce: a datagram signed then or before is refused.
  // A genuine one never is (a nonce is forgotten two windows after its datagram came, by when any
  // datagram still fresh was signed after it), but one a wall clock stepped back by more than the
  // window made fresh again, its nonce forgotten meanwhile, was accepted a second time.
  let forgottenUpTo = -Infinity;
  // A new process remembers no nonce, so a datagram signed before it started may have been counted
  // by the process before it (a restart, a deploy): captured on the wire, it could be replayed
  // once within the window. Refused instead. A genuine one is signed before the start only if its
  // sender's clock is behind this one's (it was sent after the socket opened), and only for as
  // long as that offset: counted apart, so a clock out of step is told from an attack.
  // A sender's clock ahead leaves a window: what the process before counted in its last moments,
  // for as long as that lead, is signed after this start. Closing it would need the lead, which
  // differs per API and is only learnt from datagrams; refusing the largest seen would refuse the
  // genuine datagrams of an API whose clock is right. Counted instead (`signedAhead`), to be seen.
  const startedAt = options.now();
  let signedAhead = 0;
  const verify = (packet: string): SignatureVerdict => {
    // The API signs datagrams of at most MAX_DATAGRAM_BYTES, signature included. A forged one of
    // 64 kB would cost a MAC over all of it (per secret), 45 times the real one's: refused first.
    if (packet.length > MAX_DATAGRAM_BYTES) return { ok: false, reason: 'oversized' };
    const match = SIGNATURE_LINE.exec(packet);
    if (!match) return { ok: false, reason: 'unsigned' };
    const [line, ts, nonce, mac] = match;
    const body = packet.slice(0, packet.length - line.length);
    const presented = Buffer.from(mac, 'base64url');
    const bytes = Buffer.from(body, 'latin1');
    // Every secret is tried, so the time taken does not say which one matched.
    let valid = false;
    for (const secret of options.secrets) {
      const expected = macOf(secret, ts, nonce, bytes);
      if (presented.length === expected.length && timingSafeEqual(presented, expected)) valid = true;
    }
    if (!valid) return { ok: false, reason: 'bad_signature' };
    const now = options.now();
    if (Math.abs(now - Number(ts)) > options.windowMs) return { ok: false, reason: 'stale' };
    if (Number(ts) < startedAt) return { ok: false, reason: 'signed_before_start' };
    // Kept through forgetAt itself: a datagram signed a whole window ahead is still fresh then.
    for (const [old, entry] of remembered) {
      if (entry.forgetAt >= now) break;
      remembered.delete(old);
      forgottenUpTo = Math.max(forgottenUpTo, entry.ts);
    }
    if (remembered.has(nonce) || Number(ts) <= forgottenUpTo) return { ok: false, reason: 'replayed' };
    if (remembered.size >= options.maxRemembered) return { ok: false, reason: 'replay_cache_full' };
    remembered.set(nonce, { forgetAt: now + 2 * options.windowMs, ts: Number(ts) });
    if (Number(ts) - now > SIGNED_AHEAD_NOTICE_MS) signedAhead += 1;
    return { ok: true, body };
  };
  return Object.assign(verify, { size: () => remembered.size, signedAhead: () => signedAhead });
}
