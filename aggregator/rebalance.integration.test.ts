/**
 * Several aggregators in one consumer group hand partitions to each other without losing or
 * double-counting an event: one instance stops cleanly (SIGTERM) mid-stream and the survivor
 * takes its partitions over from PostgreSQL; then a third one stalls (SIGSTOP) past its session
 * timeout, the survivor takes over again, and the stalled one wakes up (SIGCONT) with stale
 * figures that the fenced upsert must refuse. Throughout, the view must end equal to the oracle.
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
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import { createTestResources } from '../e2e/test-resources.js';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_SEC = 10;
const WINDOW_MS = WINDOW_SEC * 1000;
const PARTITIONS = 6;
const SESSION_TIMEOUT_SEC = 6;

test('instances of one group hand partitions over on stop and on stall, exactly', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const resources = await createTestResources('rebalance', stack, logger);
  t.after(() => resources.cleanup());
  const ingestEnv = {
    ...resources.env,
    TOPIC_PARTITIONS: String(PARTITIONS),
    INGEST_PORT: String(await freeTcpPort()),
  };
  const ingest = await resources.startIngest(ingestEnv);

  const instance = async (): Promise<AggregatorProcess> => {
    const aggregator = new AggregatorProcess({
      ...resources.env,
      AGGREGATOR_PORT: String(await freeTcpPort()),
      AGGREGATOR_HOST: '127.0.0.1',
      WINDOW_SEC: String(WINDOW_SEC),
      // Event time moves forward through the stream: windows become final (and close) while
      // partitions move between instances. Shorter than the default to close more of them; an
      // event later than this is still counted, so no figure depends on it.
      ALLOWED_LATENESS_SEC: '5',
      FLUSH_INTERVAL_SEC: '0.2',
      BATCH_SIZE: '200',
      WORKERS: '1',
      SESSION_TIMEOUT_SEC: String(SESSION_TIMEOUT_SEC),
      SHUTDOWN_GRACE_SEC: '10',
      LOG_LEVEL: 'warn',
    });
    resources.defer('killing an aggregator', async () => {
      aggregator.freeze(false);
      await aggregator.signal('SIGKILL');
    });
    return aggregator;
  };
  const [a, b, c] = [await instance(), await instance(), await instance()];
  /** Waits until every partition has exactly one owner among `owners`, each owning some. */
  const waitShared = async (...owners: AggregatorProcess[]): Promise<void> => {
    await waitFor(
      async () => {
        const counts = await Promise.all(
          owners.map((p) => p.metric('aggregator_assigned_partitions')),
        );
        const sum = counts.reduce<number>((total, count) => total + (count ?? 0), 0);
        return sum === PARTITIONS && counts.every((count) => (count ?? 0) > 0) ? true : undefined;
      },
      { timeoutMs: 30_000, what: 'the partitions shared between the instances' },
    );
  };
  const assigned = async (): Promise<string> => {
    const counts = await Promise.all(
      [a, b, c].map(async (p) =>
        p.running ? ((await p.metric('aggregator_assigned_partitions')) ?? '?') : '-',
      ),
    );
    return `A ${counts[0]}, B ${counts[1]}, C ${counts[2]}`;
  };

  // 12,000 events through eight windows, each up to a second earlier than its place.
  const total = 12_000;
  const base = windowStartOf(Date.now(), WINDOW_MS) - 10 * 60_000;
  const events: ClientEvent[] = [];
  for (let i = 0; i < total; i++) {
    const at = base + Math.floor((i * 8 * WINDOW_MS) / total);
    events.push(randomEvent(random, 2000, Math.max(base, at - random.int(1000))));
  }
  const oracle = new ActivityOracle(WINDOW_MS);
  const send = (from: number, to: number, durationMs: number) =>
    sendEvents({
      port: ingest.port,
      events: events.slice(from, to),
      oracle,
      batchSize: 100,
      concurrency: 2,
      durationMs,
    });

  // Phase 1: A owns everything; B joins; A stops cleanly mid-stream; B takes over.
  a.start();
  await a.waitAssigned(PARTITIONS);
  const phase1 = send(0, total / 2, 12_000);
  await sleep(2_000);
  b.start();
  await b.waitAssigned(1);
  await waitFor(
    async () =>
      ((await a.metric('aggregator_assigned_partitions')) ?? PARTITIONS) < PARTITIONS || undefined,
    { timeoutMs: 20_000, what: 'A to give partitions to B' },
  );
  t.diagnostic(`shared: ${await assigned()}`);
  await sleep(2_000 + random.int(2_000));
  await a.signal('SIGTERM', 15_000);
  assert.equal(a.exitCode, 0, `A did not stop cleanly${a.tail()}`);
  await b.waitAssigned(PARTITIONS, 20_000);
  t.diagnostic(`after A stopped: ${await assigned()}`);
  const sent1 = await phase1;
  await waitForOracle(resources.db, resources.schema, oracle, 30_000, () => b.tail());

  // Phase 2: C joins; C stalls past its session timeout while events keep coming; B takes its
  // partitions over; C wakes up holding figures that are older than B's.
  c.start();
  await waitShared(b, c);
  const phase2 = send(total / 2, total, 15_000);
  await sleep(1_000 + random.int(1_000));
  c.freeze(true);
  const frozenAt = Date.now();
  await b.waitAssigned(PARTITIONS, (SESSION_TIMEOUT_SEC + 20) * 1000);
  t.diagnostic(`C stopped: B took over after ${Date.now() - frozenAt} ms (${await assigned()})`);
  await sleep(1_000);
  c.freeze(false);
  await waitShared(b, c);
  t.diagnostic(`C woke up and rejoined: ${await assigned()}`);
  const sent2 = await phase2;

  const accepted = sent1.accepted + sent2.accepted;
  t.diagnostic(`events sent ${sent1.sent + sent2.sent}, accepted ${accepted}`);
  assert.ok(accepted > 0.99 * total, `ingest accepted only ${accepted} of ${total}`);
  const tookMs = await waitForOracle(
    resources.db,
    resources.schema,
    oracle,
    30_000,
    () => `${b.tail()}${c.tail()}`,
  );
  t.diagnostic(`view equal to the oracle ${tookMs} ms after the last answer`);

  await Promise.all([b.signal('SIGTERM', 15_000), c.signal('SIGTERM', 15_000)]);
  assert.deepEqual([b.exitCode, c.exitCode], [0, 0], `${b.tail()}${c.tail()}`);
  await waitForOracle(resources.db, resources.schema, oracle, 1000);
});
