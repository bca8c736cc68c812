/**
 * What the consumer's seeks rely on (`ActivityConsumer.seek`, `PartitionFeeds`), on the real
 * client and broker: once a seek has completed, a `consume` call hands out records from the
 * sought offset on, and none of those librdkafka had already prefetched past it. A seek that was
 * not awaited gives no such promise: a call running meanwhile can hand out the prefetched
 * records, and taking them skipped a window's events in the chaos suite (CHANGELOG, "Fixed").
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Assignment } from '@confluentinc/kafka-javascript';
import { createTestResources } from '../e2e/test-resources.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { stackFromEnv, waitFor } from '../shared/testing.js';
import {
  ASSIGN_PARTITIONS,
  connectAndSubscribe,
  consumeBatch,
  createNativeConsumer,
  leave,
  type RdConsumer,
  seekPartition,
} from './native-consumer.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const RECORDS = 3_000;
/** Records taken per call: far fewer than librdkafka prefetches from one fetch. */
const TAKE = 100;

test('after a completed seek, consume starts at the sought offset, not at what was prefetched', async (t) => {
  const resources = await createTestResources('seek', stack, logger);
  t.after(() => resources.cleanup());
  await resources.createTopic(1);
  const producer = resources.kafka.producer();
  await producer.connect();
  await producer.send({
    topic: resources.topic,
    messages: Array.from({ length: RECORDS }, (_, i) => ({ partition: 0, value: `r${i}` })),
  });
  await producer.disconnect();

  const consumer: RdConsumer = createNativeConsumer(
    {
      brokers: stack.kafkaBrokers.split(','),
      clientId: 'seek-test',
      groupId: resources.readerGroup,
      sessionTimeoutMs: 10_000,
      offsetReset: 'earliest',
      onRebalance: (code: number, assignment: Assignment[]) => {
        if (code === ASSIGN_PARTITIONS) {
          consumer.incrementalAssign(assignment.map((tp) => ({ ...tp, offset: 0 })));
        } else {
          consumer.incrementalUnassign(assignment);
        }
      },
    },
    logger,
  );
  await connectAndSubscribe(consumer, resources.topic);
  t.after(() => leave(consumer));

  const first = await waitFor(
    async () => {
      const messages = await consumeBatch(consumer, TAKE);
      return messages.length > 0 ? messages : undefined;
    },
    { timeoutMs: 30_000, what: 'the first records' },
  );
  assert.equal(first[0]?.offset, 0);
  // Let librdkafka prefetch the rest of the partition (one fetch brings it all).
  await sleep(500);

  for (const offset of [10, 2_500, 1_000, 0]) {
    await seekPartition(consumer, resources.topic, 0, offset, 2_000);
    const messages = await waitFor(
      async () => {
        const batch = await consumeBatch(consumer, TAKE);
        return batch.length > 0 ? batch : undefined;
      },
      { timeoutMs: 10_000, what: `records after the seek to ${offset}` },
    );
    const offsets = messages.map((message) => message.offset);
    assert.equal(offsets[0], offset, `the first record after the seek to ${offset}`);
    assert.deepEqual(
      offsets,
      offsets.map((_, i) => offset + i),
      'contiguous from the sought offset',
    );
  }
});
