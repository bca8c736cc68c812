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
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import type kafkaJavascript from '@confluentinc/kafka-javascript';
import type { LibrdKafkaError } from '@confluentinc/kafka-javascript';
import { Registry } from 'prom-client';
import { hasCode } from '../shared/errors.js';
import { type ActivityEvent, DEFAULT_SITE } from '../shared/event-schema.js';
import { createKafka } from '../shared/kafka-client.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, stackFromEnv, uniqueName, waitFor, withAdmin } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { EventProducer } from './event-producer.js';
import { createIngestMetrics } from './metrics.js';
import type { Site } from './sites.js';

const ACK_TIMEOUT_MS = 5_000;
const PARTITIONS = 3;
const stack = stackFromEnv();
const topic = uniqueName('producer_replace');
const logger = createLogger('test', 'warn');
const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'replace-test', logger });
const SITE: Site = { name: DEFAULT_SITE, timeZone: 'UTC' };

let producer: EventProducer;
const registry = new Registry();
type NativeProducer = InstanceType<typeof kafkaJavascript.Producer>;
const nativeOf = (p: EventProducer): NativeProducer =>
  (p as unknown as { producer: NativeProducer }).producer;
/** The binding's own conversion of a client error event (its text) into the error it emits. */
const { create: librdkafkaError } = createRequire(import.meta.url)(
  '@confluentinc/kafka-javascript/lib/error.js',
) as { create: (e: Error) => LibrdKafkaError };

const DEFAULTS = readIngestConfig({});

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
      // The service's defaults: what this test shows holds for the batching ingest ships with.
      lingerMs: DEFAULTS.producerLingerMs,
      batchBytes: DEFAULTS.producerBatchBytes,
    },
    createIngestMetrics(registry, { maxInFlightEvents: 10_000, sites: [SITE.name] }),
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
  const acknowledgedBefore = await producer.produce(events('before', 50), SITE, Date.now());
  assert.deepEqual(acknowledgedBefore, new Array(50).fill(null), 'acknowledged before');

  const native = (
    producer as unknown as { producer: InstanceType<typeof kafkaJavascript.Producer> }
  ).producer;
  native.setPollInBackground(false);
  let heldSettled = false;
  const held = producer.produce(events('held', 50), SITE, Date.now()).finally(() => {
    heldSettled = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(heldSettled, false, 'no report of the old producer reaches ingest');
  assert.equal(producer.inFlight, 50);

  await producer.replace();
  const afterReplacement = await producer.produce(events('after', 50), SITE, Date.now());
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

test('a fatal producer error: not ready, refused as not stored, replaced, then acknowledged', async () => {
  const storedBefore = await recordsInTopic();
  const failed = nativeOf(producer);
  // librdkafka raises a fatal error only from broker answers a test broker cannot be made to give
  // (an idempotent producer's sequence broken, its id fenced), so the event is emitted as the
  // binding emits librdkafka's: its text turned into a LibrdKafkaError, code lost.
  failed.emit('event.error', librdkafkaError(new Error('Local: Fatal error')));
  assert.equal(producer.isReady, false, 'not ready once the producer failed');
  await assert.rejects(
    producer.produce(events('during', 3), SITE, Date.now()),
    (err: unknown) => hasCode(err, 'broker_unavailable'),
    'events are refused (not stored) while it is replaced',
  );
  await waitFor(async () => (producer.isReady ? true : undefined), {
    timeoutMs: 20_000,
    what: 'a new producer after the fatal error',
  });
  assert.notEqual(nativeOf(producer), failed, 'the failed producer was replaced');
  const afterFatal = await producer.produce(events('after-fatal', 50), SITE, Date.now());
  assert.deepEqual(afterFatal, new Array(50).fill(null), 'the new producer acknowledges');
  const fatal = (await registry.getSingleMetric('ingest_producer_fatal_errors_total')?.get())
    ?.values[0]?.value;
  assert.equal(fatal, 1);
  await waitFor(async () => (producer.retiring ? undefined : true), {
    timeoutMs: ACK_TIMEOUT_MS + 5_000,
    what: 'the failed producer to retire',
  });
  // Exactly the acknowledged events were written: none of those refused.
  assert.equal((await recordsInTopic()) - storedBefore, 50);
});
