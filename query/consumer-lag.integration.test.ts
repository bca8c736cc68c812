/**
 * `/v1/realtime`'s `freshness.consumer_lag_records` against the real broker and aggregator:
 * records in the topic that PostgreSQL does not reflect yet, over the whole topic. Events go
 * through ingest; while no aggregator runs the lag is exactly what was sent since, and once an
 * aggregator consumed and flushed them it is 0. A broker that does not answer leaves the figure
 * null and the answer whole.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { AggregatorService } from '../aggregator/service.js';
import { getJson, startQueryOn } from '../e2e/query-fixture.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const SITE = 'lag';
const WRITE_KEY = 'consumer-lag-write-key';

let resources: TestResources;
let env: Record<string, string>;
let ingestPort: number;
let base: string;
let counter = 0;

before(async () => {
  resources = await createTestResources('query_lag', stack, logger);
  ingestPort = await freeTcpPort();
  env = {
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(ingestPort),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    API_KEYS: `${WRITE_KEY}=${SITE}@UTC`,
  };
  await resources.startIngest(env);
  // The aggregator creates the tables; the query service reads them. Started and stopped here
  // so that the records sent next wait in the topic.
  const first = await resources.startAggregator(env);
  await withDeadline(first.close(), 15_000, 'closing the first aggregator');
  const { service, url } = await startQueryOn(
    stack.databaseUrl,
    resources.schema,
    { KAFKA_BROKERS: env.KAFKA_BROKERS ?? '', TOPIC: resources.topic },
    logger,
  );
  resources.defer('closing the query service', () => service.close());
  base = url;
});

after(() => resources?.cleanup());

/** Sends `n` events of different users (so over every partition) through ingest. */
async function send(n: number): Promise<void> {
  const now = Date.now();
  const events = Array.from({ length: n }, () => {
    counter++;
    return {
      user_id: `user-${counter}`,
      activity_type: counter % 3 === 0 ? 'page_view' : 'click',
      timestamp: now,
      event_id: `lag-${counter}`,
    };
  });
  const response = await fetch(`http://127.0.0.1:${ingestPort}/activities`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${WRITE_KEY}` },
    body: JSON.stringify(events),
  });
  assert.equal(response.status, 200, await response.text());
}

async function lag(url = base): Promise<number | null> {
  const answer = await getJson(url, '/v1/realtime', { site: SITE });
  assert.equal(answer.status, 200, answer.text);
  return answer.body.freshness.consumer_lag_records as number | null;
}

/** Waits for the lag to read `expected`, failing at once on a value above `ceiling`. */
async function lagReaches(expected: number, ceiling = expected): Promise<void> {
  let last: number | null = null;
  await waitFor(
    async () => {
      last = await lag();
      assert.ok(last === null || last <= ceiling, `lag ${last} above ${ceiling}`);
      return last === expected ? true : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 250, what: `lag ${expected}`, describe: () => `${last}` },
  );
}

const storedEvents = async (): Promise<number> => {
  const result = await resources.db.query<{ events: string | null }>(
    `SELECT sum(event_count) AS events FROM ${resources.schema}.user_activity_metrics
      WHERE site = $1`,
    [SITE],
  );
  return Number(result.rows[0]?.events ?? 0);
};

test('records not yet consumed are the lag; consumed and flushed, it is 0', async () => {
  assert.equal(await lag(), 0, 'an empty topic has no lag');
  // Partitions without rows count from the low watermark.
  await send(40);
  await lagReaches(40);

  let aggregator: AggregatorService | undefined = await resources.startAggregator(env);
  await lagReaches(0, 40);
  assert.equal(await storedEvents(), 40, 'what the lag no longer counts is in PostgreSQL');
  await withDeadline(aggregator.close(), 15_000, 'closing the aggregator');
  aggregator = undefined;

  // Partitions with rows count from their newest through_offset + 1.
  await send(25);
  await lagReaches(25);
  await resources.startAggregator(env);
  await lagReaches(0, 25);
  assert.equal(await storedEvents(), 65);
});

test('a broker that does not answer: the lag is null and the answer whole', async () => {
  const { service, url } = await startQueryOn(
    stack.databaseUrl,
    resources.schema,
    // Nothing listens there.
    { KAFKA_BROKERS: `127.0.0.1:${await freeTcpPort()}`, TOPIC: resources.topic },
    logger,
  );
  resources.defer('closing the second query service', () => service.close());
  const started = Date.now();
  const answer = await getJson(url, '/v1/realtime', { site: SITE });
  assert.equal(answer.status, 200, answer.text);
  assert.equal(answer.body.freshness.consumer_lag_records, null);
  assert.equal(answer.body.windows.length, 31);
  // The lag's deadline (2 s) bounds what the broker can add to the answer.
  assert.ok(Date.now() - started < 5_000, `answered in ${Date.now() - started} ms`);
});
