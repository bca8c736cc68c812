/**
 * A partition's stored position that is no longer in the topic — retention removed records that
 * were never counted, or the topic was deleted and created again — must stop that partition
 * loudly (a log line, `aggregator_partition_offsets_missing`), never be skipped silently, and the
 * documented resume (OPERATIONS.md, "AggregatorOffsetsMissing") must work.
 *
 * Records are removed with the admin client's deleteTopicRecords (DeleteRecords): it moves the
 * partition's log start offset exactly as retention does when it deletes old segments, but at
 * once and to an offset the test chooses, instead of waiting for a short `retention.ms` and the
 * broker's retention checker.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { ActivityOracle, type ClientEvent, waitForOracle } from '../e2e/activity-oracle.js';
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { ensureTopic } from '../shared/kafka-client.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, freeTcpPort, stackFromEnv, waitFor, withAdmin } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 60_000;
const PARTITIONS = 3;
/** The partition whose records are deleted past its stored position. */
const GONE = 1;
/** Offsets of GONE deleted past its stored position: never counted, lost. */
const LOST = 5;
/**
 * The watchdog's stall timeout, at the configuration's minimum: the watchdog looks every
 * third of it, so the run is shorter. The assertion that the stopped partition does not make it
 * replace the consumer watches for three timeouts, whatever their length.
 */
const STALL_TIMEOUT_SEC = 3;
const CLOSE_MS = 15_000;
const MISSING_LOG = 'stored position is no longer in the topic';

type Producer = ReturnType<TestResources['kafka']['producer']>;

/** `count` events of partition `partition`'s own users, stamped in the window starting at `windowStart`. */
function eventsFor(partition: number, phase: string, count: number, windowStart: number) {
  return Array.from(
    { length: count },
    (_, i): ClientEvent => ({
      // A few users repeat within the phase, and across phases.
      user_id: `om-p${partition}-u${i % 25}`,
      activity_type: i % 3 === 0 ? 'page_view' : 'click',
      timestamp: windowStart + ((i * 997) % WINDOW_MS),
      event_id: `${phase}-p${partition}-${i}`,
    }),
  );
}

/** Produces `events` to `partition`, in order, as ingest would (JSON, keyed by user). */
async function produce(
  producer: Producer,
  topic: string,
  partition: number,
  events: readonly ClientEvent[],
): Promise<void> {
  await producer.send({
    topic,
    messages: events.map((event) => ({
      partition,
      key: String(event.user_id),
      value: JSON.stringify(event),
    })),
  });
}

/** Each partition's first offset not reflected in PostgreSQL: its stored position. */
async function storedPositions(resources: TestResources): Promise<Map<number, number>> {
  const result = await resources.db.query<{ partition: number; through: string }>(
    `SELECT source_partition AS partition, max(through_offset) AS through
       FROM ${resources.schema}.user_activity_metrics GROUP BY 1`,
  );
  return new Map(result.rows.map((row) => [row.partition, Number(row.through) + 1]));
}

async function partitionEnds(resources: TestResources) {
  return withAdmin(stack.kafkaBrokers, logger, async (admin) => {
    const offsets = await admin.fetchTopicOffsets(resources.topic);
    return new Map(offsets.map((o) => [o.partition, { low: Number(o.low), high: Number(o.high) }]));
  });
}

/** A producer with every acknowledgement awaited; disconnected at cleanup if still connected. */
async function connectedProducer(resources: TestResources): Promise<Producer> {
  const producer = resources.kafka.producer({ kafkaJS: { acks: -1 } });
  await producer.connect();
  resources.defer('closing a producer', () => producer.disconnect());
  return producer;
}

async function setUp(t: TestContext, prefix: string) {
  const resources = await createTestResources(prefix, stack, logger);
  t.after(() => resources.cleanup());
  await resources.createTopic(PARTITIONS);
  const producer = await connectedProducer(resources);
  const port = String(await freeTcpPort());
  /** A new aggregator process on the same port, group and schema; killed at cleanup. */
  const aggregator = (env: Record<string, string> = {}): AggregatorProcess => {
    const process = new AggregatorProcess({
      ...resources.env,
      AGGREGATOR_PORT: port,
      AGGREGATOR_HOST: '127.0.0.1',
      CONSUMER_STALL_TIMEOUT_SEC: String(STALL_TIMEOUT_SEC),
      FLUSH_INTERVAL_SEC: '0.5',
      WORKERS: '2',
      SESSION_TIMEOUT_SEC: '6',
      LOG_LEVEL: 'warn',
      ...env,
    });
    resources.defer('killing an aggregator', () => process.signal('SIGKILL'));
    return process;
  };
  return { resources, producer, aggregator };
}

