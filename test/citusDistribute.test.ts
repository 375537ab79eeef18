import t from 'tap';
import { referencedFirst } from '../scripts/citus/distribute';

// Citus refuses a foreign key to a distributed table that is not yet distributed, so the order of
// create_distributed_table calls must follow the foreign keys (the alphabetical order did not).
t.test('a table is laid out after every table it references, otherwise in the given order', async (t) => {
  const tables = ['api_key_usage', 'key_events', 'webhook_deliveries', 'webhook_delivery_attempts', 'webhooks'];
  const references = [
    { from: 'webhook_deliveries', to: 'webhooks' },
    { from: 'webhook_delivery_attempts', to: 'webhook_deliveries' },
    { from: 'api_key_usage', to: 'api_keys' },
    { from: 'webhooks', to: 'webhooks' },
  ];
  t.same(referencedFirst(tables, references), ['api_key_usage', 'key_events', 'webhooks', 'webhook_deliveries', 'webhook_delivery_attempts']);
  t.same(
    referencedFirst(
      ['a', 'b'],
      [
        { from: 'a', to: 'b' },
        { from: 'b', to: 'a' },
      ],
    ),
    ['b', 'a'],
    'a cycle still lists each table once',
  );
});
