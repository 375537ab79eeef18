// KeyList (collector/keyList.ts): which (key, org) pairs a crowded aggregator admits.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { KeyList } from '../collector/keyList';

const pairs = (n: number) => Array.from({ length: n }, () => ({ keyId: randomUUID(), orgId: randomUUID() }));
const listOf = (list: KeyList, keys: ReadonlyArray<{ keyId: string; orgId: string }>) => keys.map((k) => list.hash(k.keyId, k.orgId));

t.test('before its first full read the list admits every key', async (t) => {
  const list = new KeyList(7);
  t.equal(list.loaded, false);
  t.ok(list.admits(randomUUID(), randomUUID()));
  list.add(listOf(list, pairs(1)));
  t.equal(list.loaded, false, 'only a full read loads it');
  t.ok(list.admits(randomUUID(), randomUUID()));
});

t.test('once read, only the pairs read are admitted, each only in its own org', async (t) => {
  const list = new KeyList(7);
  const real = pairs(1000);
  list.replace(listOf(list, real));
  t.equal(list.loaded, true);
  t.equal(list.size, 1000);
  t.ok(
    real.every((k) => list.admits(k.keyId, k.orgId)),
    'every listed pair',
  );
  t.notOk(list.admits(real[0].keyId, real[1].orgId), 'a real key id under another org');
  t.notOk(list.admits(real[0].orgId, real[0].keyId), 'the ids swapped');
  const forged = pairs(100_000);
  t.equal(forged.filter((k) => list.admits(k.keyId, k.orgId)).length, 0, 'none of 100,000 forged pairs');
});

t.test('keys added between full reads are admitted; the next full read forgets keys gone from it', async (t) => {
  const list = new KeyList(7);
  const [kept, deleted, created] = [pairs(3), pairs(2), pairs(2)];
  list.replace(listOf(list, [...kept, ...deleted]));
  list.add(listOf(list, [...created, kept[0]]));
  t.equal(list.size, 7, 'a key read again is not counted twice');
  t.ok([...kept, ...deleted, ...created].every((k) => list.admits(k.keyId, k.orgId)));
  list.replace(listOf(list, [...kept, ...created]));
  t.equal(list.size, 5);
  t.notOk(
    deleted.some((k) => list.admits(k.keyId, k.orgId)),
    'deleted keys are no longer admitted',
  );
  t.ok([...kept, ...created].every((k) => list.admits(k.keyId, k.orgId)));
});

t.test('hashes: 53 bits, the boundary between the ids counts, and they depend on the seed', async (t) => {
  const list = new KeyList(7);
  const hashes = listOf(list, pairs(10_000));
  t.ok(
    hashes.every((h) => Number.isSafeInteger(h) && h >= 0),
    'safe non-negative integers',
  );
  t.equal(new Set(hashes).size, hashes.length, 'no two of 10,000 pairs alike');
  t.not(list.hash('ab', 'c'), list.hash('a', 'bc'));
  t.not(list.hash('a', 'b'), new KeyList(8).hash('a', 'b'));
  t.ok(
    hashes.some((h) => h >= 2 ** 52),
    'the top bit is used',
  );
});

t.test('a list read empty grows as keys are added, and still tells them from forged ones', async (t) => {
  const list = new KeyList(7);
  list.replace([]);
  t.notOk(list.admits(randomUUID(), randomUUID()), 'an empty list admits nothing');
  const created = pairs(50_000);
  for (const key of created) list.add([list.hash(key.keyId, key.orgId)]);
  t.equal(list.size, 50_000);
  t.ok(
    created.every((k) => list.admits(k.keyId, k.orgId)),
    'every key added',
  );
  t.equal(pairs(50_000).filter((k) => list.admits(k.keyId, k.orgId)).length, 0, 'no forged one');
});

t.test('a pair packed as the full read packs it hashes as the pair does', async (t) => {
  const list = new KeyList(7);
  const [first, second] = pairs(2);
  const packed = first.keyId + first.orgId + second.keyId + second.orgId;
  t.equal(list.hashPacked(packed, 0), list.hash(first.keyId, first.orgId));
  t.equal(list.hashPacked(packed, 72), list.hash(second.keyId, second.orgId));
});
