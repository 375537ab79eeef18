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

export function secretBox(pepper: string, purpose: string): SecretBox {
  const key = Buffer.from(hkdfSync('sha256', pepper, Buffer.alloc(0), `keyusage:${purpose}`, 32));
  return {
    seal(plaintext, rowId) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(Buffer.from(rowId));
      const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
      return Buffer.concat([iv, cipher.getAuthTag(), ciphertext]);
    },
    open(box, rowId) {
      const decipher = createDecipheriv('aes-256-gcm', key, box.subarray(0, IV_BYTES)).setAAD(Buffer.from(rowId));
      decipher.setAuthTag(box.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
      return Buffer.concat([decipher.update(box.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString('utf8');
    },
  };
}

export const WEBHOOK_SECRET_PURPOSE = 'webhook-signing-secret';