/** Lines of `process`'s output that contain `text`, from now on. */
function linesWith(process: AggregatorProcess, text: string): string[] {
  const lines: string[] = [];
  process.onOutput((line) => {
    if (line.includes(text)) lines.push(line);
  });
  return lines;
}

async function waitStopped(process: AggregatorProcess, partition: number): Promise<void> {
  await waitFor(
    async () =>
      (await process.metric('aggregator_partition_offsets_missing', {
        partition: String(partition),
      })) === 1
        ? true
        : undefined,
    {
      timeoutMs: 30_000,
      what: `partition ${partition} reported stopped`,
      describe: () => process.tail(),
    },
  );
}

async function stopCleanly(process: AggregatorProcess): Promise<void> {
  await process.signal('SIGTERM', CLOSE_MS);
  assert.equal(process.exitCode, 0, process.tail());
}

test('retention past the stored position stops the partition loudly; OFFSET_RESET=earliest resumes', async (t) => {
  const { resources, producer, aggregator } = await setUp(t, 'offsets_gone');
  const w1 = Date.now() - (Date.now() % WINDOW_MS);
  // Each phase in a window of its own, all at or before now: the figures of each phase are
  // told apart in the view.
  const [w2, w3] = [w1 - WINDOW_MS, w1 - 2 * WINDOW_MS];
  const partitions = [...Array(PARTITIONS).keys()];

  // 1. Counted, then a clean stop: the stored positions are the partitions' ends.
  const counted = new ActivityOracle(WINDOW_MS);
  for (const p of partitions) {
    const events = eventsFor(p, 'one', 30, w1);
    await produce(producer, resources.topic, p, events);
    for (const event of events) counted.add(event);
  }
  const first = aggregator();
  first.start();
  await first.waitReady();
  await waitForOracle(resources.db, resources.schema, counted, 30_000, () => first.tail());
  await stopCleanly(first);
  const stored = await storedPositions(resources);
  const storedGone = stored.get(GONE) as number;
  t.diagnostic(`stored positions ${JSON.stringify([...stored])}`);

  // 2. More events while no aggregator runs; then retention passes GONE's stored position.
  const second = new Map<number, ClientEvent[]>();
  for (const p of partitions) {
    second.set(p, eventsFor(p, 'two', 40, w2));
    await produce(producer, resources.topic, p, second.get(p) as ClientEvent[]);
  }
  await withAdmin(stack.kafkaBrokers, logger, (admin) =>
    admin.deleteTopicRecords({
      topic: resources.topic,
      partitions: [{ partition: GONE, offset: String(storedGone + LOST) }],
    }),
  );
  const ends = await partitionEnds(resources);
  t.diagnostic(`ends after the deletion ${JSON.stringify([...ends])}`);
  assert.equal(ends.get(GONE)?.low, storedGone + LOST);

  // 3. Defaults (OFFSET_RESET=stop): GONE stops loudly, the others go on.
  const stopped = aggregator();
  const said = linesWith(stopped, MISSING_LOG);
  stopped.start();
  await stopped.waitReady();
  await waitStopped(stopped, GONE);
  const othersCounted = new ActivityOracle(WINDOW_MS);
  for (const p of partitions) {
    for (const event of eventsFor(p, 'one', 30, w1)) othersCounted.add(event);
    if (p !== GONE) for (const event of second.get(p) as ClientEvent[]) othersCounted.add(event);
  }
  await waitForOracle(resources.db, resources.schema, othersCounted, 30_000, () => stopped.tail());
  assert.ok(
    said.some((line) => line.includes(`"partition":${GONE}`)),
    `no '${MISSING_LOG}' line for partition ${GONE}${stopped.tail()}`,
  );
  // Three stall timeouts: the stopped partition neither gets counted nor makes the watchdog
  // replace the consumer (the partition waits for an operator, not for a new consumer).
  await sleep(3 * STALL_TIMEOUT_SEC * 1000 + 1000);
  assert.equal(await stopped.metric('aggregator_consumer_replacements_total'), 0, stopped.tail());
  assert.equal(
    await stopped.metric('aggregator_partition_offsets_missing', { partition: String(GONE) }),
    1,
  );
  for (const p of partitions.filter((p) => p !== GONE)) {
    assert.equal(
      await stopped.metric('aggregator_partition_offsets_missing', { partition: String(p) }),
      0,
      `partition ${p} reported stopped`,
    );
  }
  assert.equal((await storedPositions(resources)).get(GONE), storedGone, 'GONE moved');
  await waitForOracle(resources.db, resources.schema, othersCounted, 1000);
  await stopCleanly(stopped);

  // 4. The documented resume: OFFSET_RESET=earliest once. GONE resumes at its earliest offset,
  // says how many offsets it skipped, and counts what is still there.
  const resumed = aggregator({ OFFSET_RESET: 'earliest' });
  const skippedSaid = linesWith(resumed, 'records were skipped');
  resumed.start();
  await resumed.waitReady();
  const all = new ActivityOracle(WINDOW_MS);
  for (const p of partitions) {
    for (const event of eventsFor(p, 'one', 30, w1)) all.add(event);
    const survivors = p === GONE ? (second.get(p) as ClientEvent[]).slice(LOST) : second.get(p);
    for (const event of survivors as ClientEvent[]) all.add(event);
  }
  await waitForOracle(resources.db, resources.schema, all, 30_000, () => resumed.tail());
  assert.equal(
    await resumed.metric('aggregator_offsets_skipped_total', { partition: String(GONE) }),
    LOST,
    `skipped offsets${resumed.tail()}`,
  );
  assert.equal(await resumed.metric('aggregator_partition_offsets_missing'), 0);
  assert.ok(skippedSaid.length > 0, `no 'records were skipped' line${resumed.tail()}`);
  await stopCleanly(resumed);

  // 5. Back to the default, as the runbook says: the next start consumes every partition, GONE
  // included, and nothing is stopped or skipped.
  for (const p of partitions) {
    const events = eventsFor(p, 'three', 10, w3);
    await produce(producer, resources.topic, p, events);
    for (const event of events) all.add(event);
  }
  const again = aggregator();
  again.start();
  await again.waitReady();
  await waitForOracle(resources.db, resources.schema, all, 30_000, () => again.tail());
  assert.equal(await again.metric('aggregator_partition_offsets_missing'), 0, again.tail());
  assert.equal(await again.metric('aggregator_offsets_skipped_total'), 0);
  await stopCleanly(again);
});

