/**
 * The memory bound never stops consumption: a 15-minute window (the longest that rollups allow)
 * whose held ids (users and event ids)
 * pass MAX_HELD_USER_IDS is written with its membership and leaves memory, later events for it
 * are counted through the stored membership, and the view stays exactly the oracle's — while the
 * aggregator runs, and after it was SIGKILLed right after such an early close.
 *
 * Events go through the real ingest; lateness settings are the defaults. A failing run prints
 * its seed; `TEST_SEED=<seed> make test FILTER=memory-bound` replays the same events.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import {
  ActivityOracle,
  type ClientEvent,
  SeededRandom,
  sendEvents,
  testSeed,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import {
  freeTcpPort,
  scrapeMetrics,
  stackFromEnv,
  sumSamples,
  waitFor,
} from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_SEC = 900;
const WINDOW_MS = WINDOW_SEC * 1000;
/** The smallest bound the configuration allows. */
const MAX_HELD_USER_IDS = 1000;
const WORKERS = 2;
/** The consumer's batch size ('js.consumer.max.batch.size' in activity-consumer.ts). */
const MAX_BATCH_RECORDS = 2000;
/**
 * The most held ids the `aggregator_held_*` gauges may show. They are set after each flush.
 * A batch is merged, then, held ids above the bound, the oldest windows are closed (down to
 * half the bound) and the batch waits for a flush that writes them and the events waiting for
 * closed windows. While a flush runs, each of the `WORKERS` partitions consumed at once can
 * merge one more batch before it waits in turn: at most 2,000 records, each one user id and one
 * event id (an event for a closed window holds one of each until the flush). So what a flush
 * leaves is at most the bound plus that many batches.
 */
const HELD_IDS_BOUND = MAX_HELD_USER_IDS + WORKERS * MAX_BATCH_RECORDS * 2;
const CLOSE_MS = 15_000;
const USERS = 5000;

/** Events of distinct and repeat users, all in the window starting at `windowStart`. */
function newEvents(
  random: SeededRandom,
  prefix: string,
  count: number,
  windowStart: number,
): ClientEvent[] {
  const events: ClientEvent[] = [];
  // At or before now (ingest refuses far-future events), never before the window.
  const span = Math.max(1, Math.min(WINDOW_MS, Date.now() - windowStart + 1));
  for (let i = 0; i < count; i++) {
    // The first USERS events cover every user once; the rest pick users again.
    const user = i < USERS ? i : random.int(USERS);
    events.push({
      user_id: `mb-user-${user}`,
      activity_type: random.next() < 0.4 ? PAGE_VIEW : 'click',
      timestamp: windowStart + random.int(span),
      event_id: `${prefix}-${i}`,
    });
  }
  return events;
}

/** `count` events of `events` sent again as they were (a client resending: same event_id). */
function repeatsOf(random: SeededRandom, events: readonly ClientEvent[], count: number) {
  return Array.from({ length: count }, () => ({ ...random.pick(events) }));
}

/** Samples what must hold all along: held ids and the pause gauge, every 50 ms. */
class Sampler {
  maxHeldIds = 0;
  maxPaused = 0;
  samples = 0;
  private running = true;
  private readonly loop: Promise<void>;

