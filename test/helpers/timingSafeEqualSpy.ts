import crypto from 'node:crypto';
import path from 'node:path';

type Tap = { mockRequire<T>(module: string, mocks: Record<string, unknown>): T };

/**
 * `modulePath` (as a test file in test/ names it) loaded with node:crypto's timingSafeEqual watched:
 * every pair it compared lands in `compared`. Whether a secret is compared in constant time is not
 * seen in any result.
 */
export function withTimingSafeEqualSpy<T>(t: Tap, modulePath: string): { module: T; compared: Array<[Buffer, Buffer]> } {
  const compared: Array<[Buffer, Buffer]> = [];
  const module = t.mockRequire<T>(path.join(__dirname, '..', modulePath), {
    'node:crypto': {
      ...crypto,
      timingSafeEqual: (a: Buffer, b: Buffer) => {
        compared.push([a, b]);
        return crypto.timingSafeEqual(a, b);
      },
    },
  });
  return { module, compared };
}
