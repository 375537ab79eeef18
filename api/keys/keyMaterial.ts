import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

// Key format: ku_<key id as 32 hex digits>_<secret: 32 random bytes, base64url>.
// The prefix makes keys recognisable to secret scanners; the embedded id lets the server find
// the key by primary key before comparing the secret.
export const KEY_PREFIX = 'ku_';
const KEY_PATTERN = /^ku_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$/;

export interface PresentedKey {
  keyId: string;
  secret: string;
}

export interface NewKeyMaterial {
  keyId: string;
  plaintext: string;
  secretHash: Buffer;
  displayPrefix: string;
}

const toUuid = (hex: string) =>
  `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;

export function displayPrefixFor(keyId: string): string {
  return `${KEY_PREFIX}${keyId.replace(/-/g, '').slice(0, 8)}`;
}

// Secrets carry 256 bits of entropy, so a keyed fast hash is enough: a slow KDF protects
// low-entropy passwords, not random keys, and would cost milliseconds on every request.
export function hashSecret(secret: string, pepper: string): Buffer {
  return createHmac('sha256', pepper).update(secret).digest();
}

export function secretMatches(secret: string, storedHash: Buffer, pepper: string): boolean {
  const presented = hashSecret(secret, pepper);
  return presented.length === storedHash.length && timingSafeEqual(presented, storedHash);
}

export function newSecret(keyId: string, pepper: string): Omit<NewKeyMaterial, 'displayPrefix'> {
  const secret = randomBytes(32).toString('base64url');
  return {
    keyId,
    plaintext: `${KEY_PREFIX}${keyId.replace(/-/g, '')}_${secret}`,
    secretHash: hashSecret(secret, pepper),
  };
}

export function generateKeyMaterial(pepper: string): NewKeyMaterial {
  const keyId = randomUUID();
  return { ...newSecret(keyId, pepper), displayPrefix: displayPrefixFor(keyId) };
}

export function parsePresentedKey(raw: string): PresentedKey | undefined {
  const match = KEY_PATTERN.exec(raw);
  if (!match) return undefined;
  return { keyId: toUuid(match[1]), secret: match[2] };
}
