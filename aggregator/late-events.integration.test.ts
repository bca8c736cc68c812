/**
 * An event ingest acknowledged is counted exactly once in its own window, whatever its timestamp
 * within ingest's accepted range and whatever the other events' timestamps — on the default
 * lateness settings (ALLOWED_LATENESS_SEC, MAX_EVENT_AGE_SEC are never set here). Real ingest,
 * real broker, real PostgreSQL, the oracle. FLUSH_INTERVAL_SEC is shortened for speed only: no
 * figure depends on how often the aggregator writes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ActivityOracle,
  type ClientEvent,
  postActivities,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import { createTestResources } from '../e2e/test-resources.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, scrapeMetric, stackFromEnv, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 60_000;
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Posts `events` (in batches of 200) and tells the oracle about every event answered 2xx. */
async function send(port: number, oracle: ActivityOracle, events: ClientEvent[]): Promise<void> {
  for (let i = 0; i < events.length; i += 200) {
    const outcome = await postActivities(port, events.slice(i, i + 200));
    assert.equal(outcome.status, 200, `batch at ${i}: status ${outcome.status}`);
    for (const event of outcome.accepted) oracle.add(event);
  }
}

function event(user: string, timestamp: number, id: string, type = 'click'): ClientEvent {
  return { user_id: user, activity_type: type, timestamp, event_id: id };
}

/** Ingest and an in-process aggregator on the defaults, 3 partitions. */
async function pipeline(t: { after: (fn: () => Promise<void>) => void }, name: string) {
  const resources = await createTestResources(name, stack, logger);
  t.after(() => resources.cleanup());
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(await freeTcpPort()),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    FLUSH_INTERVAL_SEC: '0.5',
  };
  const ingest = await resources.startIngest(env);
  await resources.startAggregator(env);
  const metric = (name: string) => scrapeMetric(Number(env.AGGREGATOR_PORT), name);
  return { resources, ingest, metric };
}

test('events stamped minutes ahead (a fast clock, or forged) close nobody else’s window', async (t) => {
  const { resources, ingest, metric } = await pipeline(t, 'late_future');
  const oracle = new ActivityOracle(WINDOW_MS);
  const start = Date.now();
  // Four minutes ahead: inside ingest's five-minute allowance for clock skew.
  await send(
    ingest.port,
    oracle,
    Array.from({ length: 30 }, (_, i) =>
      event(`fast-${i}`, start + 4 * MINUTE + i, `future-${i}`, 'page_view'),
    ),
  );
  // Then ordinary traffic for 15 s, stamped now: every one of these used to be dead-lettered,
  // because the future events had moved the partition's watermark four minutes ahead.
  for (let round = 0; round < 15; round++) {
    const now = Date.now();
    await send(
      ingest.port,
      oracle,
      Array.from({ length: 40 }, (_, i) =>
        event(`user-${(round * 7 + i) % 90}`, now - (i % 3) * 1000, `now-${round}-${i}`),
      ),
    );
    await sleep(1000);
  }
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  assert.equal(await metric('aggregator_dead_lettered_total'), 0, 'nothing dead-lettered');
  assert.equal(await metric('aggregator_records_late_total'), 0);
});

