import type { Db } from '../../shared/db';
import { TABLE } from '../../shared/tables';
import type { startTestApi } from './api';

const DAY_MS = 86_400_000;

/**
 * A keys:read key of `orgId` made through the service, as the CLI does, and dated 40 days back: a
 * clean-up of 30 days, which spares the keys made within its period, finds it dormant. With its
 * plaintext, to check whether its secret works. `now`: the API's clock, where the test moves it.
 */
export async function backdatedKey(
  api: Awaited<ReturnType<typeof startTestApi>>,
  db: Db,
  orgId: string,
  name: string,
  expiresAt: Date | null = null,
  now = Date.now(),
) {
  const made = await api.services.apiKeys.create(orgId, { name, scopes: ['keys:read'], expiresAt });
  await db(TABLE.apiKeys)
    .where({ id: made.key.id })
    .update({ created_at: new Date(now - 40 * DAY_MS) });
  return { ...made.key, plaintext: made.plaintext };
}
