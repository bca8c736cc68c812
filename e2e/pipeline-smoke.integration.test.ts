/**
 * The foundation's end-to-end check: events POSTed over HTTP to the real ingest are produced to
 * the real broker, consumed by the real aggregator and counted in the real PostgreSQL, and the
 * per-window view equals what was sent.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { readAggregatorConfig } from '../aggregator/config.js';
import { type AggregatorService, startAggregator } from '../aggregator/service.js';
import { readIngestConfig } from '../ingest/config.js';
import { type IngestService, startIngest } from '../ingest/service.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, uniqueName, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const topic = uniqueName('smoke');
const schema = uniqueName('smoke');
const logger = createLogger('test', 'warn');
const windowSec = 60;

let ingest: IngestService;
let aggregator: AggregatorService;
let db: pg.Client;

before(async () => {
  const env = {
    KAFKA_BROKERS: stack.kafkaBrokers,
    DATABASE_URL: stack.databaseUrl,
    DATABASE_SCHEMA: schema,
    TOPIC: topic,
    TOPIC_PARTITIONS: '3',
    CONSUMER_GROUP: `${topic}-group`,
    INGEST_PORT: String(await freeTcpPort()),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    WINDOW_SEC: String(windowSec),
    FLUSH_INTERVAL_SEC: '0.5',
  };
  ingest = await startIngest(readIngestConfig(env), logger.child({ service: 'ingest' }));
  aggregator = await startAggregator(
    readAggregatorConfig(env),
    logger.child({ service: 'aggregator' }),
  );
  db = new pg.Client({ connectionString: stack.databaseUrl });
  await db.connect();
});

after(async () => {
  // Every close has a deadline and runs even if another failed: a shutdown bug fails the test
  // instead of hanging it.
  const results = await Promise.allSettled([
    withDeadline(ingest?.close() ?? Promise.resolve(), 15_000, 'closing ingest'),
    withDeadline(aggregator?.close() ?? Promise.resolve(), 15_000, 'closing aggregator'),
  ]);
  await db?.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await db?.end();
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

test('events sent over HTTP are counted per window in PostgreSQL', async () => {
  // Two complete windows in the recent past, so the expected figures do not depend on the clock.
  const now = Date.now();
  const w1 = now - (now % (windowSec * 1000)) - 3 * windowSec * 1000;
  const w2 = w1 + windowSec * 1000;
  const events = [
    { user_id: 'alice', activity_type: 'page_view', timestamp: w1 + 1_000 },
    { user_id: 'bob', activity_type: 'page_view', timestamp: w1 + 2_000 },
    { user_id: 'alice', activity_type: 'page_view', timestamp: w1 + 3_000 },
    { user_id: 'carol', activity_type: 'click', timestamp: w1 + 4_000 },
    { user_id: 42, activity_type: 'page_view', timestamp: new Date(w2 + 5_000).toISOString() },
    { user_id: 'alice', activity_type: 'signup', timestamp: w2 + 6_000 },
  ];
  for (const event of events) {
    const response = await fetch(`http://127.0.0.1:${ingest.port}/activity`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(event),
    });
    assert.equal(response.status, 200, await response.text());
  }

  const expected = [
    { window_start: new Date(w1).toISOString(), unique_users: 3, page_view_count: 3, events: 4 },
    { window_start: new Date(w2).toISOString(), unique_users: 2, page_view_count: 1, events: 2 },
  ];
  let seen: unknown[] = [];
  const rows = await waitFor(
    async () => {
      const result = await db.query(
        `SELECT window_start, unique_users::int, page_view_count::int, event_count::int AS events
           FROM ${schema}.user_activity_window_totals ORDER BY window_start`,
      );
      seen = result.rows.map((row) => ({ ...row, window_start: row.window_start.toISOString() }));
      const total = seen.reduce((sum: number, row) => sum + (row as { events: number }).events, 0);
      return total === events.length ? seen : undefined;
    },
    { timeoutMs: 30_000, what: 'all events counted', describe: () => JSON.stringify(seen) },
  );
  assert.deepEqual(rows, expected);
});
