/**
 * PostgreSQL goes away under a running aggregator and comes back on the same address with the
 * same data: the aggregator must report not-ready while it cannot write, become ready again once
 * it can, and end with the view exactly equal to what was produced — nothing lost, nothing
 * counted twice, no session left inside a transaction.
 *
 * The test runs its own PostgreSQL (the run's shared one must stay up for the other tests) and
 * the run's shared broker. Events are produced straight to the topic, as ingest would produce
 * them: key `user_id`, value the JSON event with an epoch-ms timestamp (the time of sending, so
 * each partition sees event time in order and no event is ever late by the watermark).
 *
 * The third test keeps the outage going while the consumer waits for its flush: the partitions
 * keep receiving records, so none of their windows may be closed by the idle rule meanwhile.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, type TestContext, test } from 'node:test';
import pg from 'pg';
import { freePort } from '../deploy/local/free-port.js';
import { PostgresCluster } from '../deploy/local/postgres-cluster.js';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { createKafka, type Kafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, scrapeMetric, stackFromEnv, uniqueName, waitFor } from '../shared/testing.js';
import { windowStartOf } from './batch-aggregator.js';
import { readAggregatorConfig } from './config.js';
import { type AggregatorService, startAggregator } from './service.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'error');
const WINDOW_SEC = 5;
/** How long the aggregator gets to notice it cannot write (its retry policy is 0.5 + 1 + 2 s). */
const NOT_READY_WITHIN_MS = 15_000;
/** How long after PostgreSQL is back the aggregator gets to be ready again. */
const READY_AGAIN_WITHIN_MS = 30_000;

const dir = join(REPO_ROOT, '.local', 'test', `pgrestart-${randomBytes(4).toString('hex')}`);
let port: number;
let databaseUrl: string;
let cluster: PostgresCluster;
let kafka: Kafka;

/** A new instance each time: the cluster object's stop() is memoised for its first run. */
async function startCluster(): Promise<void> {
  cluster = new PostgresCluster({
    dataDir: join(dir, 'pg'),
    logFile: join(dir, 'postgres.log'),
    port,
    readyTimeoutMs: 30_000,
  });
  databaseUrl = (await cluster.start()).databaseUrl;
}

before(async () => {
  port = await freePort();
  await startCluster();
  kafka = createKafka({ brokers: stack.kafkaBrokers.split(','), clientId: 'pg-restart', logger });
});

after(async () => {
  await withDeadline(cluster.stop(), 30_000, 'stopping the test PostgreSQL').catch(() =>
    cluster.kill(),
  );
  await rm(dir, { recursive: true, force: true });
});

interface WindowFigures {
  window_start: string;
  unique_users: number;
  page_view_count: number;
  event_count: number;
}

/** The truth: what the broker acknowledged, per window. */
class Oracle {
  private readonly windows = new Map<
    number,
    { users: Set<string>; views: number; events: number }
  >();
  total = 0;

  add(event: { user_id: string; activity_type: string; timestamp: number }): void {
    const start = windowStartOf(event.timestamp, WINDOW_SEC * 1000);
    const w = this.windows.get(start) ?? { users: new Set(), views: 0, events: 0 };
    this.windows.set(start, w);
    w.users.add(event.user_id);
    w.events++;
    if (event.activity_type === PAGE_VIEW) w.views++;
    this.total++;
  }

  figures(): WindowFigures[] {
    return [...this.windows]
      .sort(([a], [b]) => a - b)
      .map(([start, w]) => ({
        window_start: new Date(start).toISOString(),
        unique_users: w.users.size,
        page_view_count: w.views,
        event_count: w.events,
      }));
  }
}

