// KnownKeys (collector/knownKeys.ts): what an append trusts without asking, and for how long.
import t from 'tap';
import { KeyList, NOT_LISTED } from '../collector/keyList';
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

t.test('keys of a key list are trusted while it vouches for them, each in its own org, and never copied in', async (t) => {
  const list = new KeyList(5);
  list.replace([list.hash('listed', 'acme')]);
  let vouching = true;
  const known = new KnownKeys(
    1000,
    () => 0,
    () => (vouching ? list : undefined),
  );
  const [listed, other] = [key('listed'), key('other')];
  t.strictSame(known.unconfirmed([listed, other]), [other], 'a listed key is not asked about');
  t.strictSame(known.unconfirmed([key('listed', 'globex')]), [key('listed', 'globex')], 'nor trusted under another org');
  known.confirm([other]);
  t.strictSame(known.unconfirmed([listed, other]), [], 'confirmed keys beside it');
  vouching = false;
  t.strictSame(known.unconfirmed([listed, other]), [listed], 'once the list no longer vouches, only confirmed keys are trusted');
});

t.test("a key the aggregator found listed in the list's current generation is trusted without a hash; in an older one, looked up again", async (t) => {
  const list = new KeyList(5);
  list.replace([list.hash('listed', 'acme')]);
  let lookups = 0;
  const admits = (keyId: string, orgId: string) => (lookups++, list.admits(keyId, orgId));
  const known = new KnownKeys(
    1000,
    () => 0,
    () => ({ generation: list.generation, admits }),
  );
  const tagged = (keyId: string, listedIn: number) => ({ ...key(keyId), listedIn });
  const first = list.generation;
  t.strictSame(known.unconfirmed([tagged('listed', first), tagged('gone', first)]), [], 'both were listed in this generation');
  t.equal(lookups, 0, 'no hash for either');
  list.replace([list.hash('listed', 'acme')]);
  t.strictSame(known.unconfirmed([tagged('listed', first), tagged('gone', first)]), [tagged('gone', first)], 'a full read since: deleted keys are asked about');
  t.equal(lookups, 2, 'each looked up again');
  t.strictSame(known.unconfirmed([tagged('listed', NOT_LISTED), key('listed')]), [], 'listed by no generation, or untold: looked up');
  t.equal(lookups, 4);
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
  now = 999;
  t.strictSame(known.unconfirmed([early, late]), []);
  now = 1000;
  t.strictSame(known.unconfirmed([early, late]), [early, late], 'confirmed before the last two turns: asked again');
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

t.test('a clock that steps back forgets everything, and trusts what it confirms next for a TTL at most', async (t) => {
  let now = 3_600_000;
  const known = new KnownKeys(1000, () => now);
  known.confirm([key('a')]);
  now = 100;
  t.strictSame(known.unconfirmed([key('a')]), [key('a')], 'an hour back: asked again');
  known.confirm([key('a')]);
  now = 1099;
  t.strictSame(known.unconfirmed([key('a')]), []);
  now = 1100;
  t.strictSame(known.unconfirmed([key('a')]), [key('a')], 'a TTL after its confirmation, not when the clock catches up');
});