test('events 2 minutes, 1 hour and 2 days old are counted in their own windows, closed or not', async (t) => {
  const { resources, ingest, metric } = await pipeline(t, 'late_old');
  const oracle = new ActivityOracle(WINDOW_MS);
  // Current traffic first, over the last three minutes (in order): the partitions' watermarks
  // reach the present, and the window of two minutes ago closes (final, membership stored).
  const now = Date.now();
  const recent = Array.from({ length: 180 }, (_, i) =>
    event(
      `user-${i % 60}`,
      now - 3 * MINUTE + i * 1000,
      `recent-${i}`,
      i % 4 ? 'click' : 'page_view',
    ),
  );
  await send(ingest.port, oracle, recent);
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  const twoMinutesAgo = now - 2 * MINUTE;
  const closedWindow = new Date(windowStartOf(twoMinutesAgo, WINDOW_MS)).toISOString();
  await waitFor(
    async () => {
      const closed = await resources.db.query(
        `SELECT bool_and(is_final AND membership_stored) AS closed
           FROM ${resources.schema}.user_activity_metrics WHERE "timestamp" = $1`,
        [closedWindow],
      );
      return closed.rows[0]?.closed === true ? true : undefined;
    },
    { timeoutMs: 30_000, what: `the window ${closedWindow} final and closed` },
  );

  // Then batches from the past: users already counted in those windows and new ones, an event
  // sent twice with the same id (a resend), and page views.
  const old = (label: string, at: number): ClientEvent[] =>
    Array.from({ length: 50 }, (_, i) =>
      event(`user-${i % 70}`, at + (i % 5) * 1000, `${label}-${i}`, i % 3 ? 'click' : 'page_view'),
    );
  const twoMinutes = old('old-2m', twoMinutesAgo);
  const oneHour = old('old-1h', now - HOUR);
  const twoDays = old('old-2d', now - 2 * DAY);
  await send(ingest.port, oracle, [...twoMinutes, ...oneHour, ...twoDays]);
  // Resends: the same events (ids and timestamps) again, and more events of the same users.
  await send(ingest.port, oracle, [...twoMinutes.slice(0, 10), ...twoDays.slice(0, 10)]);
  await send(ingest.port, oracle, old('old-2d-again', now - 2 * DAY));
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);

  assert.equal(await metric('aggregator_dead_lettered_total'), 0, 'nothing dead-lettered');
  assert.ok(
    ((await metric('aggregator_closed_window_records_total')) ?? 0) >= 150,
    'the old events went through the closed windows’ membership',
  );
  const closed = await resources.db.query<{ is_final: boolean; membership_stored: boolean }>(
    `SELECT bool_and(is_final) AS is_final, bool_and(membership_stored) AS membership_stored
       FROM ${resources.schema}.user_activity_metrics WHERE "timestamp" = $1`,
    [closedWindow],
  );
  assert.deepEqual(closed.rows[0], { is_final: true, membership_stored: true });
});

test('an aggregator frozen for 25 s across a window boundary while events arrive counts them all', async (t) => {
  const resources = await createTestResources('late_frozen', stack, logger);
  t.after(() => resources.cleanup());
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(await freeTcpPort()),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    FLUSH_INTERVAL_SEC: '0.5',
  };
  const ingest = await resources.startIngest(env);
  const aggregator = new AggregatorProcess(env);
  resources.defer('stopping the aggregator', async () => {
    aggregator.freeze(false);
    await aggregator.signal('SIGTERM', 12_000);
  });
  aggregator.start();
  await aggregator.waitAssigned(3);
  const oracle = new ActivityOracle(WINDOW_MS);

  // Freeze 5 s before the next window boundary, for 25 s, while events keep coming: on
  // resumption the aggregator's clock has passed the old window's end plus the lateness, and its
  // partitions look idle, but the records acknowledged meanwhile are still unread.
  const boundary = windowStartOf(Date.now(), WINDOW_MS) + WINDOW_MS;
  const freezeAt = Math.max(Date.now() + 3_000, boundary - 5_000);
  let sequence = 0;
  let sending = true;
  const sender = (async () => {
    while (sending) {
      const now = Date.now();
      await send(
        ingest.port,
        oracle,
        Array.from({ length: 20 }, (_, i) =>
          event(`user-${(sequence + i) % 120}`, now - (i % 4) * 500, `frozen-${sequence++}`),
        ),
      );
      await sleep(250);
    }
  })();
  await sleep(freezeAt - Date.now());
  aggregator.freeze(true);
  await sleep(25_000);
  aggregator.freeze(false);
  await sleep(5_000);
  sending = false;
  await sender;
  await waitForOracle(resources.db, resources.schema, oracle, 30_000, () => aggregator.tail());
  assert.equal(
    await aggregator.metric('aggregator_dead_lettered_total'),
    0,
    'nothing dead-lettered',
  );
  assert.ok(oracle.events > 500, `only ${oracle.events} events were sent`);
});
