// A key event's id is a function of what makes it unique, (org_id, dedupe_key), not a random one:
// after a restore to a backup, the events raised since are raised again (their dedupe keys went
// with the rows), and webhook receivers deduplicate on the event id (docs/webhooks.md), so a
// key.first_use raised again with a new id reached them twice. Name-based, as a UUIDv5 is, but of
// SHA-256 (PostgreSQL has no SHA-1 without pgcrypto), so a UUIDv8 (RFC 9562 §5.8): the hash's first
// 16 bytes, version 8 in byte 6, variant 10 in byte 8. The namespace text keeps these names apart
// from any other hashed the same way. Immutable SQL: Citus evaluates it on the workers.
const NAMESPACE = 'keyusage:key_event';

/** The id of the event of `orgId` and `dedupeKey` (SQL expressions, a uuid and a text). */
export function eventIdSql(orgId: string, dedupeKey: string): string {
  const hash = `substring(sha256(convert_to('${NAMESPACE}:' || cast(${orgId} as text) || ':' || ${dedupeKey}, 'UTF8')) from 1 for 16)`;
  const versioned = `set_byte(${hash}, 6, (get_byte(${hash}, 6) & 15) | 128)`;
  return `cast(encode(set_byte(${versioned}, 8, (get_byte(${hash}, 8) & 63) | 128), 'hex') as uuid)`;
}
