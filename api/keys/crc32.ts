// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): the same values as zlib's, gzip's and
// PNG's. Written here rather than imported because zlib.crc32 appeared only in Node 20.15, and on
// an older Node 20 every key with a checksum failed to be made or checked.
const TABLE = Int32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let bit = 0; bit < 8; bit++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

/** CRC-32 of the bytes, or of a string's UTF-8, as an unsigned 32-bit number. */
export function crc32(data: string | Uint8Array): number {
  if (typeof data === 'string') return crc32OfText(data);
  let crc = -1;
  for (let i = 0; i < data.length; i++) crc = TABLE[(crc ^ data[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ -1) >>> 0;
}

// Every key is ASCII, whose characters are their UTF-8 bytes: read in place, the check costs
// what zlib's did; a Buffer made per call (on the auth path, every request) cost twice that.
function crc32OfText(text: string): number {
  let crc = -1;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0x7f) return crc32(Buffer.from(text, 'utf8'));
    crc = TABLE[(crc ^ code) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ -1) >>> 0;
}
