import fs from 'node:fs';
import { endianness } from 'node:os';
import { canonicalIpv6 } from '../shared/ipv6Canonical';

// The datagrams the kernel drops before the collector reads them (its receive queue full: a burst,
// a pause of the receive loop, or a flood of forged datagrams crowding out genuine ones) are seen
// by no counter of the collector's own: forged usage lines even raise uses_received_total, hiding
// the loss from the check against the APIs' uses sent. Linux counts them per socket, in the last
// column (`drops`) of /proc/net/udp and /proc/net/udp6; the host-wide RcvbufErrors of
// /proc/net/snmp mixes in every other socket.

export interface UdpTableRow {
  /** As Node and `canonicalIpv6` spell it: 127.0.0.1, ::1, 0.0.0.0, ::. */
  address: string;
  port: number;
  drops: number;
}

const TABLES = { IPv4: '/proc/net/udp', IPv6: '/proc/net/udp6' } as const;
const ROW = /^\s*\d+:\s+([0-9A-F]{8}|[0-9A-F]{32}):([0-9A-F]{4})\s.*\s(\d+)\s*$/;

/**
 * The sockets of a /proc/net/udp or /proc/net/udp6 table. The kernel prints an address as 32-bit
 * words read in the host's byte order (127.0.0.1 is 0100007F on a little-endian host), the port
 * in hex, and the drops last.
 */
export function parseUdpTable(text: string, littleEndian = endianness() === 'LE'): UdpTableRow[] {
  const rows: UdpTableRow[] = [];
  for (const line of text.split('\n')) {
    const match = ROW.exec(line);
    if (match) rows.push({ address: addressOf(match[1], littleEndian), port: parseInt(match[2], 16), drops: Number(match[3]) });
  }
  return rows;
}

function addressOf(hex: string, littleEndian: boolean): string {
  const bytes = hex.match(/.{8}/g)!.flatMap((word) => {
    const inWord = word.match(/../g)!.map((pair) => parseInt(pair, 16));
    return littleEndian ? inWord.reverse() : inWord;
  });
  if (bytes.length === 4) return bytes.join('.');
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i] << 8) | bytes[2 * i + 1]).toString(16));
  return canonicalIpv6(groups.join(':'));
}

/** The drops of the sockets bound to `address`:`port` (summed: sockets sharing a port with SO_REUSEPORT each have a line). */
export function dropsAt(rows: readonly UdpTableRow[], address: string, port: number): number {
  return rows.reduce((sum, row) => (row.address === address && row.port === port ? sum + row.drops : sum), 0);
}

/**
 * Reads, when called, the kernel's drop count for the socket bound to `bound` (a dgram socket's
 * address()); undefined where the kernel has no such table (not Linux). A failed read (no file
 * descriptor left) answers the last count: a scrape must not fail, nor a counter go back to 0.
 */
export function kernelDropCounter(bound: { address: string; family: string; port: number }): (() => number) | undefined {
  const table = bound.family === 'IPv6' ? TABLES.IPv6 : TABLES.IPv4;
  if (!fs.existsSync(table)) return undefined;
  // A link-local address's zone (fe80::1%eth0) is not in the table.
  const address = bound.family === 'IPv6' ? canonicalIpv6(bound.address.replace(/%.*$/, '')) : bound.address;
  let last = 0;
  return () => {
    try {
      last = dropsAt(parseUdpTable(fs.readFileSync(table, 'utf8')), address, bound.port);
    } catch {
      // the last count stands
    }
    return last;
  };
}
