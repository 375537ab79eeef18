// KnownKeys (collector/knownKeys.ts): what an append trusts without asking, and for how long.
import t from 'tap';
import { KnownKeys } from '../collector/knownKeys';

const key = (keyId: string, orgId = 'acme') => ({ keyId, orgId });

t.test('only confirmed keys, in the org they were confirmed in, are trusted', async (t) => {
  const known = new KnownKeys(1000, () => 0);
  const [a, b] = [key('a'), key('b')];
  t.strictSame(known.unconfirmed([a, b]), [a, b], 'nothing is trusted at first');
  known.confirm([a]);
  t.strictSame(known.unconfirmed([a, b]), [b]);
  t.strictSame(known.unconfirmed([key('a', 'globex')]), [key('a', 'globex')], 'the same id under another org is not');
});

t.test('an entry is trusted half a TTL at least and a whole TTL at most, then asked again', async (t) => {
  let now = 0;
  const known = new KnownKeys(1000, () => now);
  const [early, late] = [key('early'), key('late')];
  known.confirm([early]);
  now = 499;
  known.confirm([late]);
  t.strictSame(known.unconfirmed([early, late]), []);
  now = 500;
  t.strictSame(known.unconfirmed([early, late]), [], 'one turn: the older generation still answers');
  t.equal(known.size, 2);
  now = 999;
  t.strictSame(known.unconfirmed([early, late]), []);
  now = 1000;
  t.strictSame(known.unconfirmed([early, late]), [early, late], 'confirmed before the last two turns: asked again');
  t.equal(known.size, 0, 'and forgotten');
});

t.test('a clock read after a long pause forgets everything at once', async (t) => {
  let now = 0;
  const known = new KnownKeys(1000, () => now);
  known.confirm([key('a')]);
  now = 10_750;
  t.strictSame(known.unconfirmed([key('a')]), [key('a')]);
  known.confirm([key('a')]);
  now = 11_000;
  t.strictSame(known.unconfirmed([key('a')]), [], 'turns stay on the half-TTL grid: one turn since');
  now = 11_500;
  t.strictSame(known.unconfirmed([key('a')]), [key('a')], 'at most a TTL after its confirmation');
});
