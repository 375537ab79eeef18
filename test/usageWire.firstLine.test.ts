import t from 'tap';
import { createDatagramParser } from '../shared/usageDatagram';
import { parsePacket, type UsageSample } from '../shared/usageWire';

// A file of its own, so that its process has parsed no line before: the line parser keeps the last
// org id it read (usageWire.ts, isLastOrg), and this checks what it does before it has one. The
// API's lines never reach that parser (the collector reads them from their bytes), so in a
// collector it may never have read an org when a forged line comes.
const KEY = '3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f';
const ORG = '9b2d4f6a-1c3e-4a5b-8d7f-6e5d4c3b2a19';
const NUL_ORG = '\0'.repeat(36);
const line = (org: string) => `apikey.used:1|c|#key:${KEY},org:${org},ip:192.0.2.1,outcome:ok`;

t.test("the collector's parser, from the bytes, refuses an org id of 36 NULs (first: no org read yet)", async (t) => {
  const parse = createDatagramParser();
  const samples: UsageSample[] = [];
  const result = parse(Buffer.from(`${line(NUL_ORG)}\n${line(NUL_ORG.replace(/\0/g, 'A'))}`, 'latin1'), (s) => samples.push(s));
  t.same(samples, []);
  t.equal(result.invalid, 2);
});

t.test('so does the line parser, before and after a real org was read', async (t) => {
  for (const packet of [line(NUL_ORG), `${line(ORG)}\n${line(NUL_ORG)}`]) {
    const samples: UsageSample[] = [];
    const result = parsePacket(packet, (s) => samples.push(s));
    t.same(
      samples.map((s) => s.orgId),
      packet.includes(ORG) ? [ORG] : [],
      'no sample with an org id that is no UUID',
    );
    t.equal(result.invalid, 1);
    t.match(result.firstError, /^bad org /);
  }
});
