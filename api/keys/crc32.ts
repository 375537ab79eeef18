// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): the same values as zlib's, gzip's and
// PNG's. Written here rather than imported because zlib.crc32 appeared only in Node 20.15, and on
// an older Node 20 every key with a checksum failed to be made or checked.
const TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let bit = 0; bit < 8; bit++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

/** CRC-32 of the bytes, or of a string's UTF-8, as an unsigned 32-bit number. */
export function crc32(data: string | Uint8Array): number {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
