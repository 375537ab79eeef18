// Maps fed by client input (key ids, addresses) must not grow without bound. Setting a key moves it
// to the end of the insertion order, so when the map is full the entry set longest ago goes first.
// Returns whether an entry was evicted.
export function setBounded<K, V>(map: Map<K, V>, key: K, value: V, maxEntries: number): boolean {
  const evict = !map.delete(key) && map.size >= maxEntries;
  if (evict) map.delete(map.keys().next().value as K);
  map.set(key, value);
  return evict;
}