/** Produces a few events every `intervalMs` until stopped; only acknowledged ones reach the oracle. */
function produceContinuously(topic: string, oracle: Oracle, intervalMs = 25) {
  const producer = kafka.producer({ kafkaJS: { idempotent: true, acks: -1 }, 'linger.ms': 2 });
  let running = true;
  const failures: unknown[] = [];
  let sequence = 0;
  const loop = (async () => {
    await producer.connect();
    while (running) {
      const events = Array.from({ length: 4 }, () => {
        sequence++;
        return {
          user_id: `user-${(sequence * 7919) % 97}`,
          activity_type: sequence % 3 === 0 ? PAGE_VIEW : 'click',
          timestamp: Date.now(),
        };
      });
      try {
        await producer.send({
          topic,
          messages: events.map((event) => ({
            key: event.user_id,
            value: JSON.stringify(event),
          })),
        });
        for (const event of events) oracle.add(event);
      } catch (err) {
        failures.push(err);
      }
      await sleep(intervalMs);
    }
  })();
  let stopping: Promise<void> | undefined;
  return {
    failures,
    stop(): Promise<void> {
      running = false;
      stopping ??= (async () => {
        await withDeadline(loop, 15_000, 'the producer loop');
        await withDeadline(producer.disconnect(), 10_000, 'disconnecting the producer');
      })();
      return stopping;
    },
  };
}

/**
 * Creates a topic and waits until the broker serves its metadata. Not `ensureTopic`: right after
 * creating a topic it sometimes fails with ERR_UNKNOWN_TOPIC_OR_PART (metadata not yet
 * propagated), which would fail this test for a reason that has nothing to do with PostgreSQL.
 * The dead-letter topic is created here too, so that the aggregator finds it existing.
 */
async function createTopic(topic: string, partitions: number): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: partitions }], timeout: 10_000 });
    await waitFor(
      () =>
        admin.fetchTopicMetadata({ topics: [topic], timeout: 2_000 }).then(
          ([metadata]) => (metadata?.partitions.length === partitions ? true : undefined),
          () => undefined,
        ),
      { timeoutMs: 15_000, what: `metadata of topic ${topic}` },
    );
  } finally {
    await admin.disconnect();
  }
}

/** Polls /readyz and keeps every status change with the time it was seen. */
function watchReadiness(aggregatorPort: number) {
  const changes: Array<{ atMs: number; status: number }> = [];
  let current = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      let status: number;
      try {
        const response = await fetch(`http://127.0.0.1:${aggregatorPort}/readyz`, {
          signal: AbortSignal.timeout(1_000),
        });
        status = response.status;
        await response.arrayBuffer();
      } catch {
        status = -1;
      }
      if (status !== current) {
        current = status;
        changes.push({ atMs: Date.now(), status });
      }
      await sleep(100);
    }
  })();
  return {
    get status(): number {
      return current;
    },
    changes,
    async stop(): Promise<void> {
      running = false;
      await loop;
    },
  };
}

/** A metric of the aggregator; throws when it does not answer. */
async function metric(aggregatorPort: number, name: string): Promise<number> {
  const value = await scrapeMetric(aggregatorPort, name);
  if (value === undefined) throw new Error(`the aggregator's /metrics did not answer (${name})`);
  return value;
}

async function viewFigures(schema: string): Promise<WindowFigures[]> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 2_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    const result = await client.query(
      `SELECT window_start, unique_users::int, page_view_count::int, event_count::int
         FROM ${schema}.user_activity_window_totals ORDER BY window_start`,
    );
    return result.rows.map((row) => ({ ...row, window_start: row.window_start.toISOString() }));
  } finally {
    await client.end().catch(() => {});
  }
}

/** Sessions of the activity database other than the asking one, by state. */
async function sessions(): Promise<
  Array<{ pid: number; state: string; app: string; query: string }>
> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 2_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    const result = await client.query(
      `SELECT pid, coalesce(state, '') AS state, application_name AS app, left(query, 120) AS query
         FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
    );
    return result.rows;
  } finally {
    await client.end().catch(() => {});
  }
}

interface Scenario {
  how: 'fast' | 'immediate';
  /** Checked when set: /readyz must turn 503 during the outage. */
  expectNotReady: boolean;
  /** The outage lasts at least this long. */
  minOutageMs: number;
  /** Shorter than the default when set, to make windows close during the outage. */
  allowedLatenessSec?: number;
  batchSize: number;
}

async function outageScenario(t: TestContext, scenario: Scenario): Promise<void> {
  const { how } = scenario;
  const topic = uniqueName(`pgrestart_${how}`);
  const schema = uniqueName('pgrestart');
  await createTopic(topic, 3);
  await createTopic(`${topic}.dlq`, 1);
  const env = {
    KAFKA_BROKERS: stack.kafkaBrokers,
    DATABASE_URL: databaseUrl,
    DATABASE_SCHEMA: schema,
    TOPIC: topic,
    CONSUMER_GROUP: `${topic}-group`,
    AGGREGATOR_HOST: '127.0.0.1',
    AGGREGATOR_PORT: String(await freeTcpPort()),
    // Short windows so that the run spans several. Events are produced in event-time order, so
    // the watermark never makes one late: every acknowledged event must be counted.
    WINDOW_SEC: String(WINDOW_SEC),
    ...(scenario.allowedLatenessSec === undefined
      ? {}
      : { ALLOWED_LATENESS_SEC: String(scenario.allowedLatenessSec) }),
    BATCH_SIZE: String(scenario.batchSize),
    FLUSH_INTERVAL_SEC: '0.2',
    DATABASE_QUERY_TIMEOUT_SEC: '2',
    WORKERS: '1',
    SHUTDOWN_GRACE_SEC: '15',
  };
  const aggregator: AggregatorService = await startAggregator(
    readAggregatorConfig(env),
    logger.child({ service: 'aggregator' }),
  );
  const oracle = new Oracle();
  const producer = produceContinuously(topic, oracle);
  const readiness = watchReadiness(aggregator.port);
  const problems: string[] = [];
  const timeline: string[] = [];
  const t0 = Date.now();
  const mark = (what: string): void => {
    timeline.push(`${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);
  };

  try {
    // Steady state: ready, and figures reaching PostgreSQL.
    await waitFor(
      async () =>
        readiness.status === 200 &&
        (await viewFigures(schema).catch(() => [])).some((row) => row.event_count > 0)
          ? true
          : undefined,
      { timeoutMs: 30_000, what: 'the aggregator ready and writing' },
    );
    mark('ready and writing');
    await sleep(1_000);

    mark(`stopping PostgreSQL (${how})`);
    const stoppedAt = Date.now();
    if (how === 'fast') await cluster.stop();
    else await cluster.kill();
    mark('PostgreSQL stopped');

    if (scenario.expectNotReady) {
      const notReady = await waitFor(async () => (readiness.status === 503 ? true : undefined), {
        timeoutMs: NOT_READY_WITHIN_MS,
        what: '/readyz 503',
      }).catch(() => false);
      if (notReady) {
        mark('/readyz 503');
      } else {
        problems.push(
          `/readyz stayed ${readiness.status} for ${NOT_READY_WITHIN_MS / 1000} s while PostgreSQL was down`,
        );
      }
    }
    // Keep the outage going while events keep arriving.
    await sleep(Math.max(0, scenario.minOutageMs - (Date.now() - stoppedAt)));

    mark('restarting PostgreSQL');
    await startCluster();
    const restartedAt = Date.now();
    mark('PostgreSQL accepting connections');

    const readyAgain = await waitFor(async () => (readiness.status === 200 ? true : undefined), {
      timeoutMs: READY_AGAIN_WITHIN_MS,
      what: '/readyz 200 again',
    }).catch(() => false);
    if (readyAgain) {
      mark(`/readyz 200 again, ${((Date.now() - restartedAt) / 1000).toFixed(1)} s after restart`);
    } else {
      problems.push(
        `/readyz was ${readiness.status}, not 200, ${READY_AGAIN_WITHIN_MS / 1000} s after PostgreSQL came back`,
      );
    }

    // A little more traffic after the recovery, then stop and let everything be counted.
    await sleep(1_000);
    await producer.stop();
    mark(`producer stopped: ${oracle.total} events acknowledged`);
    assert.deepEqual(producer.failures, [], 'every send was acknowledged by the broker');

    // Everything consumed (the aggregator's own counter), then a few flush intervals to write it.
    const consumed = await waitFor(
      async () => {
        const n = await metric(aggregator.port, 'aggregator_records_consumed_total');
        return n >= oracle.total ? n : undefined;
      },
      { timeoutMs: 30_000, what: 'every event consumed' },
    ).catch(() => -1);
    // Then until the view holds every event the aggregator did not declare late. The connect
    // backoff (up to 10 s between attempts) can delay the first write after the restart.
    let seen: WindowFigures[] = [];
    let late = 0;
    const eventsSeen = (): number => seen.reduce((sum, row) => sum + row.event_count, 0);
    await waitFor(
      async () => {
        seen = await viewFigures(schema).catch(() => seen);
        late = await metric(aggregator.port, 'aggregator_records_late_total').catch(() => late);
        return eventsSeen() + late >= oracle.total ? true : undefined;
      },
      { timeoutMs: consumed < 0 ? 1_000 : 20_000, what: 'every event counted' },
    ).catch(() => false);
    mark(`consumed ${consumed}, view holds ${eventsSeen()} events, ${late} late`);
    // A few more flush intervals: a count that overshoots would show up now.
    await sleep(1_000);
    seen = await viewFigures(schema);
    const expected = oracle.figures();
    if (JSON.stringify(seen) !== JSON.stringify(expected)) {
      const diff = expected
        .map((want) => ({ want, got: seen.find((row) => row.window_start === want.window_start) }))
        .filter(({ want, got }) => JSON.stringify(want) !== JSON.stringify(got));
      problems.push(
        `view differs from the oracle in ${diff.length} of ${expected.length} windows: ${JSON.stringify(diff.slice(0, 5))}`,
      );
    }

    const stuck = (await sessions()).filter((s) => s.state.startsWith('idle in transaction'));
    if (stuck.length > 0) problems.push(`sessions idle in transaction: ${JSON.stringify(stuck)}`);
    const own = (await sessions()).filter((s) => s.app === 'aggregator');
    if (own.length > 1) {
      problems.push(`the aggregator holds ${own.length} connections: ${JSON.stringify(own)}`);
    }
  } finally {
    await producer.stop().catch(() => {});
    await readiness.stop();
    // What the aggregator says about its flushes and retries: the first thing to read on failure.
    const metrics = await fetch(`http://127.0.0.1:${aggregator.port}/metrics`)
      .then((response) => response.text())
      .catch(() => '');
    t.diagnostic(
      metrics
        .split('\n')
        .filter((line) =>
          /^aggregator_(flushes_total|database_retries_total|consumption_paused|records_late_total|records_redelivered_total|open_windows) /.test(
            line.replace(/\{.*\}/, ''),
          ),
        )
        .join(', '),
    );
    const closed = await withDeadline(aggregator.close(), 20_000, 'closing the aggregator').then(
      () => true,
      (err: unknown) => {
        problems.push(`aggregator close: ${(err as Error).message}`);
        return false;
      },
    );
    if (closed) {
      const stuck = (await sessions().catch(() => [])).filter((s) =>
        s.state.startsWith('idle in transaction'),
      );
      if (stuck.length > 0) {
        problems.push(`sessions idle in transaction after close: ${JSON.stringify(stuck)}`);
      }
    }
    const admin = createKafka({
      brokers: stack.kafkaBrokers.split(','),
      clientId: 'cleanup',
      logger,
    }).admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic, `${topic}.dlq`] }).catch(() => {});
    await admin.disconnect();
    t.diagnostic(timeline.join(' | '));
    t.diagnostic(
      `readiness: ${readiness.changes.map((c) => `${((c.atMs - t0) / 1000).toFixed(1)} s ${c.status}`).join(', ')}`,
    );
  }
  assert.deepEqual(problems, []);
}

test('PostgreSQL fast shutdown and restart: not ready while down, ready after, view exact', {
  timeout: 90_000,
}, async (t) => {
  await outageScenario(t, {
    how: 'fast',
    expectNotReady: true,
    minOutageMs: 3_000,
    batchSize: 20_000,
  });
});

test('PostgreSQL immediate shutdown (crash) and restart: not ready while down, ready after, view exact', {
  timeout: 90_000,
}, async (t) => {
  await outageScenario(t, {
    how: 'immediate',
    expectNotReady: true,
    minOutageMs: 3_000,
    batchSize: 20_000,
  });
});

test('a consumer stalled by the outage is not an idle partition: no window closes under its backlog', {
  timeout: 90_000,
}, async (t) => {
  // Short lateness (the idle rule then applies after 5 s) and a small BATCH_SIZE, so that the
  // consumer stops taking records soon after PostgreSQL goes away (it waits for the flush). The
  // records keep arriving in the topic meanwhile: the partitions are busy, not idle.
  await outageScenario(t, {
    how: 'fast',
    expectNotReady: false,
    minOutageMs: 10_000,
    allowedLatenessSec: 1,
    batchSize: 50,
  });
});
