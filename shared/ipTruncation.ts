import { isIPv4, isIPv6 } from 'node:net';

// IP_TRUNCATE: addresses are cut to their network before they are aggregated or stored — IPv4 to
// its /24 (203.0.113.0), IPv6 to its /48 (2001:db8:1::) — so the data still shows which network a
// key is used from, but no longer points at one subscriber. A 6to4 address (2002::/16) is cut to
// its /40: its /48 is 2002: and the client's whole public IPv4 address, the /40 that address's /24
// (2002:cb00:7105::9, of 203.0.113.5, to 2002:cb00:7100::). The /48 of the other forms that embed
// an IPv4 address (NAT64, Teredo, ISATAP) holds at most two bytes of it; a mapped one arrives as
// IPv4 (shared/ipv6Canonical.ts). Anything that is not an IP address is returned as it is (the
// parser has already refused such lines).

const SIX_TO_FOUR = /^2002:/i;

/**
 * The prefix length of the network IP_TRUNCATE keeps of a valid address (so no check, as in
 * networkOf): 24, 48, or 40 for 6to4; what a truncated address stands for
 * (collector/eventRules.ts outsideNetworks).
 */
export function truncationBits(ip: string): number {
  if (!ip.includes(':')) return 24;
  return SIX_TO_FOUR.test(ip) ? 40 : 48;
}

export function truncateIp(ip: string): string {
  if (isIPv4(ip)) return `${ip.slice(0, ip.lastIndexOf('.'))}.0`;
  if (!isIPv6(ip)) return ip;
  const bits = truncationBits(ip);
  // The network in its shortest form: the bits past it zeroed, trailing zero groups folded into the '::'.
  const network = ipv6Hextets(ip)
    .slice(0, 3)
    .map((hextet, index) => hextet & hextetMask(bits - 16 * index));
  while (network.length > 0 && network[network.length - 1] === 0) network.pop();
  return `${network.map((hextet) => hextet.toString(16)).join(':')}::`;
}

// The mask of a group whose first `bits` bits (none below 0, all from 16) are the network's.
const hextetMask = (bits: number) => (0xffff << (16 - Math.min(16, Math.max(0, bits)))) & 0xffff;

/**
 * The network key.new_ip compares (collector/eventStore.ts) of an address the collector kept (a
 * valid one, so no check: node's isIPv6 regex cost a merge of held batches seconds): an IPv4
 * address's /24, an IPv6 address's /64, as a string equal for two addresses of one network.
 */
export function networkOf(ip: string): string {
  if (!ip.includes(':')) return ip.slice(0, ip.lastIndexOf('.'));
  // Canonical (shared/usageWire.ts wireAddress): groups in hex without leading zeros, no dotted
  // tail, one '::' at most, so the first four groups as written, '::' standing for its zeros, are
  // one string per /64.
  const gap = ip.indexOf('::');
  // Most addresses write their first four groups out: the network is what comes before the fourth ':'.
  let fourth = -1;
  for (let colons = 0; colons < 4; colons++) {
    fourth = ip.indexOf(':', fourth + 1);
    if (fourth === -1) break;
  }
  if (fourth !== -1 && (gap === -1 || gap >= fourth)) return ip.slice(0, fourth);
  // The '::' stands among the first four groups.
  const head = gap === 0 ? [] : ip.slice(0, gap).split(':');
  const tail = ip.length === gap + 2 ? [] : ip.slice(gap + 2).split(':');
  const groups = [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  return groups.slice(0, 4).join(':');
}

// The eight 16-bit groups of a valid IPv6 address, '::' expanded and an IPv4 tail read as two.
function ipv6Hextets(ip: string): number[] {
  const [head, tail = ''] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const groups = (part: string) =>
    part === ''
      ? []
      : part.split(':').flatMap((group) => {
          if (!group.includes('.')) return [parseInt(group, 16)];
          const [a, b, c, d] = group.split('.').map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const left = groups(head);
  const right = ip.includes('::') ? groups(tail) : [];
  return [...left, ...Array(8 - left.length - right.length).fill(0), ...right];
}
