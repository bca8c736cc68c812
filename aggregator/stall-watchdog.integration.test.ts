/**
 * A consumer that stops delivering while records wait is replaced, and nothing is lost or
 * counted twice. Chaos runs saw the client stop for good after a broker freeze, too rarely to
 * reproduce on demand; here the test stops it the same way from the outside (it pauses the
 * client behind the aggregator's back, so the aggregator sees partitions assigned, records
 * waiting and nothing delivered) and checks that the watchdog replaces it within its timeout.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ActivityOracle,
  type ClientEvent,
  randomEvent,
  SeededRandom,
  sendEvents,
  testSeed,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { createTestResources } from '../e2e/test-resources.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, scrapeMetric, stackFromEnv, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 10_000;
const STALL_TIMEOUT_SEC = 3;

/** A metric of the aggregator, which must answer. */
async function metric(port: number, name: string): Promise<number> {
  const value = await scrapeMetric(port, name);
  assert.notEqual(value, undefined, `the aggregator's /metrics did not answer (${name})`);
  return value as number;
}

test('a consumer that delivers nothing while records wait is replaced; counts stay exact', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const resources = await createTestResources('stallwatch', stack, logger);
  t.after(() => resources.cleanup());
  const ingest = await resources.startIngest({
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(await freeTcpPort()),
  });
  const aggregator = await resources.startAggregator({
    ...resources.env,
    AGGREGATOR_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    WINDOW_SEC: String(WINDOW_MS / 1000),
    ALLOWED_LATENESS_SEC: '30',
    FLUSH_INTERVAL_SEC: '0.2',
    WORKERS: '1',
    SESSION_TIMEOUT_SEC: '6',
    CONSUMER_STALL_TIMEOUT_SEC: String(STALL_TIMEOUT_SEC),
    LOG_LEVEL: 'warn',
  });

  const base = windowStartOf(Date.now(), WINDOW_MS) - 60_000;
  const events: ClientEvent[] = [];
  for (let i = 0; i < 4_000; i++) events.push(randomEvent(random, 500, base + random.int(40_000)));
  const oracle = new ActivityOracle(WINDOW_MS);
  const send = (from: number, to: number) =>
    sendEvents({
      port: ingest.port,
      events: events.slice(from, to),
      oracle,
      batchSize: 50,
      concurrency: 2,
      durationMs: 3_000,
    });

  const first = await send(0, 2_000);
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  assert.equal(await metric(aggregator.port, 'aggregator_consumer_replacements_total'), 0);

  // The stop: the client itself paused, which the aggregator did not ask for.
  const client = (
    aggregator.consumer as unknown as {
      consumer: { pause(topics: Array<{ topic: string }>): void };
    }
  ).consumer;
  client.pause([{ topic: resources.topic }]);
  const stoppedAt = Date.now();
  const second = await send(2_000, 4_000);
  assert.equal(first.accepted + second.accepted, 4_000, 'every event acknowledged');

  const replacedAfterMs = await waitFor(
    async () =>
      (await metric(aggregator.port, 'aggregator_consumer_replacements_total')) >= 1
        ? Date.now() - stoppedAt
        : undefined,
    { timeoutMs: 30_000, what: 'the stalled consumer to be replaced' },
  );
  t.diagnostic(`replaced ${replacedAfterMs} ms after the client stopped`);
  const tookMs = await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  t.diagnostic(`view equal to the oracle ${tookMs} ms after the last answer`);
  assert.equal(
    await metric(aggregator.port, 'aggregator_consumer_replacements_total'),
    1,
    'one replacement: the new consumer delivers',
  );
  assert.equal(await metric(aggregator.port, 'aggregator_assigned_partitions'), 3);
});
