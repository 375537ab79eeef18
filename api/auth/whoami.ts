import type { RequestHandler } from 'express';
import { z } from 'zod';
import { SCOPES } from '../keys/scopes';
import { idString } from '../responses';

// The key a request is made with, as a client may see it: a quick check that a key works.
export const whoamiBody = z.object({ keyId: idString, orgId: idString, name: z.string(), scopes: z.array(z.enum(SCOPES)) }).meta({ id: 'WhoAmI' });

export const whoami: RequestHandler = (_req, res) => {
  const { key } = res.locals.auth!;
  res.json({ keyId: key.id, orgId: key.orgId, name: key.name, scopes: key.scopes } satisfies z.output<typeof whoamiBody>);
};
