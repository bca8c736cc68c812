/**
 * A 60-second broker outage with a client that does what the API tells it to: on a 503 it waits
 * `Retry-After` and sends the same event again — same `event_id`, same `timestamp`. When the
 * broker is back, the resent events are minutes behind the partitions' watermarks, and some were
 * stored the first time although ingest could only answer "outcome unknown". Every event must
 * still be counted exactly once, in its own window: the view equals the oracle of the events
 * answered 2xx, and nothing is dead-lettered.
 *
 * Against a broker of its own (killed and restarted on the same port and data), a real ingest
 * and a real aggregator, both on their default settings; PostgreSQL is the test run's.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import pg from 'pg';
import { readAggregatorConfig } from '../aggregator/config.js';
import { type AggregatorService, startAggregator } from '../aggregator/service.js';
import { KafkaBroker } from '../deploy/local/kafka-broker.js';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { readIngestConfig } from '../ingest/config.js';
import { type IngestService, startIngest } from '../ingest/service.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, scrapeMetric, stackFromEnv, uniqueName } from '../shared/testing.js';
import { ActivityOracle, type ClientEvent, waitForOracle } from './activity-oracle.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const OUTAGE_MS = 60_000;
const WINDOW_MS = 60_000;
const runId = randomBytes(4).toString('hex');
const dataDir = join(REPO_ROOT, '.local', 'test', `resend-${runId}`);
const schema = uniqueName('resend');

let broker: KafkaBroker | undefined;
let starts = 0;
let ingest: IngestService | undefined;
let aggregator: AggregatorService | undefined;
const db = new pg.Client({ connectionString: stack.databaseUrl });

after(async () => {
  const results = await Promise.allSettled([
    withDeadline(ingest?.close() ?? Promise.resolve(), 15_000, 'closing ingest'),
    withDeadline(aggregator?.close() ?? Promise.resolve(), 15_000, 'closing the aggregator'),
  ]);
  await withDeadline(broker?.kill() ?? Promise.resolve(), 15_000, 'killing the broker');
  await rm(dataDir, { recursive: true, force: true });
  await db.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
  await db.end().catch(() => {});
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

async function startBroker(port: number, controllerPort: number): Promise<string> {
  starts++;
  broker = new KafkaBroker({
    dataDir,
    logFile: join(dataDir, `kafka-${starts}.log`),
    libsDir: join(REPO_ROOT, '.local', 'kafka', 'libs'),
    log4jConfig: join(REPO_ROOT, 'deploy', 'kafka', 'log4j2.yaml'),
    port,
    controllerPort,
    heap: '512m',
  });
  return (await broker.start()).brokers;
}

/** What the client knows of one event: sent until ingest answers 2xx. */
interface Pending {
  event: ClientEvent;
  attempts: number;
  /** When it may be sent again (Retry-After). */
  dueAt: number;
}

/**
 * A client that sends new events at a steady pace and resends every refused one after its
 * `Retry-After`, unchanged, until it is accepted; the oracle learns each event at its 2xx.
 */
class ResendingClient {
  readonly pending: Pending[] = [];
  readonly answers = new Map<string, number>();
  private sequence = 0;
  generating = true;

  constructor(
    private readonly port: number,
    private readonly oracle: ActivityOracle,
  ) {}

  async run(deadlineMs: number): Promise<void> {
    while (Date.now() < deadlineMs && (this.generating || this.pending.length > 0)) {
      if (this.generating) {
        for (let i = 0; i < 5; i++) {
          const n = this.sequence++;
          this.pending.push({
            event: {
              user_id: `user-${n % 150}`,
              activity_type: n % 3 === 0 ? 'page_view' : 'click',
              timestamp: Date.now(),
              event_id: `resend-${runId}-${n}`,
            },
            attempts: 0,
            dueAt: 0,
          });
        }
      }
      const now = Date.now();
      const due = this.pending.filter((p) => p.dueAt <= now).slice(0, 40);
      await Promise.all(due.map((p) => this.attempt(p)));
      await sleep(200);
    }
  }

  private async attempt(pending: Pending): Promise<void> {
    pending.attempts++;
    let status = 0;
    let retryAfterSec = 1;
    try {
      const response = await fetch(`http://127.0.0.1:${this.port}/activity`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(pending.event),
        signal: AbortSignal.timeout(30_000),
      });
      status = response.status;
      retryAfterSec = Number(response.headers.get('retry-after') ?? '1') || 1;
      await response.arrayBuffer();
    } catch {
      status = 0;
    }
    const key = String(status);
    this.answers.set(key, (this.answers.get(key) ?? 0) + 1);
    if (status >= 200 && status < 300) {
      this.oracle.add(pending.event);
      this.pending.splice(this.pending.indexOf(pending), 1);
    } else {
      pending.dueAt = Date.now() + retryAfterSec * 1000;
    }
  }
}

test('a 60 s broker outage with clients resending the same events: each counted once, in its own window', {
  timeout: 300_000,
}, async (t) => {
  const port = await freeTcpPort();
  let controllerPort = await freeTcpPort();
  while (controllerPort === port) controllerPort = await freeTcpPort();
  const brokers = await startBroker(port, controllerPort);
  await db.connect();
  const topic = uniqueName('resend');
  const env = {
    KAFKA_BROKERS: brokers,
    DATABASE_URL: stack.databaseUrl,
    DATABASE_SCHEMA: schema,
    TOPIC: topic,
    TOPIC_PARTITIONS: '3',
    CONSUMER_GROUP: `${topic}-group`,
    INGEST_HOST: '127.0.0.1',
    INGEST_PORT: String(await freeTcpPort()),
    AGGREGATOR_HOST: '127.0.0.1',
    AGGREGATOR_PORT: String(await freeTcpPort()),
  };
  ingest = await startIngest(readIngestConfig(env), logger.child({ service: 'ingest' }));
  aggregator = await startAggregator(
    readAggregatorConfig(env),
    logger.child({ service: 'aggregator' }),
  );

  const oracle = new ActivityOracle(WINDOW_MS);
  const client = new ResendingClient(ingest.port, oracle);
  const running = client.run(Date.now() + 240_000);
  await sleep(10_000);
  const acceptedBefore = oracle.events;
  await withDeadline(broker?.kill() ?? Promise.resolve(), 15_000, 'killing the broker');
  const killedAt = Date.now();
  await sleep(OUTAGE_MS);
  const backAt = Date.now();
  await startBroker(port, controllerPort);
  t.diagnostic(`broker down ${((backAt - killedAt) / 1000).toFixed(1)} s`);
  await sleep(10_000);
  client.generating = false;
  await running;
  assert.deepEqual(client.pending, [], 'every event was eventually accepted');
  const resent = [...client.answers].filter(([status]) => status !== '200');
  t.diagnostic(`answers ${JSON.stringify(Object.fromEntries(client.answers))}`);
  assert.ok(acceptedBefore > 100, `only ${acceptedBefore} events before the outage`);
  assert.ok(resent.length > 0, 'the outage refused something: the resends were exercised');

  const tookMs = await waitForOracle(db, schema, oracle, 90_000);
  t.diagnostic(
    `${oracle.events} events; view equal to the oracle ${tookMs} ms after the last answer`,
  );
  const port8081 = Number(env.AGGREGATOR_PORT);
  assert.equal(await scrapeMetric(port8081, 'aggregator_dead_lettered_total'), 0);
  t.diagnostic(
    `counted through closed windows: ${await scrapeMetric(port8081, 'aggregator_closed_window_records_total')}; duplicates skipped: ${await scrapeMetric(port8081, 'aggregator_records_duplicate_total')}`,
  );
});
