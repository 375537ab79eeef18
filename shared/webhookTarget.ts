import dns from 'node:dns';
import { BlockList, isIP } from 'node:net';
import type { LookupSlots } from './lookupSlots';
import { within } from './within';

// Webhook receivers are chosen by API clients, so a URL must not turn the collector into a proxy
// to the internal network (SSRF). Every address a host resolves to is checked, at create time
// and again at send time, and the request connects to the checked address only (no second DNS
// answer to rebind to).

const PRIVATE_RANGES: Array<[string, number, 'ipv4' | 'ipv6']> = [
  ['0.0.0.0', 8, 'ipv4'], // "this network"
  ['10.0.0.0', 8, 'ipv4'],
  ['100.64.0.0', 10, 'ipv4'], // carrier-grade NAT
  ['127.0.0.0', 8, 'ipv4'],
  ['169.254.0.0', 16, 'ipv4'], // link-local, cloud metadata endpoints
  ['172.16.0.0', 12, 'ipv4'],
  ['192.0.0.0', 24, 'ipv4'],
  ['192.168.0.0', 16, 'ipv4'],
  ['198.18.0.0', 15, 'ipv4'],
  ['224.0.0.0', 3, 'ipv4'], // multicast, reserved, broadcast
  ['::', 96, 'ipv6'], // unspecified, loopback, and IPv4-compatible (::a.b.c.d)
  // Prefixes that carry an IPv4 address to a gateway that reaches it: through them an IPv6
  // address reached 10.0.0.5 (64:ff9b::a00:5 on a network with NAT64).
  ['64:ff9b::', 96, 'ipv6'], // NAT64, well-known
  ['64:ff9b:1::', 48, 'ipv6'], // NAT64, local use
  ['::ffff:0:0:0', 96, 'ipv6'], // IPv4-translated (SIIT): ::ffff:0:a00:5 reached 10.0.0.5 through a translator
  ['2002::', 16, 'ipv6'], // 6to4
  ['2001::', 32, 'ipv6'], // Teredo
  ['fc00::', 7, 'ipv6'], // unique local
  ['fe80::', 10, 'ipv6'], // link-local
  ['fec0::', 10, 'ipv6'], // site-local (deprecated, still routed inside some networks)
  ['ff00::', 8, 'ipv6'], // multicast
];

const privateAddresses = new BlockList();
for (const [network, prefix, family] of PRIVATE_RANGES) privateAddresses.addSubnet(network, prefix, family);

/** Loopback, private, link-local and other non-public addresses; IPv4-mapped IPv6 included. */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  return privateAddresses.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export interface ResolvedAddress {
  address: string;
  family: number;
}

export class TargetRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TargetRefusedError';
  }
}

export type Lookup = (hostname: string) => Promise<ResolvedAddress[]>;

const systemLookup: Lookup = (hostname) => dns.promises.lookup(hostname, { all: true, verbatim: true });

const NOT_PUBLIC = 'host does not resolve, or resolves to a private, loopback or link-local address';

/** The addresses to connect to; refuses a host that does not resolve or has any non-public address. */
export async function resolveTarget(url: URL, allowPrivate: boolean, lookup: Lookup = systemLookup): Promise<ResolvedAddress[]> {
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  let addresses: ResolvedAddress[];
  try {
    addresses = await lookup(hostname);
  } catch {
    addresses = [];
  }
  // A name gets one answer whether it does not resolve or resolves to a private address, and never
  // the address: an org must not learn through its webhooks what names the server's own network
  // resolves, or to what. An address given as such is named back.
  const refused = addresses.find((entry) => isPrivateAddress(entry.address));
  if (addresses.length === 0 || (refused && !allowPrivate)) {
    throw new TargetRefusedError(isIP(hostname) ? `${hostname} is a private, loopback or link-local address` : NOT_PUBLIC);
  }
  return addresses;
}

/** Who resolves and through what: the lookup (the system's unless given), the process's slots, and the org they are for. */
export interface LookupFor {
  lookup?: Lookup;
  slots: LookupSlots;
  owner: string;
}

/**
 * resolveTarget within `timeoutMs`, the wait for a lookup slot included; undefined past it. A name
 * server that stopped answering held whatever waited on the lookup (a send past its claim's lease,
 * a create request) with no end. The lookup itself goes on (Node cannot cancel it), holding its
 * slot (shared/lookupSlots.ts), but its caller does not wait for it.
 */
export async function resolveTargetWithin(url: URL, allowPrivate: boolean, timeoutMs: number, via: LookupFor): Promise<ResolvedAddress[] | undefined> {
  const startedAt = Date.now();
  const release = await via.slots.take(via.owner, timeoutMs);
  if (!release) return undefined;
  const leftMs = timeoutMs - (Date.now() - startedAt);
  // A slot granted at the deadline: a lookup started now would hold it, and a thread, for nothing.
  if (leftMs <= 0) {
    release();
    return undefined;
  }
  const lookup = via.lookup ?? systemLookup;
  // Through a promise first: a lookup that throws instead of rejecting still gives its slot back.
  const resolving = resolveTarget(url, allowPrivate, (hostname) =>
    Promise.resolve()
      .then(() => lookup(hostname))
      .finally(release),
  );
  return within(resolving, leftMs);
}
