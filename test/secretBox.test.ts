import t from 'tap';
import { secretBox } from '../shared/secretBox';

const PEPPER = 'p'.repeat(32);
const PREVIOUS_PEPPER = 'q'.repeat(32);

// A box is IV (12) | tag (16) | ciphertext. Cut after the IV and 4 or 12 bytes of the tag, a box of
// an empty secret still held a valid GCM tag (a truncated tag is a prefix of the full one), so a
// database writer who guessed 4 bytes (one try in 2^32) planted an empty signing secret.
t.test('a box with a tag shorter than 16 bytes is refused', async (t) => {
  for (const peppers of [[PEPPER], [PEPPER, PREVIOUS_PEPPER], [PREVIOUS_PEPPER, PEPPER]]) {
    const box = secretBox(peppers, 'test');
    const sealed = secretBox(PEPPER, 'test').seal('', 'row-1');
    t.equal(sealed.length, 28, 'an empty secret seals to IV and tag');
    t.equal(box.open(sealed, 'row-1'), '', `the whole box opens (peppers: ${peppers.length})`);
    for (const length of [0, 12, 16, 20, 24, 27]) {
      t.throws(
        () => box.open(sealed.subarray(0, length), 'row-1'),
        new RegExp(`^a sealed secret has at least 28 bytes; this one has ${length}$`),
        `${length} bytes: refused`,
      );
    }
  }
});
