/**
 * A partition's checkpoint read, cut mid-query at assignment (PostgreSQL crashed or restarted
 * just then, as a `make test` chaos run once saw), is tried again: the aggregator neither exits
 * nor guesses a position, and the view ends exact. The test holds the read in place with a lock
 * on the table, terminates the aggregator's waiting backend, then lets go.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
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
import { migrate } from './migrations.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 10_000;

test('a checkpoint read cut mid-query at assignment is tried again; counts stay exact', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const resources = await createTestResources('checkpointretry', stack, logger);
  t.after(() => resources.cleanup());
  await migrate(resources.db, resources.schema);
  const ingest = await resources.startIngest({
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(await freeTcpPort()),
  });

  const base = windowStartOf(Date.now(), WINDOW_MS) - 60_000;
  const events: ClientEvent[] = [];
  for (let i = 0; i < 2_000; i++) events.push(randomEvent(random, 300, base + random.int(40_000)));
  const oracle = new ActivityOracle(WINDOW_MS);
  const send = (from: number, to: number) =>
    sendEvents({
      port: ingest.port,
      events: events.slice(from, to),
      oracle,
      batchSize: 50,
      concurrency: 2,
      durationMs: 2_000,
    });
  const first = await send(0, 1_000);

  // The table locked: the aggregator's checkpoint read waits behind the lock.
  const locker = new pg.Client({
    connectionString: stack.databaseUrl,
    options: `-c search_path=${resources.schema}`,
  });
  locker.on('error', () => {});
  await locker.connect();
  t.after(() => locker.end());
  await locker.query('BEGIN');
  await locker.query('LOCK TABLE user_activity_metrics IN ACCESS EXCLUSIVE MODE');

  const starting = resources.startAggregator({
    ...resources.env,
    AGGREGATOR_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    WINDOW_SEC: String(WINDOW_MS / 1000),
    FLUSH_INTERVAL_SEC: '0.2',
    WORKERS: '1',
    LOG_LEVEL: 'error',
  });
  // Asked from another session: inside the locker's transaction pg_stat_activity would not
  // change (it is read once per transaction).
  const waiting = await waitFor(
    async () => {
      const result = await resources.db.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity
          WHERE application_name = 'aggregator' AND wait_event_type = 'Lock'
            AND query LIKE '%user_activity_metrics%'`,
      );
      return result.rows[0]?.pid;
    },
    { timeoutMs: 30_000, what: "the aggregator's checkpoint read to wait on the lock" },
  );
  await resources.db.query('SELECT pg_terminate_backend($1)', [waiting]);
  await locker.query('ROLLBACK');
  const aggregator = await starting;

  const second = await send(1_000, 2_000);
  assert.equal(first.accepted + second.accepted, 2_000, 'every event acknowledged');
  const tookMs = await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  t.diagnostic(`view equal to the oracle ${tookMs} ms after the last answer`);
  const retries = await scrapeMetric(
    aggregator.port,
    'aggregator_database_retries_total{operation="checkpoint"}',
  );
  assert.ok((retries ?? 0) >= 1, `the checkpoint read was retried (${retries})`);
  assert.equal(await scrapeMetric(aggregator.port, 'aggregator_assigned_partitions'), 3);
});
