import { databaseUrl, openPostgresServer } from '../harness/postgres';
import { createDb, migrateLatest } from '../shared/db';
import { TEMPLATE_DATABASE } from './helpers/database';
import { runTap, tapArguments } from './runTap';

// `npm test`: uses DATABASE_URL when set, else starts a throwaway PostgreSQL; migrates a template
// database once; runs tap with the given arguments; stops the server it started.

async function prepareTemplate(adminUrl: string) {
  const admin = createDb(adminUrl, { poolMax: 1 });
  await admin.raw(`drop database if exists ${TEMPLATE_DATABASE} with (force)`);
  await admin.raw(`create database ${TEMPLATE_DATABASE}`);
  await admin.destroy();
  const template = createDb(databaseUrl(adminUrl, TEMPLATE_DATABASE), { poolMax: 1 });
  await migrateLatest(template);
  await template.destroy();
}

async function main() {
  const server = await openPostgresServer('keyusage-test-', (line) => console.log(`# ${line}`));
  let exitCode: number;
  try {
    await prepareTemplate(server.adminUrl);
    exitCode = await runTap(tapArguments(process.argv.slice(2)), { TEST_ADMIN_DATABASE_URL: server.adminUrl });
  } finally {
    server.stop();
  }
  process.exit(exitCode);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
