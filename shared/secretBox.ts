import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

// Authenticated encryption (AES-256-GCM) of small secrets that must be read back, such as a
// webhook's signing secret, under a key derived from KEY_PEPPER for one purpose. The row id is
// the associated data, so a sealed secret copied onto another row does not open.
// Layout: 12-byte IV | 16-byte tag | ciphertext.

const IV_BYTES = 12;
const TAG_BYTES = 16;

export interface SecretBox {
  seal(plaintext: string, rowId: string): Buffer;
  /** Throws when the box was not sealed with this key and row id. */
  open(box: Buffer, rowId: string): string;
}

// Sealed with the first pepper; opened with any of them (current first), so a KEY_PEPPER moved to
// KEY_PEPPER_PREVIOUS keeps what it sealed readable through a rotation.
export function secretBox(peppers: string | readonly string[], purpose: string): SecretBox {
  const keys = (typeof peppers === 'string' ? [peppers] : peppers).map((pepper) =>
    Buffer.from(hkdfSync('sha256', pepper, Buffer.alloc(0), `keyusage:${purpose}`, 32)),
  );
  // GCM accepts a tag of 4 to 16 bytes unless told its length: a box cut to its IV and a 4-byte tag
  // would open to an empty secret one try in 2^32. So a tag is 16 bytes, and a shorter box is
  // refused before any key is tried.
  const open = (key: Buffer, box: Buffer, rowId: string) => {
    const decipher = createDecipheriv('aes-256-gcm', key, box.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES }).setAAD(Buffer.from(rowId));
    decipher.setAuthTag(box.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
    return Buffer.concat([decipher.update(box.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString('utf8');
  };
  const [key] = keys;
  return {
    seal(plaintext, rowId) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(Buffer.from(rowId));
      const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
      return Buffer.concat([iv, cipher.getAuthTag(), ciphertext]);
    },
    open(box, rowId) {
      if (box.length < IV_BYTES + TAG_BYTES) throw new Error(`a sealed secret has at least ${IV_BYTES + TAG_BYTES} bytes; this one has ${box.length}`);
      for (const candidate of keys.slice(0, -1)) {
        try {
          return open(candidate, box, rowId);
        } catch {
          // Sealed under an older pepper: try the next one.
        }
      }
      return open(keys[keys.length - 1], box, rowId);
    },
  };
}

export const WEBHOOK_SECRET_PURPOSE = 'webhook-signing-secret';
