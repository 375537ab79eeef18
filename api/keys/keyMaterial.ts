import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { crc32 } from './crc32';

// Key format (docs/api-keys.md): ku_<key id: 32 hex>_<secret: 43 base62><checksum: 6 base62>.
// The prefix makes keys recognisable to secret scanners; the embedded id lets the server find
// the key by primary key before comparing the secret; the checksum (CRC32 of everything before
// it) lets the server and scanners reject a mistyped or made-up key without any lookup.
// Keys issued before the checksum (ku_<32 hex>_<43 base64url>) are accepted until rotated.
export const KEY_PREFIX = 'ku_';
const KEY_PATTERN = /^ku_([0-9a-f]{32})_([0-9A-Za-z]{43})([0-9A-Za-z]{6})$/;
const LEGACY_KEY_PATTERN = /^ku_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$/;
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const SECRET_CHARS = 43; // 62^43 > 2^256: room for 32 random bytes
const CHECKSUM_CHARS = 6; // 62^6 > 2^32

export interface PresentedKey {
  keyId: string;
  secret: string;
}

export interface NewKeyMaterial {
  keyId: string;
  plaintext: string;
  secretHash: Buffer;
  /** Which pepper made secretHash: pepperId(pepper). */
  pepperId: string;
  displayPrefix: string;
}

/** A pepper and its id, as the verifier holds them (current first). */
export interface Pepper {
  id: string;
  secret: string;
}

const toUuid = (hex: string) => `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;

export function displayPrefixFor(keyId: string): string {
  return `${KEY_PREFIX}${keyId.replace(/-/g, '').slice(0, 8)}`;
}

// Secrets carry 256 bits of entropy, so a keyed fast hash is enough: a slow KDF protects
// low-entropy passwords, not random keys, and would cost milliseconds on every request.
export function hashSecret(secret: string, pepper: string): Buffer {
  return createHmac('sha256', pepper).update(secret).digest();
}

// A pepper's id is stored with each hash it makes. It is a fingerprint (an HMAC keyed by the
// pepper over a fixed label), so it names the pepper without revealing anything of it, and an
// operator can compute it for the peppers they hold; 8 hex digits tell a handful of peppers apart.
export function pepperId(pepper: string): string {
  return createHmac('sha256', pepper).update('keyusage pepper id').digest('hex').slice(0, 8);
}

export const toPepper = (secret: string): Pepper => ({ id: pepperId(secret), secret });

export function secretMatches(secret: string, storedHash: Buffer, pepper: string): boolean {
  const presented = hashSecret(secret, pepper);
  return presented.length === storedHash.length && timingSafeEqual(presented, storedHash);
}

function base62(value: bigint, width: number): string {
  let digits = '';
  for (let rest = value; rest > 0n; rest /= 62n) digits = BASE62[Number(rest % 62n)] + digits;
  return digits.padStart(width, '0');
}

/**
 * CRC32 (zlib's, as in gzip and PNG) of the text, base62, zero-padded to 6 characters. It runs on
 * every presented key, so in plain numbers: a CRC32 is exact in a double, and BigInt division made
 * the check cost more than the rest of parsing (bench 2b).
 */
export function checksumOf(text: string): string {
  let digits = '';
  for (let rest = crc32(text); rest > 0; rest = Math.floor(rest / 62)) digits = BASE62[rest % 62] + digits;
  return digits.padStart(CHECKSUM_CHARS, '0');
}

/** The key a client presents: its id and secret, and the checksum over both. */
export function formatKey(keyId: string, secret: string): string {
  const body = `${KEY_PREFIX}${keyId.replace(/-/g, '')}_${secret}`;
  return body + checksumOf(body);
}

export function newSecret(keyId: string, pepper: string): Omit<NewKeyMaterial, 'displayPrefix'> {
  const secret = base62(BigInt(`0x${randomBytes(32).toString('hex')}`), SECRET_CHARS);
  return { keyId, plaintext: formatKey(keyId, secret), secretHash: hashSecret(secret, pepper), pepperId: pepperId(pepper) };
}

export function generateKeyMaterial(pepper: string): NewKeyMaterial {
  const keyId = randomUUID();
  return { ...newSecret(keyId, pepper), displayPrefix: displayPrefixFor(keyId) };
}

// A key whose checksum does not match is refused here, before any cache or database lookup, and
// names no key: a typo or a scanner's false positive costs nothing and is not counted as a use.
export function parsePresentedKey(raw: string): PresentedKey | undefined {
  const match = KEY_PATTERN.exec(raw) ?? LEGACY_KEY_PATTERN.exec(raw);
  if (!match) return undefined;
  const [, idHex, secret, checksum] = match;
  if (checksum !== undefined && checksum !== checksumOf(raw.slice(0, -CHECKSUM_CHARS))) return undefined;
  return { keyId: toUuid(idHex), secret };
}