  constructor(private readonly aggregator: AggregatorProcess) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (this.running) {
      // One scrape: the two held-id gauges are set together, after each flush.
      const text = this.aggregator.running ? await scrapeMetrics(this.aggregator.port) : undefined;
      if (text !== undefined) {
        const held =
          sumSamples(text, 'aggregator_held_user_ids') +
          sumSamples(text, 'aggregator_held_event_ids');
        this.maxHeldIds = Math.max(this.maxHeldIds, held);
        this.maxPaused = Math.max(
          this.maxPaused,
          sumSamples(text, 'aggregator_consumption_paused'),
        );
        this.samples++;
      }
      await sleep(50);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

async function setUp(t: TestContext, prefix: string) {
  const resources = await createTestResources(prefix, stack, logger);
  t.after(() => resources.cleanup());
  const ingest = await resources.startIngest({
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(await freeTcpPort()),
  });
  const aggregator = new AggregatorProcess({
    ...resources.env,
    AGGREGATOR_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    WINDOW_SEC: String(WINDOW_SEC),
    MAX_HELD_USER_IDS: String(MAX_HELD_USER_IDS),
    WORKERS: String(WORKERS),
    // A killed member holds its partitions until the coordinator gives up on it: the broker's
    // minimum keeps the restart short.
    SESSION_TIMEOUT_SEC: '6',
    LOG_LEVEL: 'warn',
  });
  resources.defer('killing the aggregator', () => aggregator.signal('SIGKILL'));
  return { resources, port: ingest.port, aggregator };
}

async function send(
  t: TestContext,
  port: number,
  events: readonly ClientEvent[],
  oracle: ActivityOracle,
  durationMs = 0,
) {
  const sent = await sendEvents({
    port,
    events,
    oracle,
    batchSize: 250,
    concurrency: 4,
    durationMs,
  });
  t.diagnostic(
    `events sent ${sent.sent}, accepted ${sent.accepted}, statuses ${JSON.stringify(sent.statuses)}`,
  );
  assert.equal(sent.accepted, events.length, 'ingest refused events');
}

/** Waits until the aggregator reports no lag on any partition (the watchdog refreshes it). */
async function waitCaughtUp(aggregator: AggregatorProcess): Promise<void> {
  let lag: number | undefined;
  await waitFor(
    async () => {
      lag = await aggregator.metric('aggregator_partition_lag_records');
      return lag === 0 ? true : undefined;
    },
    { timeoutMs: 30_000, what: 'lag 0', describe: () => `lag ${lag}${aggregator.tail()}` },
  );
}

async function waitClosedEarly(aggregator: AggregatorProcess): Promise<number> {
  return waitFor(
    async () => {
      const closed = await aggregator.metric('aggregator_windows_closed_early_total');
      return closed !== undefined && closed > 0 ? closed : undefined;
    },
    { timeoutMs: 60_000, what: 'a window closed early', describe: () => aggregator.tail() },
  );
}

function assertBounded(t: TestContext, sampler: Sampler): void {
  t.diagnostic(
    `${sampler.samples} samples: held ids at most ${sampler.maxHeldIds} (bound ${HELD_IDS_BOUND}), paused at most ${sampler.maxPaused}`,
  );
  assert.ok(sampler.samples >= 20, 'too few samples of the gauges');
  assert.equal(sampler.maxPaused, 0, 'consumption paused');
  assert.ok(
    sampler.maxHeldIds <= HELD_IDS_BOUND,
    `held ids reached ${sampler.maxHeldIds}, above ${HELD_IDS_BOUND}`,
  );
}

/** Which windows PostgreSQL holds with their membership stored (closed, out of memory). */
async function closedRows(resources: TestResources): Promise<number> {
  const result = await resources.db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${resources.schema}.user_activity_metrics
      WHERE membership_stored`,
  );
  return result.rows[0]?.n ?? 0;
}

test('a 15-minute window past the held-id bound: consumption never stops, the view is exact', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const { resources, port, aggregator } = await setUp(t, 'memory_bound');
  const windowStart = windowStartOf(Date.now(), WINDOW_MS);
  aggregator.start();
  await aggregator.waitReady();
  await aggregator.waitAssigned(3);
  const sampler = new Sampler(aggregator);
  const oracle = new ActivityOracle(WINDOW_MS);

  // 12,000 events of 5,000 users over 8 s: 17,000 ids in one window, 17 times the bound.
  const first = newEvents(random, 'a', 12_000, windowStart);
  await send(t, port, first, oracle, 8000);
  const closedEarly = await waitClosedEarly(aggregator);

  // More events for the same window, now closed: new ones, and resends of events counted before
  // and after the close, which must count once.
  const second = newEvents(random, 'b', 6000, windowStart);
  const more = random.shuffle([
    ...second,
    ...repeatsOf(random, first, 1500),
    ...repeatsOf(random, second, 500),
  ]);
  await send(t, port, more, oracle);
  assert.ok(oracle.events < first.length + more.length, 'no repeated event_id was sent');

  const tookMs = await waitForOracle(resources.db, resources.schema, oracle, 60_000, () =>
    aggregator.tail(),
  );
  t.diagnostic(`view equal to the oracle ${tookMs} ms after the last answer`);
  await waitCaughtUp(aggregator);
  await sampler.stop();
  assertBounded(t, sampler);
  const early = (await aggregator.metric('aggregator_windows_closed_early_total')) ?? 0;
  t.diagnostic(
    `windows closed early ${early} (first seen ${closedEarly}); oracle ${JSON.stringify(oracle.expected())}`,
  );
  assert.ok(early > 0);
  assert.ok((await closedRows(resources)) > 0, 'no window stored with its membership');
  assert.equal(oracle.expected().length, 1, 'the events left their window');

  await aggregator.signal('SIGTERM', CLOSE_MS);
  assert.equal(aggregator.exitCode, 0, aggregator.tail());
});

test('SIGKILL right after an early close: the next instance does not stall, the view is exact', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const { resources, port, aggregator } = await setUp(t, 'memory_kill');
  const windowStart = windowStartOf(Date.now(), WINDOW_MS);
  aggregator.start();
  await aggregator.waitReady();
  await aggregator.waitAssigned(3);
  const oracle = new ActivityOracle(WINDOW_MS);

  // Sent over 10 s: the kill lands while events keep coming.
  const first = newEvents(random, 'a', 12_000, windowStart);
  const sending = send(t, port, first, oracle, 10_000);
  await waitClosedEarly(aggregator);
  await waitFor(async () => ((await closedRows(resources)) > 0 ? true : undefined), {
    timeoutMs: 30_000,
    what: 'an early-closed window written with its membership',
  });
  // Well past the close: events for the closed window are held for the next flush, or in one.
  const applied = await waitFor(
    async () => {
      const consumed = (await aggregator.metric('aggregator_records_consumed_total')) ?? 0;
      return consumed >= 4000 ? consumed : undefined;
    },
    { timeoutMs: 30_000, what: '4,000 records applied', describe: () => aggregator.tail() },
  );
  await aggregator.signal('SIGKILL');
  t.diagnostic(`SIGKILL after ${applied} records applied`);

  aggregator.start();
  const sampler = new Sampler(aggregator);
  await aggregator.waitReady();
  await sending;
  const second = newEvents(random, 'b', 6000, windowStart);
  const more = random.shuffle([
    ...second,
    ...repeatsOf(random, first, 1500),
    ...repeatsOf(random, second, 500),
  ]);
  await send(t, port, more, oracle);

  await aggregator.waitAssigned(3, 60_000);
  const tookMs = await waitForOracle(resources.db, resources.schema, oracle, 90_000, () =>
    aggregator.tail(),
  );
  t.diagnostic(`view equal to the oracle ${tookMs} ms after the last answer`);
  await waitCaughtUp(aggregator);
  await sampler.stop();
  assertBounded(t, sampler);
  const consumed = (await aggregator.metric('aggregator_records_consumed_total')) ?? 0;
  const replacements = await aggregator.metric('aggregator_consumer_replacements_total');
  t.diagnostic(
    `restarted instance: ${consumed} records applied, ${replacements} consumer replacements`,
  );
  assert.ok(consumed >= more.length, `the restarted instance applied only ${consumed} records`);

  await aggregator.signal('SIGTERM', CLOSE_MS);
  assert.equal(aggregator.exitCode, 0, aggregator.tail());
});
