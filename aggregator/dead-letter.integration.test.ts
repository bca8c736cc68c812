/**
 * Records the aggregator cannot count — poison produced straight to the topic by a foreign
 * producer, and events later than the allowed lateness — go to `<TOPIC>.dlq` with their reason
 * and source position, are never counted, and never stop the partition: the valid events around
 * them, and after them, are counted exactly.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import {
  ActivityOracle,
  type ClientEvent,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, waitFor } from '../shared/testing.js';
import { MAX_DEAD_LETTER_BYTES } from './dead-letter.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_SEC = 10;
const WINDOW_MS = WINDOW_SEC * 1000;

/** A record as the dead-letter topic holds it. */
interface DeadLetterSeen {
  reason: string;
  sourceTopic: string;
  sourcePartition: number;
  sourceOffset: number;
  /** Set when the record was too large to be dead-lettered whole. */
  valueTruncatedFrom: string;
  value: Buffer | null;
}

/** Reads the dead-letter topic from the beginning into `seen`, until the returned close is called. */
async function readDeadLetters(
  resources: TestResources,
  seen: DeadLetterSeen[],
): Promise<() => Promise<void>> {
  const consumer = resources.kafka.consumer({
    kafkaJS: { groupId: resources.readerGroup, fromBeginning: true },
  });
  await consumer.connect();
  await consumer.subscribe({ topics: [resources.deadLetterTopic] });
  const header = (headers: unknown, name: string): string =>
    String((headers as Record<string, Buffer | string | undefined>)[name] ?? '');
  await consumer.run({
    eachMessage: async ({ message }) => {
      seen.push({
        reason: header(message.headers, 'reason'),
        sourceTopic: header(message.headers, 'source-topic'),
        sourcePartition: Number(header(message.headers, 'source-partition')),
        sourceOffset: Number(header(message.headers, 'source-offset')),
        valueTruncatedFrom: header(message.headers, 'value-truncated-from'),
        value: message.value,
      });
    },
  });
  return () => consumer.disconnect();
}

/**
 * A test's topic with `partitions` partitions, an aggregator counting it on the default lateness
 * settings, a raw producer to it and a reader of its dead-letter topic; all closed at cleanup.
 */
async function deadLetterSetup(
  t: TestContext,
  name: string,
  partitions: number,
): Promise<{ resources: TestResources; produce: ProduceOne; deadLetters: DeadLetterSeen[] }> {
  const resources = await createTestResources(name, stack, logger);
  t.after(() => resources.cleanup());
  await resources.createTopic(partitions);
  const env = {
    ...resources.env,
    AGGREGATOR_PORT: String(await freeTcpPort()),
    WINDOW_SEC: String(WINDOW_SEC),
    FLUSH_INTERVAL_SEC: '0.2',
    WORKERS: '2',
  };
  await resources.startAggregator(env);
  const { produce, close } = await rawProducer(resources);
  resources.defer('closing the producer', close);
  const deadLetters: DeadLetterSeen[] = [];
  resources.defer('closing the dead-letter reader', await readDeadLetters(resources, deadLetters));
  return { resources, produce, deadLetters };
}

/** Produces one record to an explicit partition and returns its offset. */
type ProduceOne = (
  partition: number,
  value: Buffer | string | null,
  key?: string,
) => Promise<number>;

async function rawProducer(
  resources: TestResources,
): Promise<{ produce: ProduceOne; close: () => Promise<void> }> {
  const producer = resources.kafka.producer({
    kafkaJS: { acks: -1 },
    // Room for the 1 MB record; the broker's own limit (1 MiB per batch) still applies.
    'message.max.bytes': 2_000_000,
  });
  await producer.connect();
  const produce: ProduceOne = async (partition, value, key) => {
    const [metadata] = await producer.send({
      topic: resources.topic,
      messages: [{ partition, key: key ?? null, value }],
    });
    return Number(metadata?.baseOffset);
  };
  return { produce, close: () => producer.disconnect() };
}

