// When collectors listened: what tells a key that looks dormant from one whose uses fell where no
// collector listened (UDP drops them without a word). Each collector process keeps one row of
// collector_listening_spans while it runs (migrations/20261207000260): when it began listening and
// the last time it vouched that every use it received until then is written or held for a retry
// (collector/listeningSpan.ts). The revoke-dormant clean-up reads the times no span covers
// (api/keys/collectorUptime.repository.ts) and refuses to select keys again across them.

/** How often a running collector moves its span's heard_at forward. */
export const LISTENING_HEARTBEAT_MS = 15_000;

/**
 * Silences shorter than this are not gaps: a heartbeat is up to LISTENING_HEARTBEAT_MS old, a
 * restart leaves a few seconds between two spans, and a use in them is as likely as one in the
 * last flush interval of a crash. Four heartbeats, so one late write is not a gap.
 */
export const GAP_TOLERANCE_MS = 4 * LISTENING_HEARTBEAT_MS;

/** Spans are kept as long as the longest dormantDays a clean-up may ask about (api/keys/apiKeys.routes.ts). */
export const SPAN_RETENTION_DAYS = 3650;
