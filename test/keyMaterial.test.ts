import crypto, { createHmac } from 'node:crypto';
import t from 'tap';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { crc32 } from '../api/keys/crc32';
import {
  KEY_PREFIX,
  checksumOf,
  displayPrefixFor,
  formatKey,
  generateKeyMaterial,
  hashSecret,
  newSecret,
  parsePresentedKey,
  secretMatches,
} from '../api/keys/keyMaterial';
import { withTimingSafeEqualSpy } from './helpers/timingSafeEqualSpy';

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const PEPPER = 'a-test-pepper-that-is-at-least-32-characters';
const OTHER_PEPPER = 'another-test-pepper-also-at-least-32-characters';
const ID_HEX = '0123456789abcdef0123456789abcdef';
const LEGACY_SECRET = 'A'.repeat(21) + '_' + 'z'.repeat(20) + '-';
const SECRET = 'AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg';
// Computed independently (Python: zlib.crc32, then base62 with the alphabet 0-9A-Za-z); also the
// example in docs/api-keys.md.
const EXAMPLE_KEY = `ku_${ID_HEX}_${SECRET}0VpiN5`;
// The regex docs/api-keys.md gives secret scanners.
const SCANNER_REGEX = /\bku_[0-9a-f]{32}_[0-9A-Za-z]{49}\b/;
const secretOf = (plaintext: string) => plaintext.slice(36, 79);

t.test('a generated key has the documented format', async (t) => {
  const material = generateKeyMaterial(PEPPER);
  t.match(material.plaintext, /^ku_[0-9a-f]{32}_[0-9A-Za-z]{49}$/);
  t.match(material.plaintext, SCANNER_REGEX, 'the documented scanner regex matches it');
  t.equal(material.plaintext.slice(-6), checksumOf(material.plaintext.slice(0, -6)), 'it ends with the CRC32 of the rest');
  t.match(material.keyId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random (v4) UUID');
  t.equal(material.plaintext.slice(3, 35), material.keyId.replace(/-/g, ''), 'the key embeds its id');
  t.equal(material.displayPrefix, `ku_${material.keyId.slice(0, 8)}`);
  t.ok(material.plaintext.startsWith(material.displayPrefix), 'the display prefix is the start of the key');
  t.equal(displayPrefixFor(material.keyId), material.displayPrefix);

  const secret = secretOf(material.plaintext);
  t.ok(BigInt(`0x${'f'.repeat(64)}`) >= [...secret].reduce((n, c) => n * 62n + BigInt(BASE62.indexOf(c)), 0n), 'the secret is 32 random bytes in base62');
  t.same(material.secretHash, createHmac('sha256', PEPPER).update(secret).digest(), 'stored hash = HMAC-SHA-256(pepper, secret)');
  t.notOk(material.plaintext.includes(material.secretHash.toString('hex')), 'the hash is not part of the key');

  const many = Array.from({ length: 200 }, () => generateKeyMaterial(PEPPER));
  t.equal(new Set(many.map((m) => m.keyId)).size, 200, 'ids do not repeat');
  t.equal(new Set(many.map((m) => secretOf(m.plaintext))).size, 200, 'secrets do not repeat');
  // About one secret in 60 is below 62^42 and needs its leading zero. 200 keys missed one in
  // about 4 % of runs (a CI run failed so); 5,000 tries miss with a probability near e^-82.
  let padded: string | undefined;
  for (let i = 0; i < 5_000 && padded === undefined; i += 1) {
    const { plaintext } = generateKeyMaterial(PEPPER);
    if (secretOf(plaintext).startsWith('0')) padded = plaintext;
  }
  t.match(padded, /^ku_[0-9a-f]{32}_0[0-9A-Za-z]{48}$/, 'short values are zero-padded to 43 characters');
});

t.test('a new secret keeps the key id and changes the secret', async (t) => {
  const original = generateKeyMaterial(PEPPER);
  const rotated = newSecret(original.keyId, PEPPER);
  t.equal(rotated.keyId, original.keyId);
  t.equal(rotated.plaintext.slice(0, 36), original.plaintext.slice(0, 36), 'same prefix and id');
  t.not(rotated.plaintext, original.plaintext);
  t.notSame(rotated.secretHash, original.secretHash);
  t.same(parsePresentedKey(rotated.plaintext), { keyId: original.keyId, secret: secretOf(rotated.plaintext) });
});

t.test('the checksum is CRC32, base62, zero-padded to 6 characters', async (t) => {
  t.equal(checksumOf('123456789'), '3jZRME', 'the CRC32 check value 0xCBF43926');
  t.equal(checksumOf(''), '000000', 'CRC32 of nothing is 0');
  t.equal(formatKey('01234567-89ab-cdef-0123-456789abcdef', SECRET), EXAMPLE_KEY, 'the documented example');
});

t.test('crc32 gives the same values as zlib.crc32', { skip: typeof zlib.crc32 !== 'function' && 'zlib.crc32 needs Node 20.15' }, async (t) => {
  const inputs: Array<string | Buffer> = ['', 'a', '123456789', EXAMPLE_KEY.slice(0, -6), EXAMPLE_KEY, 'é ü 𝄞 ключ', Buffer.alloc(1), Buffer.alloc(1, 0xff)];
  for (let length = 0; length <= 300; length++) inputs.push(randomBytes(length));
  inputs.push(randomBytes(65_537));
  const differing = inputs.filter((input) => crc32(input) !== zlib.crc32(input));
  t.same(differing, [], `${inputs.length} inputs, strings and buffers of 0 to 65,537 bytes`);
  t.equal(crc32('123456789'), 0xcbf43926, 'the CRC-32 check value');
  t.equal(checksumOf(EXAMPLE_KEY.slice(0, -6)), '0VpiN5', "the documented example's checksum");
});

// zlib.crc32 arrived in Node 20.15; on 20.0–20.14 (which engines ">=20" admits) making or checking
// a key threw "crc32 is not a function" and every such request was a 500.
t.test('keys are made and checked on a Node without zlib.crc32', async (t) => {
  const withoutCrc32 = Object.fromEntries(Object.entries(zlib).filter(([name]) => name !== 'crc32'));
  const material = t.mockRequire<typeof import('../api/keys/keyMaterial')>('../api/keys/keyMaterial', { 'node:zlib': withoutCrc32 });
  t.equal(material.checksumOf(EXAMPLE_KEY.slice(0, -6)), '0VpiN5');
  t.equal(material.formatKey('01234567-89ab-cdef-0123-456789abcdef', SECRET), EXAMPLE_KEY);
  t.same(material.parsePresentedKey(EXAMPLE_KEY), { keyId: '01234567-89ab-cdef-0123-456789abcdef', secret: SECRET });
  const generated = material.generateKeyMaterial(PEPPER);
  t.equal(material.parsePresentedKey(generated.plaintext)?.keyId, generated.keyId, 'a generated key parses');
});

t.test('parse accepts exactly the key format', async (t) => {
  t.same(parsePresentedKey(EXAMPLE_KEY), {
    keyId: '01234567-89ab-cdef-0123-456789abcdef',
    secret: SECRET,
  });
  t.same(
    parsePresentedKey(`ku_${ID_HEX}_${LEGACY_SECRET}`),
    { keyId: '01234567-89ab-cdef-0123-456789abcdef', secret: LEGACY_SECRET },
    'a key issued before the checksum',
  );
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
    ['legacy secret one char short', `ku_${ID_HEX}_${LEGACY_SECRET.slice(1)}`],
    ['legacy secret one char long', `ku_${ID_HEX}_${LEGACY_SECRET}A`],
    ['legacy secret with "+" (base64, not base64url)', `ku_${ID_HEX}_${LEGACY_SECRET.slice(1)}+`],
    ['legacy secret with "/"', `ku_${ID_HEX}_${LEGACY_SECRET.slice(1)}/`],
    ['legacy secret with "=" padding', `ku_${ID_HEX}_${LEGACY_SECRET.slice(1)}=`],
    ['legacy secret with a space', `ku_${ID_HEX}_${LEGACY_SECRET.slice(1)} `],
    ['checksum one char short', EXAMPLE_KEY.slice(0, -1)],
    ['checksum of another key', `ku_${ID_HEX}_${SECRET.replace('A', 'B')}0VpiN5`],
    ['checksum with "_" (base62 has none)', `${EXAMPLE_KEY.slice(0, -1)}_`],
    ['checksum in lower case', EXAMPLE_KEY.slice(0, -6) + '0vpin5'],
    ['missing separator', `ku_${ID_HEX}${SECRET}0VpiN5`],
    ['leading space', ` ${EXAMPLE_KEY}`],
    ['trailing newline', `${EXAMPLE_KEY}\n`],
    ['two keys', `${EXAMPLE_KEY},${EXAMPLE_KEY}`],
  ];
  for (const [name, raw] of rejected) t.equal(parsePresentedKey(raw), undefined, `rejects: ${name}`);
  // 43 base62 characters are also 43 base64url ones: while legacy keys are accepted, a key cut
  // before its checksum is read as one (it still has to prove the secret).
  t.same(parsePresentedKey(EXAMPLE_KEY.slice(0, -6)), { keyId: '01234567-89ab-cdef-0123-456789abcdef', secret: SECRET }, 'checksum cut off: the legacy format');
});

