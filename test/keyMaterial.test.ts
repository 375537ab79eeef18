import crypto, { createHmac } from 'node:crypto';
import t from 'tap';
import {
  KEY_PREFIX,
  displayPrefixFor,
  generateKeyMaterial,
  hashSecret,
  newSecret,
  parsePresentedKey,
  secretMatches,
} from '../api/keys/keyMaterial';

const PEPPER = 'a-test-pepper-that-is-at-least-32-characters';
const OTHER_PEPPER = 'another-test-pepper-also-at-least-32-characters';
const ID_HEX = '0123456789abcdef0123456789abcdef';
const SECRET = 'A'.repeat(21) + '_' + 'z'.repeat(20) + '-';

t.test('a generated key has the documented format', async (t) => {
  const material = generateKeyMaterial(PEPPER);
  t.match(material.plaintext, /^ku_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$/);
  t.match(material.keyId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random (v4) UUID');
  t.equal(material.plaintext.slice(3, 35), material.keyId.replace(/-/g, ''), 'the key embeds its id');
  t.equal(material.displayPrefix, `ku_${material.keyId.slice(0, 8)}`);
  t.ok(material.plaintext.startsWith(material.displayPrefix), 'the display prefix is the start of the key');
  t.equal(displayPrefixFor(material.keyId), material.displayPrefix);

  const secret = material.plaintext.slice(36);
  t.equal(Buffer.from(secret, 'base64url').length, 32, 'the secret carries 256 random bits');
  t.same(material.secretHash, createHmac('sha256', PEPPER).update(secret).digest(), 'stored hash = HMAC-SHA-256(pepper, secret)');
  t.notOk(material.plaintext.includes(material.secretHash.toString('hex')), 'the hash is not part of the key');

  const many = Array.from({ length: 200 }, () => generateKeyMaterial(PEPPER));
  t.equal(new Set(many.map((m) => m.keyId)).size, 200, 'ids do not repeat');
  t.equal(new Set(many.map((m) => m.plaintext.slice(36))).size, 200, 'secrets do not repeat');
});

t.test('a new secret keeps the key id and changes the secret', async (t) => {
  const original = generateKeyMaterial(PEPPER);
  const rotated = newSecret(original.keyId, PEPPER);
  t.equal(rotated.keyId, original.keyId);
  t.equal(rotated.plaintext.slice(0, 36), original.plaintext.slice(0, 36), 'same prefix and id');
  t.not(rotated.plaintext, original.plaintext);
  t.notSame(rotated.secretHash, original.secretHash);
  t.same(parsePresentedKey(rotated.plaintext), { keyId: original.keyId, secret: rotated.plaintext.slice(36) });
});

t.test('parse accepts exactly the key format', async (t) => {
  t.same(parsePresentedKey(`ku_${ID_HEX}_${SECRET}`), {
    keyId: '01234567-89ab-cdef-0123-456789abcdef',
    secret: SECRET,
  });
  const generated = generateKeyMaterial(PEPPER);
  t.equal(parsePresentedKey(generated.plaintext)?.keyId, generated.keyId, 'round trip');
  t.equal(KEY_PREFIX, 'ku_');

  const rejected: Array<[string, string]> = [
    ['empty', ''],
    ['prefix only', 'ku_'],
    ['wrong prefix', `ak_${ID_HEX}_${SECRET}`],
    ['upper-case prefix', `KU_${ID_HEX}_${SECRET}`],
    ['no prefix', `${ID_HEX}_${SECRET}`],
    ['id one digit short', `ku_${ID_HEX.slice(1)}_${SECRET}`],
    ['id one digit long', `ku_${ID_HEX}0_${SECRET}`],
    ['id with upper-case hex', `ku_${ID_HEX.toUpperCase()}_${SECRET}`],
    ['id that is not hex', `ku_${'g'.repeat(32)}_${SECRET}`],
    ['id with dashes (a UUID)', `ku_01234567-89ab-cdef-0123-456789abcdef_${SECRET}`],
    ['secret one char short', `ku_${ID_HEX}_${SECRET.slice(1)}`],
    ['secret one char long', `ku_${ID_HEX}_${SECRET}A`],
    ['secret with "+" (base64, not base64url)', `ku_${ID_HEX}_${SECRET.slice(1)}+`],
    ['secret with "/"', `ku_${ID_HEX}_${SECRET.slice(1)}/`],
    ['secret with "=" padding', `ku_${ID_HEX}_${SECRET.slice(1)}=`],
    ['secret with a space', `ku_${ID_HEX}_${SECRET.slice(1)} `],
    ['missing separator', `ku_${ID_HEX}${SECRET}`],
    ['leading space', ` ku_${ID_HEX}_${SECRET}`],
    ['trailing newline', `ku_${ID_HEX}_${SECRET}\n`],
    ['two keys', `ku_${ID_HEX}_${SECRET},ku_${ID_HEX}_${SECRET}`],
  ];
  for (const [name, raw] of rejected) t.equal(parsePresentedKey(raw), undefined, `rejects: ${name}`);
});

t.test('the hash is a keyed HMAC: it depends on the secret and on the pepper', async (t) => {
  const hash = hashSecret(SECRET, PEPPER);
  t.equal(hash.length, 32, 'SHA-256 output');
  t.same(hashSecret(SECRET, PEPPER), hash, 'deterministic');
  t.notSame(hashSecret(SECRET, OTHER_PEPPER), hash, 'another pepper, another hash');
  t.notSame(hashSecret(SECRET.replace('A', 'B'), PEPPER), hash, 'another secret, another hash');
  t.notSame(hash, crypto.createHash('sha256').update(SECRET).digest(), 'not a bare SHA-256 a leaked table could be checked against');
});

t.test('secretMatches', async (t) => {
  const stored = hashSecret(SECRET, PEPPER);
  t.equal(secretMatches(SECRET, stored, PEPPER), true);
  t.equal(secretMatches(SECRET.replace('A', 'B'), stored, PEPPER), false, 'wrong secret');
  t.equal(secretMatches(SECRET, stored, OTHER_PEPPER), false, 'wrong pepper');
  t.equal(secretMatches(SECRET, stored.subarray(0, 16), PEPPER), false, 'a shorter stored hash is a mismatch, not a throw');
  t.equal(secretMatches(SECRET, Buffer.concat([stored, Buffer.alloc(1)]), PEPPER), false, 'a longer stored hash is a mismatch');
  t.equal(secretMatches(SECRET, Buffer.alloc(0), PEPPER), false, 'an empty stored hash is a mismatch');
});

t.test('secretMatches compares with timingSafeEqual on equal-length buffers only', async (t) => {
  const calls: Array<[Buffer, Buffer]> = [];
  const spied = t.mockRequire<typeof import('../api/keys/keyMaterial')>('../api/keys/keyMaterial', {
    'node:crypto': {
      ...crypto,
      timingSafeEqual: (a: Buffer, b: Buffer) => {
        calls.push([a, b]);
        return crypto.timingSafeEqual(a, b);
      },
    },
  });
  const stored = hashSecret(SECRET, PEPPER);

  t.equal(spied.secretMatches(SECRET, stored, PEPPER), true);
  t.equal(spied.secretMatches(SECRET.replace('A', 'B'), stored, PEPPER), false);
  t.equal(calls.length, 2, 'matching and mismatching secrets both take the constant-time comparison');
  for (const [a, b] of calls) t.equal(a.length, b.length, 'timingSafeEqual gets equal-length buffers');
  t.same(calls[0][1], stored);

  calls.length = 0;
  t.equal(spied.secretMatches(SECRET, stored.subarray(0, 31), PEPPER), false);
  t.equal(calls.length, 0, 'different lengths never reach timingSafeEqual (which would throw)');
});
