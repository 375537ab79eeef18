import { isIP } from 'node:net';
import type { Request } from 'express';

// IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d; operators expect a.b.c.d.
export function normaliseAddress(address: string | undefined): string {
  if (!address) return '0.0.0.0';
  // Zone ids (fe80::1%eth0) mean nothing off-host, and the collector refuses them.
  const bare = address.includes('%') ? address.slice(0, address.indexOf('%')) : address;
  return bare.startsWith('::ffff:') && bare.includes('.') ? bare.slice(7) : bare;
}

// req.ip runs proxy-addr on every call (about 5 µs); when no proxy is trusted, the socket's
// peer is the answer and costs a property read.
export function clientAddressResolver(trustProxy: boolean | number | readonly string[]): (req: Request) => string {
  if (trustProxy === false) return (req) => normaliseAddress(req.socket.remoteAddress);
  // Behind a trusted proxy the address is header text; anything that is not an IP falls back
  // to the peer, so it cannot break the datagram or be dropped by the collector.
  return (req) => {
    const forwarded = req.ip;
    return normaliseAddress(forwarded && isIP(forwarded) ? forwarded : req.socket.remoteAddress);
  };
}
