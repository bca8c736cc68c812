/**
 * Exactly once, end to end: events go through the real ingest (HTTP → Kafka), the real
 * aggregator counts them into the real PostgreSQL, and the view `user_activity_window_totals`
 * must equal an oracle of every accepted event, window by window — while the aggregator runs, and
 * after it was SIGKILLed again and again in the middle of consuming, replaying and flushing.
 *
 * A failing run prints its seed; `TEST_SEED=<seed> make test FILTER=exactly-once` replays the
 * same events and kill schedule.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ActivityOracle,
  type ClientEvent,
  randomEvent,
  rfc3339,
  SeededRandom,
  sendEvents,
  testSeed,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import { createTestResources } from '../e2e/test-resources.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_SEC = 10;
const WINDOW_MS = WINDOW_SEC * 1000;
const CLOSE_MS = 15_000;

test('the view equals an oracle of the accepted events in every window', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const resources = await createTestResources('exact_oracle', stack, logger);
  t.after(() => resources.cleanup());
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '4',
    INGEST_PORT: String(await freeTcpPort()),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    WINDOW_SEC: String(WINDOW_SEC),
    FLUSH_INTERVAL_SEC: '0.2',
    BATCH_SIZE: '500',
    WORKERS: '2',
  };
  const ingest = await resources.startIngest(env);
  await resources.startAggregator(env);

  // Four complete windows in the recent past, events in random order, including the first and
  // the last millisecond of each window.
  const now = Date.now();
  const first = windowStartOf(now, WINDOW_MS) - 6 * WINDOW_MS;
  const events: ClientEvent[] = [];
  for (let w = 0; w < 4; w++) {
    const start = first + w * WINDOW_MS;
    events.push(
      { user_id: 'edge-first', activity_type: 'page_view', timestamp: start },
      {
        user_id: 'edge-last',
        activity_type: 'click',
        timestamp: rfc3339(start + WINDOW_MS - 1, 120),
      },
    );
    for (let i = 0; i < 750; i++) {
      events.push(randomEvent(random, 400, start + random.int(WINDOW_MS)));
    }
  }
  random.shuffle(events);

  const oracle = new ActivityOracle(WINDOW_MS);
  const sent = await sendEvents({
    port: ingest.port,
    events,
    oracle,
    batchSize: 250,
    concurrency: 4,
  });
  t.diagnostic(
    `events sent ${sent.sent}, accepted ${sent.accepted}, statuses ${JSON.stringify(sent.statuses)}`,
  );
  assert.ok(sent.accepted > 0, 'ingest accepted no event');
  assert.equal(oracle.expected().length, 4);

  const tookMs = await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  t.diagnostic(`view equal to the oracle ${tookMs} ms after the last answer`);
});

test('SIGKILL at random moments loses nothing and counts nothing twice', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const resources = await createTestResources('exact_crash', stack, logger);
  t.after(() => resources.cleanup());
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '6',
    INGEST_PORT: String(await freeTcpPort()),
  };
  const ingest = await resources.startIngest(env);
  const aggregator = new AggregatorProcess({
    ...resources.env,
    AGGREGATOR_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    WINDOW_SEC: String(WINDOW_SEC),
    // Shorter than the default, to make windows close (final, membership stored) all through the
    // run, so that restarts rebuild open windows beside closed ones and late records go through
    // the closed path. Not needed for correctness: an event later than this is still counted.
    ALLOWED_LATENESS_SEC: '5',
    FLUSH_INTERVAL_SEC: '0.2',
    BATCH_SIZE: '50',
    WORKERS: '2',
    // A killed member holds its partitions until the coordinator gives up on it: the broker's
    // minimum keeps each restart short.
    SESSION_TIMEOUT_SEC: '6',
    SHUTDOWN_GRACE_SEC: '10',
    LOG_LEVEL: 'warn',
  });
  resources.defer('killing the aggregator', () => aggregator.signal('SIGKILL'));

  // 20,000 events whose event time moves through five windows as the stream goes on, each up to
  // one second earlier than its place in the stream.
  const total = 20_000;
  const spanMs = 5 * WINDOW_MS;
  const base = windowStartOf(Date.now(), WINDOW_MS) - 10 * 60_000;
  const events: ClientEvent[] = [];
  for (let i = 0; i < total; i++) {
    const at = base + Math.floor((i * spanMs) / total);
    events.push(randomEvent(random, 3000, Math.max(base, at - random.int(1000))));
  }

  aggregator.start();
  await aggregator.waitReady();
  const oracle = new ActivityOracle(WINDOW_MS);
  const sendMs = 36_000;
  const sending = sendEvents({
    port: ingest.port,
    events,
    oracle,
    batchSize: 100,
    concurrency: 2,
    durationMs: sendMs,
  });
  let sendingDone = false;
  void sending.finally(() => {
    sendingDone = true;
  });

  // Kill schedule: every kind of moment at least once, then random kinds while events flow.
  type Moment = 'starting' | 'replaying' | 'consuming' | 'ready';
  const moments: Moment[] = ['consuming', 'starting', 'replaying', 'ready', 'consuming'];
  const kills: string[] = [];
  const startedAt = Date.now();
  for (
    let i = 0;
    kills.length < 5 || (!sendingDone && Date.now() - startedAt < sendMs - 8_000);
    i++
  ) {
    const moment: Moment = moments[i] ?? random.pick(['replaying', 'consuming', 'ready'] as const);
    if (!aggregator.running) aggregator.start();
    let wait = 0;
    if (moment === 'starting') {
      // Before the process has even connected.
      wait = random.int(100);
      await sleep(wait);
    } else if (moment === 'ready') {
      await aggregator.waitReady();
      wait = random.int(1000);
      await sleep(wait);
    } else {
      // Assignment is when the replay starts: within 100 ms of it, the open windows are being
      // rebuilt; a second or two later, new records are being counted and flushed.
      await aggregator.waitAssigned(1);
      wait = moment === 'replaying' ? random.int(100) : 500 + random.int(1500);
      await sleep(wait);
    }
    // What it had done (records applied since its start) when it died; not for 'starting'.
    const applied =
      moment === 'starting'
        ? undefined
        : await aggregator.metric('aggregator_records_consumed_total');
    await aggregator.signal('SIGKILL');
    kills.push(
      `${moment}+${wait}ms${applied === undefined ? '' : ` (${applied} records applied)`}`,
    );
    await sleep(50 + random.int(400));
  }
  t.diagnostic(`${kills.length} kills: ${kills.join(', ')}`);
  assert.ok(kills.length >= 5);

  if (!aggregator.running) aggregator.start();
  const finalStartAt = Date.now();
  const sent = await sending;
  const lastAnswerAt = Date.now();
  t.diagnostic(
    `events sent ${sent.sent}, accepted ${sent.accepted}, statuses ${JSON.stringify(sent.statuses)}`,
  );
  assert.ok(sent.accepted > 0.99 * total, `ingest accepted only ${sent.accepted} of ${total}`);
  assert.ok(oracle.expected().length >= 5);

  // The last instance owns every partition (once the killed ones' sessions expired) and has
  // rebuilt what was open: its figures are the ones compared.
  await aggregator.waitAssigned(6, 60_000);
  await waitForOracle(resources.db, resources.schema, oracle, 60_000, () => aggregator.tail());
  t.diagnostic(
    `view equal to the oracle ${Date.now() - lastAnswerAt} ms after the last answer, ${Date.now() - finalStartAt} ms after the last restart`,
  );

  // A clean stop after all that: exits 0, and the figures stay what its final flush wrote.
  await sleep(1500);
  await aggregator.signal('SIGTERM', CLOSE_MS);
  assert.equal(aggregator.exitCode, 0, aggregator.tail());
  await waitForOracle(resources.db, resources.schema, oracle, 1000);
});
