import { BlockList, isIP } from 'node:net';

// "Loopback" decides whether a guard applies, so it is decided on the address itself: a host
// name such as `127.example.com` or `localhost` can resolve anywhere, and a prefix test would
// take it for loopback. BlockList also matches IPv4-mapped IPv6 (::ffff:127.0.0.1).
const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

const MAPPED = new BlockList();
MAPPED.addSubnet('::ffff:0:0', 96, 'ipv6');

const WILDCARD = new BlockList();
WILDCARD.addAddress('0.0.0.0', 'ipv4');
WILDCARD.addAddress('::', 'ipv6');

const within = (list: BlockList, host: string): boolean => {
  const family = isIP(host);
  return family !== 0 && list.check(host, family === 6 ? 'ipv6' : 'ipv4');
};

/** True only for an IP literal in 127.0.0.0/8, ::1, or ::ffff:127.x.x.x; false for any name. */
export const isLoopbackAddress = (host: string): boolean => within(LOOPBACK, host);

/** True for the wildcard (unspecified) address 0.0.0.0 or ::, however spelled. */
export const isWildcardAddress = (host: string): boolean => within(WILDCARD, host);

/** The IPv4 address of an IPv4-mapped IPv6 literal (::ffff:127.0.0.1, however spelled); undefined for anything else. */
export function ipv4OfMapped(address: string): string | undefined {
  if (!within(MAPPED, address) || isIP(address) !== 6) return undefined;
  // The URL parser writes any spelling of it as ::ffff:hhhh:hhhh; it refuses a zone (%eth0), which
  // names an interface, not another address.
  const groups = new URL(`udp://[${address.replace(/%.*$/, '')}]`).hostname.slice(1, -1).split(':').slice(-2);
  return groups.flatMap((group) => [parseInt(group, 16) >> 8, parseInt(group, 16) & 255]).join('.');
}
