import { isIP } from 'node:net';
import type { Request } from 'express';
import { canonicalIpv6 } from '../../shared/ipv6Canonical';

// IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d; operators expect a.b.c.d.
export function normaliseAddress(address: string | undefined): string {
  if (!address) return '0.0.0.0';
  // Zone ids (fe80::1%eth0) mean nothing off-host, and the collector refuses them.
  const bare = address.includes('%') ? address.slice(0, address.indexOf('%')) : address;
  return bare.startsWith('::ffff:') && bare.includes('.') ? bare.slice(7) : bare;
}

// Header text from a trusted proxy names an address in any spelling: upper case, an IPv4 client
// as ::FFFF:c000:201, a port some proxies append (1.2.3.4:5678, [2001:db8::1]:443). One client
// counted as two addresses (and raised key.new_ip twice), or, with a port, fell back to the
// proxy's own address. Undefined when the text is no address.
export function forwardedAddress(text: string): string | undefined {
  const unported = /^\[([^\]]+)\](?::\d+)?$/.exec(text)?.[1] ?? /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(text)?.[1] ?? text;
  const family = isIP(unported);
  if (family !== 6) return family === 4 ? unported : undefined;
  return canonicalIpv6(unported.includes('%') ? unported.slice(0, unported.indexOf('%')) : unported);
}

// req.ip runs proxy-addr on every call (about 5 µs); when no proxy is trusted, the socket's
// peer is the answer and costs a property read.
export function clientAddressResolver(trustProxy: boolean | number | readonly string[]): (req: Request) => string {
  if (trustProxy === false) return (req) => normaliseAddress(req.socket.remoteAddress);
  // Behind a trusted proxy the address is header text; anything that is not an IP falls back
  // to the peer, so it cannot break the datagram or be dropped by the collector.
  return (req) => {
    const forwarded = req.ip === undefined ? undefined : forwardedAddress(req.ip);
    return forwarded ?? normaliseAddress(req.socket.remoteAddress);
  };
}
