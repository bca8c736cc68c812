/**
 * The same event twice in the topic is counted once. Two ways get it there for real: a client
 * resends events with the same `event_id` (after an answer it could not trust, or within one
 * batch), and a producer writes a record twice — librdkafka's idempotent producer can, after an
 * epoch bump (librdkafka issue 4953) — which this test reproduces by producing byte-for-byte
 * copies of records read back from the topic, including events whose id ingest assigned.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ActivityOracle,
  type ClientEvent,
  postActivities,
  randomEvent,
  SeededRandom,
  testSeed,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { createTestResources } from '../e2e/test-resources.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, scrapeMetric, stackFromEnv, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 10_000;

type IdentifiedEvent = ClientEvent & { event_id?: string };

test('an event resent by the client or written twice by the producer is counted once', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const resources = await createTestResources('dedup', stack, logger);
  t.after(() => resources.cleanup());
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(await freeTcpPort()),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    WINDOW_SEC: String(WINDOW_MS / 1000),
    FLUSH_INTERVAL_SEC: '0.2',
    WORKERS: '1',
  };
  const ingest = await resources.startIngest(env);
  const aggregator = await resources.startAggregator(env);

  // 600 events over three windows; two in three carry a client event_id, the rest get one from
  // ingest.
  const first = windowStartOf(Date.now(), WINDOW_MS) - 5 * WINDOW_MS;
  const events: IdentifiedEvent[] = Array.from({ length: 600 }, (_, i) => {
    const event = randomEvent(random, 150, first + random.int(3 * WINDOW_MS));
    return i % 3 === 0 ? event : { ...event, event_id: `evt-${seed}-${i}` };
  });
  const oracle = new ActivityOracle(WINDOW_MS);
  const send = async (batch: IdentifiedEvent[]): Promise<IdentifiedEvent[]> => {
    const outcome = await postActivities(ingest.port, batch);
    assert.equal(outcome.status, 200, `batch answered ${outcome.status}`);
    return outcome.accepted;
  };
  for (let i = 0; i < events.length; i += 100) {
    for (const event of await send(events.slice(i, i + 100))) oracle.add(event);
  }

  // The client resends 150 identified events, and a batch holds one event twice: none counts.
  const identified = events.filter((event) => event.event_id !== undefined);
  const resent = random.shuffle([...identified]).slice(0, 150);
  for (let i = 0; i < resent.length; i += 50) await send(resent.slice(i, i + 50));
  const twice = identified[0] as IdentifiedEvent;
  await send([twice, twice]);

  // The producer's duplicates: 120 records read back and written again, byte for byte.
  const copied: Array<{ key: Buffer | null; value: Buffer | null; timestamp: string }> = [];
  const reader = resources.kafka.consumer({
    kafkaJS: { groupId: resources.readerGroup, fromBeginning: true },
  });
  await reader.connect();
  try {
    await reader.subscribe({ topics: [resources.topic] });
    await reader.run({
      eachMessage: async ({ message }) => {
        if (copied.length < 120) {
          copied.push({ key: message.key, value: message.value, timestamp: message.timestamp });
        }
      },
    });
    await waitFor(async () => (copied.length >= 120 ? true : undefined), {
      timeoutMs: 30_000,
      what: '120 records to copy',
      describe: () => `${copied.length} records`,
    });
  } finally {
    await withDeadline(reader.disconnect(), 10_000, 'disconnecting the reader');
  }
  const fromIngest = copied.filter(({ value }) => {
    const id = (JSON.parse(String(value)) as { event_id?: string }).event_id;
    return id !== undefined && !id.startsWith(`evt-${seed}-`);
  }).length;
  assert.ok(fromIngest > 0, 'some copied records carry an id that ingest assigned');
  const producer = resources.kafka.producer({ kafkaJS: { acks: -1 } });
  await producer.connect();
  try {
    await producer.send({ topic: resources.topic, messages: copied });
  } finally {
    await withDeadline(producer.disconnect(), 10_000, 'disconnecting the producer');
  }

  // Every copy consumed and recognised first; then the view must be exact.
  const expectedDuplicates = resent.length + 2 + copied.length;
  let duplicates = 0;
  await waitFor(
    async () => {
      duplicates =
        (await scrapeMetric(aggregator.port, 'aggregator_records_duplicate_total')) ?? Number.NaN;
      return duplicates >= expectedDuplicates ? true : undefined;
    },
    {
      timeoutMs: 30_000,
      what: `${expectedDuplicates} duplicates recognised`,
      describe: () => `${duplicates}`,
    },
  );
  assert.equal(duplicates, expectedDuplicates);
  const tookMs = await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  t.diagnostic(
    `${resent.length + 2} resent, ${copied.length} copied (${fromIngest} with ingest's ids); view exact ${tookMs} ms after they were all recognised`,
  );
});