t.test('the checksum catches every one-character typo and every swap of neighbours', async (t) => {
  const key = generateKeyMaterial(PEPPER).plaintext;
  let typos = 0;
  for (let i = 0; i < key.length; i++) {
    for (const c of BASE62 + '_-') {
      if (c === key[i]) continue;
      typos++;
      if (parsePresentedKey(key.slice(0, i) + c + key.slice(i + 1)) !== undefined) t.fail(`accepted ${c} at ${i}`);
    }
  }
  let swaps = 0;
  for (let i = 36; i < key.length - 1; i++) {
    if (key[i] === key[i + 1]) continue;
    swaps++;
    if (parsePresentedKey(key.slice(0, i) + key[i + 1] + key[i] + key.slice(i + 2)) !== undefined) t.fail(`accepted a swap at ${i}`);
  }
  t.ok(typos > 5000 && swaps > 40, `${typos} typos and ${swaps} swaps, all refused`);
  const random = Array.from(
    { length: 2000 },
    () => `ku_${randomBytes(16).toString('hex')}_${randomBytes(37).toString('base64url').replace(/[-_]/g, 'x').slice(0, 49)}`,
  );
  t.ok(random.filter((raw) => parsePresentedKey(raw)).length <= 1, 'random well-formed strings almost never pass (1 in 2^32)');
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
  const { module: spied, compared: calls } = withTimingSafeEqualSpy<typeof import('../api/keys/keyMaterial')>(t, '../api/keys/keyMaterial');
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
