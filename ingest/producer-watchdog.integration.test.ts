/**
 * Ingest's producer replaced while the real broker is well: its native client stops handing
 * delivery reports over (background polling turned off behind the EventProducer's back), so
 * nothing is acknowledged although the broker leads every partition, as after librdkafka #5430.
 * The watchdog replaces it within its timeout; new events are acknowledged by the new producer;
 * the events the old one held are still answered (acknowledged when its flush hands their
 * reports over, or given up as unknown); and the topic holds every acknowledged event, once.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type kafkaJavascript from '@confluentinc/kafka-javascript';
import { Registry } from 'prom-client';
import type { PipelineError } from '../shared/errors.js';
import type { ActivityEvent } from '../shared/event-schema.js';
import { createKafka } from '../shared/kafka-client.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, stackFromEnv, uniqueName, waitFor, withAdmin } from '../shared/testing.js';
import { EventProducer } from './event-producer.js';
import { createIngestMetrics } from './metrics.js';
import { ProducerWatchdog } from './producer-watchdog.js';

const STALL_MS = 2_000;
const ACK_TIMEOUT_MS = 5_000;
const stack = stackFromEnv();
const topic = uniqueName('producer_watchdog');
const logger = createLogger('test', 'warn');
const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'watchdog-test', logger });
const metrics = createIngestMetrics(new Registry(), { maxInFlightEvents: 10_000 });

let producer: EventProducer;
let watchdog: ProducerWatchdog;

before(async () => {
  producer = new EventProducer(
    kafka,
    {
      brokers: [stack.kafkaBrokers],
      clientId: 'watchdog-test',
      topic,
      topicPartitions: 3,
      ackTimeoutMs: ACK_TIMEOUT_MS,
      maxInFlightEvents: 10_000,
    },
    metrics,
    logger,
  );
  await producer.start();
  watchdog = new ProducerWatchdog(producer, STALL_MS, metrics, logger);
  watchdog.start();
});

after(async () => {
  watchdog?.close();
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

async function replacements(): Promise<number> {
  const [counter] = (await metrics.producerReplacements.get()).values;
  return counter?.value ?? 0;
}

/** Records in the topic: the sum of its partitions' end offsets (nothing else writes to it). */
async function recordsInTopic(): Promise<number> {
  const offsets = await withAdmin(stack.kafkaBrokers, logger, (admin) =>
    admin.fetchTopicOffsets(topic),
  );
  return offsets.reduce((sum, o) => sum + Number(o.high), 0);
}

test('a producer that acknowledges nothing while the broker is well is replaced; nothing is lost', async () => {
  const before = await producer.produce(events('before', 50), Date.now());
  assert.deepEqual(before, new Array(50).fill(null), 'acknowledged before the stop');

  const native = (
    producer as unknown as { producer: InstanceType<typeof kafkaJavascript.Producer> }
  ).producer;
  native.setPollInBackground(false);
  const stoppedAt = Date.now();
  const held = producer.produce(events('held', 50), Date.now());

  await waitFor(async () => ((await replacements()) >= 1 ? true : undefined), {
    timeoutMs: STALL_MS + 10_000,
    what: 'the watchdog to replace the producer',
  });
  const replacedAfterMs = Date.now() - stoppedAt;
  logger.warn({ replacedAfterMs }, 'producer replaced');
  assert.ok(replacedAfterMs >= STALL_MS, `not before the stall timeout (${replacedAfterMs} ms)`);

  const afterReplacement = await producer.produce(events('after', 50), Date.now());
  assert.deepEqual(afterReplacement, new Array(50).fill(null), 'the new producer acknowledges');

  const heldOutcomes = await withDeadline(held, ACK_TIMEOUT_MS + 5_000, 'the held events');
  const heldAcknowledged = heldOutcomes.filter((o) => o === null).length;
  const heldUnknown = heldOutcomes.filter(
    (o) => (o as PipelineError | null)?.code === 'broker_timeout',
  ).length;
  assert.equal(heldAcknowledged + heldUnknown, 50, 'each held event acknowledged or unknown');

  const acknowledged = 100 + heldAcknowledged;
  const stored = await recordsInTopic();
  assert.ok(
    stored >= acknowledged && stored <= acknowledged + heldUnknown,
    `the topic holds every acknowledged event once (${stored} records, ${acknowledged} acknowledged, ${heldUnknown} unknown)`,
  );
  assert.equal(await replacements(), 1, 'one replacement');
});