test('a recreated topic (stored positions past its end) stops the partitions loudly', async (t) => {
  const { resources, producer, aggregator } = await setUp(t, 'offsets_recreated');
  const w1 = Date.now() - (Date.now() % WINDOW_MS);
  const partitions = [...Array(PARTITIONS).keys()];
  const counted = new ActivityOracle(WINDOW_MS);
  for (const p of partitions) {
    const events = eventsFor(p, 'one', 30, w1);
    await produce(producer, resources.topic, p, events);
    for (const event of events) counted.add(event);
  }
  const first = aggregator();
  first.start();
  await first.waitReady();
  await waitForOracle(resources.db, resources.schema, counted, 30_000, () => first.tail());
  await stopCleanly(first);
  const stored = await storedPositions(resources);

  // The topic deleted and created again with the same name: its offsets start at 0 again. To
  // the aggregator that is a topic whose partitions end before the positions PostgreSQL holds,
  // which is what it is given here: a new topic, in place of deleting and recreating this one.
  // (The test broker auto-creates topics, as Redpanda does by default, so a deletion races every
  // client's metadata refresh: CI saw the deleted topic come back within the 30 s wait.)
  const recreated = `${resources.topic}-recreated`;
  resources.defer('deleting the recreated topic', () =>
    deleteTopics(stack.kafkaBrokers, [recreated, `${recreated}.dlq`], logger),
  );
  const made = await ensureTopic(resources.kafka, recreated, PARTITIONS);
  assert.equal(made.partitions, PARTITIONS);
  // Fewer records than before: every stored position lies past the new end.
  for (const p of partitions) {
    await produce(producer, recreated, p, eventsFor(p, 'new', 5, w1 - WINDOW_MS));
  }

  const stopped = aggregator({ TOPIC: recreated });
  const said = linesWith(stopped, MISSING_LOG);
  stopped.start();
  await stopped.waitReady();
  for (const p of partitions) await waitStopped(stopped, p);
  assert.ok(
    said.some((line) => line.includes('past the end')),
    `no '${MISSING_LOG}' line saying past the end${stopped.tail()}`,
  );
  await sleep(3 * STALL_TIMEOUT_SEC * 1000 + 1000);
  assert.equal(await stopped.metric('aggregator_consumer_replacements_total'), 0, stopped.tail());
  // Nothing of the new topic was counted into the old rows, and they stay where they were.
  await waitForOracle(resources.db, resources.schema, counted, 1000, () => stopped.tail());
  assert.deepEqual(await storedPositions(resources), stored);
  await stopCleanly(stopped);
});
