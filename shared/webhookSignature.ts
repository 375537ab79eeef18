import { createHmac } from 'node:crypto';

// Stripe-style signature of a webhook body: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`
// keyed with the whole secret string (`whsec_…`). The timestamp is signed with the body, so a
// receiver that checks it within a tolerance window cannot be fed an old delivery again.
export const SIGNATURE_HEADER = 'Keyusage-Signature';

export function signatureHeader(secret: string, body: string, timestampSeconds: number): string {
  const digest = createHmac('sha256', secret).update(`${timestampSeconds}.${body}`).digest('hex');
  return `t=${timestampSeconds},v1=${digest}`;
}
