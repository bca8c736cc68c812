/**
 * Sites against the real broker: an ingest whose API_KEYS name two sites (one with two keys)
 * and hold a key of the form before sites, and an ingest without keys. Events sent with each key
 * are read back from the topic: each record carries its key's site and that site's time zone,
 * and is keyed by `site/user_id` (`user_id` alone for the default site). A client cannot choose
 * its site: a body field `site` or `time_zone` is refused as `unknown_field` and never produced.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { createKafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import {
  deleteTopics,
  freeTcpPort,
  scrapeMetrics,
  stackFromEnv,
  sumSamples,
  uniqueName,
  waitFor,
} from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

const stack = stackFromEnv();
const topic = uniqueName('sites_it');
const groupId = `${topic}-reader`;
const logger = createLogger('test', 'warn');

const KEYS = {
  shop: 'key-shop-7d41',
  shopRotated: 'key-shop-new-0a9e',
  blog: 'key-blog-52c8',
  old: 'key-old-form-3b6f',
} as const;
const API_KEYS = [
  `${KEYS.shop}=shop@Europe/Berlin`,
  `${KEYS.shopRotated}=shop@Europe/Berlin`,
  `${KEYS.blog}=blog@Asia/Kathmandu`,
  KEYS.old,
].join(',');

const instances: IngestService[] = [];
/** API_KEYS as above, DEFAULT_SITE_TIME_ZONE=America/New_York. */
let withKeys: IngestService;
/** No keys, DEFAULT_SITE_TIME_ZONE=Asia/Tokyo. */
let keyless: IngestService;

/** One user id for every site: the sites must keep its events apart all the same. */
const user = `sites-${randomBytes(3).toString('hex')}`;

/** What the topic must hold: per `event_id`, the record's site, zone, key and user. */
const expected = new Map<string, { site: string; zone: string; key: string; user: string }>();
/** `user_id`s of events that were refused: none may be in the topic. */
const refusedUsers = new Set<string>();

async function startInstance(env: Record<string, string>): Promise<IngestService> {
  const service = await startIngest(
    readIngestConfig({
      KAFKA_BROKERS: stack.kafkaBrokers,
      TOPIC: topic,
      TOPIC_PARTITIONS: '3',
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: String(await freeTcpPort()),
      SHUTDOWN_GRACE_SEC: '5',
      ...env,
    }),
    logger.child({ service: 'ingest' }),
  );
  instances.push(service);
  return service;
}

before(async () => {
  withKeys = await startInstance({ API_KEYS, DEFAULT_SITE_TIME_ZONE: 'America/New_York' });
  keyless = await startInstance({ DEFAULT_SITE_TIME_ZONE: 'Asia/Tokyo' });
});

