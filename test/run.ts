import { freeTcpPort } from '../scripts/lib/freePort';
import { createDb, migrateLatest } from '../shared/db';
import { startThrowawayPostgres } from '../scripts/lib/localPostgres';
import { TEMPLATE_DATABASE } from './helpers/database';
import { runTap, tapArguments } from './runTap';

// `npm test`: uses DATABASE_URL when set, else starts a throwaway PostgreSQL; migrates a template
// database once; runs tap with the given arguments; stops the server it started.

async function prepareTemplate(adminUrl: string) {
  const admin = createDb(adminUrl, { poolMax: 1 });
  await admin.raw(`drop database if exists ${TEMPLATE_DATABASE} with (force)`);
  await admin.raw(`create database ${TEMPLATE_DATABASE}`);
  await admin.destroy();
  const templateUrl = new URL(adminUrl);
  templateUrl.pathname = `/${TEMPLATE_DATABASE}`;
  const template = createDb(templateUrl.toString(), { poolMax: 1 });
  await migrateLatest(template);
  await template.destroy();
}

async function main() {
  let local: ReturnType<typeof startThrowawayPostgres> | undefined;
  let adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    local = startThrowawayPostgres('keyusage-test-', await freeTcpPort());
    adminUrl = local.url;
    console.log(`# throwaway PostgreSQL at 127.0.0.1:${new URL(adminUrl).port} (${local.scratch})`);
  }
  let exitCode: number;
  try {
    await prepareTemplate(adminUrl);
    exitCode = await runTap(tapArguments(process.argv.slice(2)), { TEST_ADMIN_DATABASE_URL: adminUrl });
  } finally {
    local?.stop();
  }
  process.exit(exitCode);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
