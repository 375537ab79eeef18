import { isIP } from 'node:net';
import type { Request } from 'express';

// IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d; operators expect a.b.c.d.
export function normaliseAddress(address: string | undefined): string {
  if (!address) return '0.0.0.0';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
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
