import dns from 'node:dns';
import { BlockList, isIP } from 'node:net';
import type { LookupSlots } from './lookupSlots';
import { steadyNow } from './steadyClock';
import { within } from './within';

// Webhook receivers are chosen by API clients, so a URL must not turn the collector into a proxy
// to the internal network (SSRF). Every address a host resolves to is checked, at create time
// and again at send time, and the request connects to the checked address only (no second DNS
// answer to rebind to).

const PRIVATE_IPV4: Array<[string, number]> = [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata endpoints
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 3], // multicast, reserved, broadcast
];

const PRIVATE_IPV6: Array<[string, number]> = [
  ['::', 96], // unspecified, loopback, and IPv4-compatible (::a.b.c.d)
  // Prefixes that carry an IPv4 address to a gateway that reaches it, refused whole: through them
  // an IPv6 address reached 10.0.0.5.
  ['64:ff9b:1::', 48], // NAT64, local use: where its IPv4 address sits is the network's choice (RFC 6052)
  ['::ffff:0:0:0', 96], // IPv4-translated (SIIT), which no DNS64 answers: ::ffff:0:a00:5 reached 10.0.0.5
  ['2001::', 32], // Teredo: the IPv4 addresses it carries are a relay's and an obfuscated client's
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated, still routed inside some networks)
  ['ff00::', 8], // multicast
];

// Prefixes whose gateway reaches the IPv4 address at a known place in the IPv6 one: that address
// is held to the IPv4 rules. They were refused whole, and on an IPv6-only network with DNS64,
// where every IPv4-only host resolves to 64:ff9b::<its IPv4 address>, so was every webhook to
// such a host. IPv4-mapped addresses (::ffff:a.b.c.d) need none: BlockList checks them against
// the IPv4 rules itself.
function sixToFour(network: string): string {
  const [a, b, c, d] = network.split('.').map(Number);
  return `2002:${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}::`;
}
const IPV4_CARRIERS: Array<[(network: string) => string, number]> = [
  [(network) => `64:ff9b::${network}`, 96], // NAT64, well-known (64:ff9b::/96)
  [sixToFour, 16], // 6to4 (2002::/16)
];

const privateAddresses = new BlockList();
for (const [network, prefix] of PRIVATE_IPV4) {
  privateAddresses.addSubnet(network, prefix, 'ipv4');
  for (const [carry, carrierBits] of IPV4_CARRIERS) privateAddresses.addSubnet(carry(network), carrierBits + prefix, 'ipv6');
}
for (const [network, prefix] of PRIVATE_IPV6) privateAddresses.addSubnet(network, prefix, 'ipv6');

/** Loopback, private, link-local and other non-public addresses; an IPv4 address inside an IPv6 one (mapped, NAT64, 6to4) by the IPv4 rules. */
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

const hostOf = (url: URL) => url.hostname.replace(/^\[(.*)\]$/, '$1');

// An address given as such is checked as it is: there is nothing to look up.
function givenAddress(hostname: string): ResolvedAddress[] | undefined {
  const family = isIP(hostname);
  return family === 0 ? undefined : [{ address: hostname, family }];
}

async function lookupOrNone(lookup: Lookup, hostname: string): Promise<ResolvedAddress[]> {
  try {
    return await lookup(hostname);
  } catch {
    return [];
  }
}

/** The addresses to connect to; refuses a host that does not resolve or has any non-public address. */
export async function resolveTarget(url: URL, allowPrivate: boolean, lookup: Lookup = systemLookup): Promise<ResolvedAddress[]> {
  const hostname = hostOf(url);
  const addresses = givenAddress(hostname) ?? (await lookupOrNone(lookup, hostname));
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
 * Why resolveTargetWithin has no addresses: every lookup slot stayed taken until the deadline (no
 * lookup started: the host was not tried), or the lookup did not answer in time.
 */
export type Unresolved = 'lookups busy' | 'lookup timed out';

/**
 * resolveTarget within `timeoutMs`, the wait for a lookup slot included. A name server that
 * stopped answering held whatever waited on the lookup (a send past its claim's lease, a create
 * request) with no end. The lookup itself goes on (Node cannot cancel it), holding its slot
 * (shared/lookupSlots.ts), but its caller does not wait for it.
 */
export async function resolveTargetWithin(url: URL, allowPrivate: boolean, timeoutMs: number, via: LookupFor): Promise<ResolvedAddress[] | Unresolved> {
  // No lookup, so no slot: two orgs whose name servers never answered held both, and every other
  // org's sends to an address given as such waited for them and failed.
  if (givenAddress(hostOf(url))) return resolveTarget(url, allowPrivate);
  // On the steady clock: a wall clock stepped during the wait for a slot took a slot granted in
  // time as granted late, or gave a silent name server the step on top of the timeout.
  const startedAt = steadyNow();
  const release = await via.slots.take(via.owner, timeoutMs);
  // Waiting behind its own org's lookups (its name server not answering) is its host not
  // resolving, an attempt like any: put back uncounted, such an org's deliveries came back every
  // WEBHOOK_RETRY_BASE_MS and never gave up, and its creates were told the server was busy.
  if (!release) return via.slots.holdsShare(via.owner) ? 'lookup timed out' : 'lookups busy';
  const leftMs = timeoutMs - (steadyNow() - startedAt);
  // A slot granted at the deadline: a lookup started now would hold it, and a thread, for nothing.
  if (leftMs <= 0) {
    release();
    return 'lookups busy';
  }
  // The slot is given back when resolveTarget ends, which is when its lookup ends (or throws).
  const resolving = resolveTarget(url, allowPrivate, via.lookup ?? systemLookup).finally(release);
  return (await within(resolving, leftMs)) ?? 'lookup timed out';
}
