/**
 * The producer side of ingest's watchdog, against the real broker: `leadersKnown` asks the
 * broker, and `replace` swaps the native producer under load without losing an answer. The old
 * producer's delivery reports are held back (background polling turned off behind the
 * EventProducer's back), so its events wait while a new producer is connected; new events are
 * acknowledged by the new one, the old one's events are answered when its flush hands their
 * reports over, and the topic holds every acknowledged event once. When to replace is
 * `producer-watchdog.test.ts`; the watchdog acting on a real stop is in `make chaos`'s
 * `broker-stall` (docs/RELIABILITY.md).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type kafkaJavascript from '@confluentinc/kafka-javascript';
import { Registry } from 'prom-client';
import type { ActivityEvent } from '../shared/event-schema.js';
import { createKafka } from '../shared/kafka-client.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, stackFromEnv, uniqueName, withAdmin } from '../shared/testing.js';
import { EventProducer } from './event-producer.js';
import { createIngestMetrics } from './metrics.js';

const ACK_TIMEOUT_MS = 5_000;
const PARTITIONS = 3;
const stack = stackFromEnv();
const topic = uniqueName('producer_replace');
const logger = createLogger('test', 'warn');
const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'replace-test', logger });

let producer: EventProducer;

before(async () => {
  producer = new EventProducer(
    kafka,
    {
      brokers: [stack.kafkaBrokers],
      clientId: 'replace-test',
      topic,
      topicPartitions: PARTITIONS,
      ackTimeoutMs: ACK_TIMEOUT_MS,
      maxInFlightEvents: 10_000,
    },
    createIngestMetrics(new Registry(), { maxInFlightEvents: 10_000 }),
    logger,
  );
  await producer.start();
});

after(async () => {
  await withDeadline(producer?.close(5_000) ?? Promise.resolve(), 15_000, 'closing the producer');
  await deleteTopics(stack.kafkaBrokers, [topic], logger);
});

const events = (label: string, n: number): ActivityEvent[] =>
  Array.from({ length: n }, (_, i) => ({
    user_id: `${label}-${i}`,
    activity_type: 'page_view',
    timestamp: Date.now(),
    event_id: `${label}-${i}`,
  }));

/** Records in the topic: the sum of its partitions' end offsets (nothing else writes to it). */
async function recordsInTopic(): Promise<number> {
  const offsets = await withAdmin(stack.kafkaBrokers, logger, (admin) =>
    admin.fetchTopicOffsets(topic),
  );
  return offsets.reduce((sum, o) => sum + Number(o.high), 0);
}

test('the broker names a leader for every partition of a healthy topic', async () => {
  assert.equal(await producer.leadersKnown(), true);
});

test('a replaced producer answers what it held; the new one takes new events', async () => {
  const acknowledgedBefore = await producer.produce(events('before', 50), Date.now());
  assert.deepEqual(acknowledgedBefore, new Array(50).fill(null), 'acknowledged before');

  const native = (
    producer as unknown as { producer: InstanceType<typeof kafkaJavascript.Producer> }
  ).producer;
  native.setPollInBackground(false);
  let heldSettled = false;
  const held = producer.produce(events('held', 50), Date.now()).finally(() => {
    heldSettled = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(heldSettled, false, 'no report of the old producer reaches ingest');
  assert.equal(producer.inFlight, 50);

  await producer.replace();
  const afterReplacement = await producer.produce(events('after', 50), Date.now());
  assert.deepEqual(afterReplacement, new Array(50).fill(null), 'the new producer acknowledges');

  const heldOutcomes = await withDeadline(held, ACK_TIMEOUT_MS + 5_000, 'the held events');
  const heldAcknowledged = heldOutcomes.filter((o) => o === null).length;
  const heldUnknown = heldOutcomes.filter((o) => o?.code === 'broker_timeout').length;
  assert.equal(heldAcknowledged + heldUnknown, 50, 'each held event acknowledged or unknown');
  await withDeadline(
    (async () => {
      while (producer.retiring) await new Promise((resolve) => setTimeout(resolve, 100));
    })(),
    ACK_TIMEOUT_MS + 5_000,
    'the old producer to retire',
  );
  assert.equal(producer.inFlight, 0);

  const acknowledged = 100 + heldAcknowledged;
  const stored = await recordsInTopic();
  assert.ok(
    stored >= acknowledged && stored <= acknowledged + heldUnknown,
    `the topic holds each acknowledged event once (${stored} records, ${acknowledged} acknowledged, ${heldUnknown} unknown)`,
  );
  assert.equal(await producer.leadersKnown(), true, 'the new producer asks the broker too');
});
