import { isIPv4, isIPv6 } from 'node:net';

// IP_TRUNCATE: addresses are cut to their network before they are aggregated or stored — IPv4 to
// its /24 (203.0.113.0), IPv6 to its /48 (2001:db8:1::) — so the data still shows which network a
// key is used from, but no longer points at one subscriber. Anything that is not an IP address is
// returned as it is (the parser has already refused such lines).

export function truncateIp(ip: string): string {
  if (isIPv4(ip)) return `${ip.slice(0, ip.lastIndexOf('.'))}.0`;
  if (!isIPv6(ip)) return ip;
  // The /48 in its shortest form: trailing zero groups fold into the '::'.
  const network = ipv6Hextets(ip).slice(0, 3);
  while (network.length > 0 && network[network.length - 1] === 0) network.pop();
  return `${network.map((hextet) => hextet.toString(16)).join(':')}::`;
}

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