after(async () => {
  const results = await Promise.allSettled(
    instances.map((service, i) => withDeadline(service.close(), 15_000, `closing ingest #${i}`)),
  );
  await withDeadline(
    (async () => {
      const admin = createKafka({
        brokers: [stack.kafkaBrokers],
        clientId: 'test-cleanup',
        logger,
      }).admin();
      await admin.connect();
      try {
        await admin.deleteGroups([groupId]).catch(() => {});
      } finally {
        await admin.disconnect();
      }
    })(),
    20_000,
    'deleting the test consumer group',
  );
  await deleteTopics(stack.kafkaBrokers, [topic], logger);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

async function post(
  service: IngestService,
  path: '/activity' | '/activities',
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${service.port}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(20_000),
  });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

let sequence = 0;
const eventId = (label: string): string => `${label}-${user}-${++sequence}`;

/** Sends one event with `headers` to `service`, expecting 200, and records what must be stored. */
async function sendAccepted(
  service: IngestService,
  headers: Record<string, string>,
  stored: { site: string; zone: string; key: string },
): Promise<void> {
  const id = eventId(stored.site);
  const reply = await post(
    service,
    '/activity',
    { user_id: user, activity_type: 'page_view', event_id: id },
    headers,
  );
  assert.equal(reply.status, 200, JSON.stringify(reply.json));
  expected.set(id, { ...stored, user });
}

test('each key writes to its site: the record carries the site and zone, keyed by site', async () => {
  const shop = { site: 'shop', zone: 'Europe/Berlin', key: `shop/${user}` };
  await sendAccepted(withKeys, { authorization: `Bearer ${KEYS.shop}` }, shop);
  // The rotated key of the same site: the same site, so the same key and partition.
  await sendAccepted(withKeys, { 'x-api-key': KEYS.shopRotated }, shop);
  await sendAccepted(
    withKeys,
    { authorization: `Bearer ${KEYS.blog}` },
    { site: 'blog', zone: 'Asia/Kathmandu', key: `blog/${user}` },
  );
  // A key of the form before sites: the default site, keyed by user_id alone as before.
  await sendAccepted(
    withKeys,
    { 'x-api-key': KEYS.old },
    { site: 'default', zone: 'America/New_York', key: user },
  );
  // Without keys every event belongs to the default site, in DEFAULT_SITE_TIME_ZONE.
  await sendAccepted(keyless, {}, { site: 'default', zone: 'Asia/Tokyo', key: user });

  // A batch takes its key's site too, for every event in it.
  const batch = [eventId('blog'), eventId('blog')];
  const reply = await post(
    withKeys,
    '/activities',
    batch.map((id) => ({ user_id: user, activity_type: 'click', event_id: id })),
    { 'x-api-key': KEYS.blog },
  );
  assert.equal(reply.status, 200, JSON.stringify(reply.json));
  assert.equal(reply.json.accepted, 2);
  for (const id of batch) {
    expected.set(id, { site: 'blog', zone: 'Asia/Kathmandu', key: `blog/${user}`, user });
  }
});

test('a client cannot choose its site or zone: 400 unknown_field, nothing produced', async () => {
  for (const [field, value] of [
    ['site', 'blog'],
    ['time_zone', 'UTC'],
  ] as const) {
    for (const [service, headers] of [
      [withKeys, { 'x-api-key': KEYS.shop }],
      [keyless, {}],
    ] as const) {
      const refused = `refused-${field}-${user}-${++sequence}`;
      refusedUsers.add(refused);
      const single = await post(
        service,
        '/activity',
        { user_id: refused, activity_type: 'page_view', [field]: value },
        headers,
      );
      assert.equal(single.status, 400, JSON.stringify(single.json));
      assert.equal(single.json.code, 'unknown_field');
      assert.equal(single.json.field, field);
    }
  }

  // In a batch the event is rejected by itself; the valid one is stored, in the key's site.
  const refused = `refused-batch-${user}`;
  refusedUsers.add(refused);
  const kept = eventId('shop');
  const batch = await post(
    withKeys,
    '/activities',
    [
      { user_id: refused, activity_type: 'page_view', site: 'blog' },
      { user_id: user, activity_type: 'page_view', event_id: kept },
    ],
    { authorization: `Bearer ${KEYS.shop}` },
  );
  assert.equal(batch.status, 207, JSON.stringify(batch.json));
  assert.deepEqual(
    (batch.json.rejected as Array<Record<string, unknown>>).map((r) => [r.index, r.code, r.field]),
    [[0, 'unknown_field', 'site']],
  );
  expected.set(kept, { site: 'shop', zone: 'Europe/Berlin', key: `shop/${user}`, user });

  const unknownKey = await post(
    withKeys,
    '/activity',
    { user_id: `refused-key-${user}`, activity_type: 'page_view' },
    { 'x-api-key': 'shop' },
  );
  refusedUsers.add(`refused-key-${user}`);
  assert.equal(unknownKey.status, 401);
  assert.equal(unknownKey.json.code, 'invalid_api_key');
});

test('accepted events are counted per site; every configured site starts at 0', async () => {
  const text = await scrapeMetrics(withKeys.port);
  assert.ok(text !== undefined, 'no /metrics');
  const accepted = (site: string) => sumSamples(text, 'ingest_events_accepted_total', { site });
  assert.deepEqual(
    { shop: accepted('shop'), blog: accepted('blog'), default: accepted('default') },
    { shop: 3, blog: 3, default: 1 },
  );
  const series = [...text.matchAll(/^ingest_events_accepted_total\{site="([^"]+)"\}/gm)].map(
    (match) => match[1],
  );
  assert.deepEqual(series.sort(), ['blog', 'default', 'shop']);

  const keylessText = await scrapeMetrics(keyless.port);
  assert.ok(keylessText !== undefined, 'no /metrics');
  assert.equal(sumSamples(keylessText, 'ingest_events_accepted_total', { site: 'default' }), 1);
});

test('the topic holds each accepted event with its site, zone and key', async () => {
  const records: Array<{ key: string | undefined; value: string; partition: number }> = [];
  const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'test-reader', logger });
  const consumer = kafka.consumer({ kafkaJS: { groupId, fromBeginning: true } });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic] });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        records.push({
          key: message.key?.toString(),
          value: message.value?.toString() ?? '',
          partition,
        });
      },
    });
    await waitFor(async () => (records.length >= expected.size ? true : undefined), {
      timeoutMs: 30_000,
      what: `${expected.size} records`,
      describe: () => `${records.length} records`,
    });
    // A refused event, had it been produced, would have arrived with the rest.
    await sleep(1_500);
  } finally {
    await withDeadline(consumer.disconnect(), 10_000, 'disconnecting the consumer');
  }

  assert.equal(records.length, expected.size, 'records in the topic vs events accepted');
  const partitionOfKey = new Map<string, number>();
  const seen = new Set<string>();
  for (const record of records) {
    const value = JSON.parse(record.value) as Record<string, unknown>;
    assert.ok(
      !refusedUsers.has(String(value.user_id)),
      `a refused event is stored: ${record.value}`,
    );
    const id = String(value.event_id);
    const want = expected.get(id);
    assert.ok(want !== undefined, `unexpected record ${record.value}`);
    seen.add(id);
    assert.deepEqual(
      { site: value.site, time_zone: value.time_zone, key: record.key, user_id: value.user_id },
      { site: want.site, time_zone: want.zone, key: want.key, user_id: want.user },
      record.value,
    );
    // One (site, user): one key, so one partition, whichever of the site's keys sent it.
    const partition = partitionOfKey.get(want.key);
    if (partition === undefined) partitionOfKey.set(want.key, record.partition);
    else assert.equal(record.partition, partition, `partition of ${want.key}`);
  }
  assert.equal(seen.size, expected.size, 'each accepted event exactly once');
  assert.deepEqual([...partitionOfKey.keys()].sort(), [`blog/${user}`, `shop/${user}`, user]);
});
