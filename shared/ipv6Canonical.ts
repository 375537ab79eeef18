// One IPv6 address has many spellings (upper case, zeros written out), and an IPv4 client of a
// dual-stack socket, or named by a proxy, is ::ffff:a.b.c.d or ::FFFF:c000:201. Spelled so, one
// client counted as two addresses, and a mapped address is IPv6 to PostgreSQL: its /64 is ::/64,
// the network of every IPv4 client so written, so none of them was ever a new network.

/** A valid IPv6 address in its canonical form, or the dotted IPv4 address it maps. */
export function canonicalIpv6(ip: string): string {
  // The URL parser writes IPv6 in its canonical form: lower case, zeros compressed, mapped IPv4 in hex.
  const canonical = new URL(`http://[${ip}]`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (!mapped) return canonical;
  const [high, low] = [parseInt(mapped[1], 16), parseInt(mapped[2], 16)];
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
}