test('poison records go to the dead-letter topic with their reason and never stop consumption', async (t) => {
  const { resources, produce, deadLetters } = await deadLetterSetup(t, 'dlq_poison', 2);

  const windowStart = windowStartOf(Date.now(), WINDOW_MS) - 3 * WINDOW_MS;
  const at = (ms: number): number => windowStart + ms;
  const oracle = new ActivityOracle(WINDOW_MS);
  const valid = async (partition: number, event: ClientEvent): Promise<void> => {
    await produce(partition, JSON.stringify(event), String(event.user_id));
    oracle.add(event);
  };
  const huge = JSON.stringify({
    user_id: 'huge',
    activity_type: 'page_view',
    timestamp: at(1),
    properties: { blob: 'x'.repeat(1_000_000) },
  });
  const poison: Array<{ name: string; value: Buffer | string | null; reason: string }> = [
    { name: 'invalid JSON', value: '{"user_id":"p1","activity_type":', reason: 'invalid_json' },
    {
      name: 'a JSON array',
      value: JSON.stringify([{ user_id: 'p2', activity_type: 'page_view', timestamp: at(2) }]),
      reason: 'not_an_object',
    },
    {
      name: 'an unknown field',
      value: JSON.stringify({ user_id: 'p3', activity_type: 'click', timestamp: at(3), page: '/' }),
      reason: 'unknown_field',
    },
    {
      name: 'no user_id',
      value: JSON.stringify({ activity_type: 'page_view', timestamp: at(4) }),
      reason: 'missing_field',
    },
    {
      name: 'invalid UTF-8',
      value: Buffer.from([0x7b, 0xff, 0xfe, 0xc3, 0x28, 0x7d]),
      reason: 'invalid_utf8',
    },
    { name: 'a null value', value: null, reason: 'empty_record' },
    // Kafka clients hand a zero-length value over as no value at all.
    { name: 'an empty value', value: Buffer.alloc(0), reason: 'empty_record' },
    { name: 'a 1 MB value', value: huge, reason: 'properties_too_large' },
    {
      name: 'a timestamp without zone',
      value: JSON.stringify({
        user_id: 'p9',
        activity_type: 'page_view',
        timestamp: '2026-11-25T10:00:00',
      }),
      reason: 'invalid_timestamp',
    },
  ];

  // Valid events before, between and after every poison record, in both partitions.
  const produced: Array<{ name: string; reason: string; partition: number; offset: number }> = [];
  for (const [i, record] of poison.entries()) {
    const partition = i % 2;
    await valid(partition, {
      user_id: `before-${i}`,
      activity_type: 'page_view',
      timestamp: at(100 * i),
    });
    const offset = await produce(partition, record.value, `poison-${i}`);
    produced.push({ name: record.name, reason: record.reason, partition, offset });
    // Users repeat within a partition only: the pipeline relies on ingest keying by user.
    await valid(partition, {
      user_id: `p${partition}-user-${i % 3}`,
      activity_type: 'click',
      timestamp: at(WINDOW_MS + 100 * i),
    });
  }
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);

  // Consumption goes on after the poison: later events are counted too.
  for (let i = 0; i < 20; i++) {
    await valid(i % 2, {
      user_id: `p${i % 2}-after-${i % 7}`,
      activity_type: i % 4 === 0 ? 'page_view' : 'scroll',
      timestamp: at(2 * WINDOW_MS + i),
    });
  }
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);

  await waitFor(async () => (deadLetters.length >= poison.length ? true : undefined), {
    timeoutMs: 20_000,
    what: 'every poison record in the dead-letter topic',
    describe: () => JSON.stringify(deadLetters.map(({ value: _, ...letter }) => letter)),
  });
  const byPosition = new Map(
    deadLetters.map((letter) => [`${letter.sourcePartition}:${letter.sourceOffset}`, letter]),
  );
  assert.equal(byPosition.size, deadLetters.length, 'a record was dead-lettered twice');
  for (const [i, record] of produced.entries()) {
    const letter = byPosition.get(`${record.partition}:${record.offset}`);
    assert.ok(letter !== undefined, `${record.name} is not in the dead-letter topic`);
    assert.equal(letter.reason, record.reason, record.name);
    assert.equal(letter.sourceTopic, resources.topic, record.name);
    const sent = poison[i]?.value ?? null;
    const bytes = sent === null ? null : Buffer.from(sent);
    if (bytes !== null && bytes.byteLength > MAX_DEAD_LETTER_BYTES) {
      // Cut to fit the producer's and the broker's limits, and says so.
      assert.equal(letter.valueTruncatedFrom, String(bytes.byteLength), record.name);
      const kept = MAX_DEAD_LETTER_BYTES - `poison-${i}`.length;
      assert.deepEqual(letter.value, bytes.subarray(0, kept), record.name);
    } else if (bytes === null || bytes.byteLength === 0) {
      assert.equal(letter.value?.byteLength ?? 0, 0, record.name);
    } else {
      assert.equal(letter.valueTruncatedFrom, '', record.name);
      assert.deepEqual(letter.value, bytes, `${record.name}: value kept as sent`);
    }
  }
  assert.equal(deadLetters.length, poison.length, 'only the poison records are dead-lettered');
});

test('an event later than the allowed lateness is counted in its closed window, not dead-lettered', async (t) => {
  const { resources, produce, deadLetters } = await deadLetterSetup(t, 'dlq_late', 1);

  const t0 = windowStartOf(Date.now(), WINDOW_MS) - 3 * WINDOW_MS + 1234;
  const oracle = new ActivityOracle(WINDOW_MS);
  const send = async (event: ClientEvent): Promise<number> => {
    const offset = await produce(0, JSON.stringify(event), String(event.user_id));
    oracle.add(event);
    return offset;
  };
  await send({ user_id: 'a', activity_type: 'page_view', timestamp: t0 });
  await send({ user_id: 'b', activity_type: 'page_view', timestamp: t0 + 60_000 });
  await waitForOracle(resources.db, resources.schema, oracle, 20_000);
  // t0's window is final now (the watermark is past its end plus the lateness): these arrive late.
  await send({ user_id: 'c', activity_type: 'page_view', timestamp: t0 });
  await send({ user_id: 'a', activity_type: 'click', timestamp: t0 + 5 });
  await send({ user_id: 'd', activity_type: 'click', timestamp: t0 + 61_000 });
  await waitForOracle(resources.db, resources.schema, oracle, 20_000);
  assert.deepEqual(
    oracle.expected().map((row) => [row.unique_users, row.page_view_count, row.event_count]),
    [
      [2, 2, 3],
      [2, 1, 2],
    ],
  );
  // A last record, then nothing: had anything gone to the dead-letter topic it would be there.
  await send({ user_id: 'e', activity_type: 'click', timestamp: t0 + 62_000 });
  await waitForOracle(resources.db, resources.schema, oracle, 20_000);
  await sleep(1000);
  assert.deepEqual(deadLetters, []);
});
