import { isDeepStrictEqual } from 'node:util';
import { createDatagramParser } from '../../shared/usageDatagram';
import { parsePacket, type PacketResult, type UsageSample } from '../../shared/usageWire';

export interface Parsed {
  result: PacketResult;
  samples: UsageSample[];
  others: string[];
}

// One parser for every call, as the collector keeps one: ids seen in earlier packets are then
// found in its table, so both of its ways to an id are compared.
const parseDatagram = createDatagramParser();

/**
 * parsePacket on `packet`, after checking that the collector's byte parser gives the same for the
 * bytes the receiver would get (the latin1 bytes, or UTF-8 for text beyond latin1) as parsePacket
 * gives for their latin1 text. Throws, with both outcomes, if they differ.
 */
export function parseWithParity(packet: string): Parsed {
  const latin1 = !/[^\x00-\xff]/.test(packet);
  const bytes = Buffer.from(packet, latin1 ? 'latin1' : 'utf8');
  const fromBytes = collect((onSample, onOther) => parseDatagram(bytes, onSample, onOther));
  const fromText = collect((onSample, onOther) => parsePacket(bytes.toString('latin1'), onSample, onOther));
  if (!isDeepStrictEqual(fromBytes, fromText)) {
    throw new Error(`parseDatagram and parsePacket differ on ${JSON.stringify(packet)}: ${JSON.stringify({ fromBytes, fromText })}`);
  }
  return latin1 ? fromText : collect((onSample, onOther) => parsePacket(packet, onSample, onOther));
}

function collect(parse: (onSample: (sample: UsageSample) => void, onOther: (line: string) => void) => PacketResult): Parsed {
  const samples: UsageSample[] = [];
  const others: string[] = [];
  const result = parse(
    (sample) => samples.push(sample),
    (line) => others.push(line),
  );
  return { result, samples, others };
}
