/**
 * One scenario's pipeline on the chaos stack: its own topic, consumer group and schema, ingest
 * and the aggregators as child processes (so that they can be killed and frozen for real), a
 * steady load recorded in an `OutcomeLedger`, and the probes the table reports: the lag (every
 * event acknowledged more than 5 s ago visible in the view), the peak memory of the services,
 * and the verdict once the run has settled.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { REPLACEMENT_REASONS, type ReplacementReason } from '../aggregator/consumer-watchdog.js';
import { readWindowTotals, type WindowTotals } from '../e2e/activity-oracle.js';
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import { IngestProcess } from '../e2e/ingest-process.js';
import { OutcomeLedger, type Verdict } from '../e2e/outcome-ledger.js';
import type { ServiceProcess } from '../e2e/service-process.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { PRODUCER_REPLACED_LINE } from '../ingest/producer-watchdog.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { freeTcpPort } from '../shared/testing.js';
import type { ChaosStack } from './chaos-stack.js';
import { LoadGenerator, type LoadOptions } from './load-generator.js';

export const WINDOW_SEC = 10;
export const PARTITIONS = 6;
export const SESSION_TIMEOUT_SEC = 6;
/** What an aggregator logs when its watchdog replaces the Kafka consumer, by what it saw. */
const CONSUMER_REPLACED_LINES: Record<ReplacementReason, string> = {
  stalled: 'the consumer delivered nothing while records waited',
  unread: 'the consumer holds no partitions while records wait unread',
};
/** "Recovered": every event acknowledged more than this long ago is in the view. */
export const LAG_TARGET_MS = 5_000;

export interface PipelineOptions {
  /** Extra aggregator environment (every instance). */
  aggregatorEnv?: Record<string, string>;
  /** Extra ingest environment. */
  ingestEnv?: Record<string, string>;
  /** Load shape; defaults: 300 events/s in batches of 20 over 2,000 users. */
  load?: Partial<Pick<LoadOptions, 'eventsPerSecond' | 'batchSize' | 'users' | 'timestamp'>>;
}

export class ChaosPipeline {
  readonly ledger = new OutcomeLedger(WINDOW_SEC * 1000);
  readonly aggregators: AggregatorProcess[] = [];
  ingest!: IngestProcess;
  load!: LoadGenerator;
  resources!: TestResources;
  private pool!: pg.Pool;
  private sampler: NodeJS.Timeout | undefined;
  /** Peak resident memory seen, by service name, in bytes. */
  readonly peakRss = new Map<string, number>();
  /** Kafka consumers the aggregators' watchdogs replaced, by reason (their log lines, counted). */
  readonly consumerReplacements: Record<ReplacementReason, number> = { stalled: 0, unread: 0 };
  /** Kafka producers ingest's watchdog replaced (its log lines, counted). */
  producerReplacements = 0;
  /**
   * Partitions ingest's producer was told have no leader (librdkafka's warning, counted): the
   * trigger of librdkafka #5430, which may or may not leave them leaderless for good.
   */
  leaderlessUpdates = 0;
  /** Problems seen while the run was going (not only at the end). */
  readonly problems: string[] = [];
  private lastView: WindowTotals[] = [];
  private worstOvershoot = 0;
  /** Every line of every service, in `<stack dir>/<scenario>.<ingest|aggregator-n>.log`. */
  private readonly logs: WriteStream[] = [];

  constructor(
    readonly stack: ChaosStack,
    readonly name: string,
    readonly seed: number,
    private readonly options: PipelineOptions,
    private readonly logger: Logger,
  ) {}

  /** Creates the topic and schema, starts ingest and `aggregators` aggregators (not the load). */
  async start(aggregators: number): Promise<void> {
    this.resources = await createTestResources(
      `chaos_${this.name.replace(/-/g, '_')}`,
      this.stack,
      this.logger,
    );
    // The test connection dies with every PostgreSQL crash of the pg scenarios: never fatal.
    this.resources.db.on('error', () => {});
    await this.resources.createTopic(PARTITIONS);
    this.pool = new pg.Pool({
      connectionString: this.stack.databaseUrl,
      max: 2,
      connectionTimeoutMillis: 2_000,
      query_timeout: 3_000,
    });
    this.pool.on('error', () => {});
    this.ingest = new IngestProcess({
      KAFKA_BROKERS: this.stack.kafkaBrokers,
      TOPIC: this.resources.topic,
      TOPIC_PARTITIONS: String(PARTITIONS),
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: String(await freeTcpPort()),
      ACK_TIMEOUT_SEC: '5',
      REQUEST_TIMEOUT_SEC: '8',
      SHUTDOWN_GRACE_SEC: '10',
      LOG_LEVEL: 'info',
      ...this.options.ingestEnv,
    });
    this.keepLog(this.ingest, 'ingest');
    this.ingest.onOutput((line) => {
      if (line.includes(PRODUCER_REPLACED_LINE)) this.producerReplacements++;
      if (line.includes('METADATAUPDATE') && line.includes('not found in cache')) {
        this.leaderlessUpdates++;
      }
    });
    this.ingest.start();
    await this.ingest.waitReady(30_000);
    for (let i = 0; i < aggregators; i++) await this.addAggregator();
    await Promise.all(this.aggregators.map((a) => a.waitReady(30_000)));
    this.load = new LoadGenerator({
      port: this.ingest.port,
      ledger: this.ledger,
      seed: this.seed,
      eventsPerSecond: this.options.load?.eventsPerSecond ?? 300,
      batchSize: this.options.load?.batchSize ?? 20,
      users: this.options.load?.users ?? 2_000,
      requestTimeoutMs: 12_000,
      // An outage holds each request up to ACK_TIMEOUT_SEC: room for all of them at this rate.
      maxInFlight: 256,
      ...(this.options.load?.timestamp === undefined
        ? {}
        : { timestamp: this.options.load.timestamp }),
    });
    this.sampler = setInterval(() => this.sample(), 1_000);
  }

  /** A new aggregator in the group, started unless `start` is false. */
  async addAggregator(start = true): Promise<AggregatorProcess> {
    const aggregator = new AggregatorProcess({
      ...this.resources.env,
      AGGREGATOR_HOST: '127.0.0.1',
      AGGREGATOR_PORT: String(await freeTcpPort()),
      WINDOW_SEC: String(WINDOW_SEC),
      FLUSH_INTERVAL_SEC: '0.5',
      BATCH_SIZE: '2000',
      WORKERS: '1',
      SESSION_TIMEOUT_SEC: String(SESSION_TIMEOUT_SEC),
      SHUTDOWN_GRACE_SEC: '10',
      DATABASE_QUERY_TIMEOUT_SEC: '3',
      LOG_LEVEL: 'info',
      ...this.options.aggregatorEnv,
    });
    this.keepLog(aggregator, `aggregator-${this.aggregators.length + 1}`);
    aggregator.onOutput((line) => {
      for (const reason of REPLACEMENT_REASONS) {
        if (line.includes(CONSUMER_REPLACED_LINES[reason])) this.consumerReplacements[reason]++;
      }
    });
    if (start) aggregator.start();
    this.aggregators.push(aggregator);
    return aggregator;
  }

  /** The view, or undefined while PostgreSQL does not answer. */
  async readView(): Promise<WindowTotals[] | undefined> {
    let client: pg.PoolClient | undefined;
    try {
      client = await this.pool.connect();
      const view = await readWindowTotals(client, this.resources.schema);
      client.release();
      this.lastView = view;
      // The upper bound holds at every moment (pending events count as "may be stored").
      const verdict = this.ledger.judge(view);
      if (verdict.doubleCounted > this.worstOvershoot) {
        this.worstOvershoot = verdict.doubleCounted;
        this.problems.push(`over the bound while running: ${verdict.problems.join('; ')}`);
      }
      return view;
    } catch {
      client?.release(true);
      return undefined;
    }
  }

  /**
   * Waits until ingest acknowledges an event sent after `clearedAt` (an answer to a request held
   * through the fault is not enough) and the view holds every event acknowledged before
   * `clearedAt` and every one acknowledged more than LAG_TARGET_MS ago (the lag is back under
   * 5 s, past the fault); returns how long after `clearedAt` that was, or undefined after
   * `timeoutMs`.
   */
  async waitRecovered(clearedAt: number, timeoutMs = 90_000): Promise<number | undefined> {
    const deadline = clearedAt + timeoutMs;
    while (Date.now() < deadline) {
      const probedAt = Date.now();
      const view = await this.readView();
      if (view !== undefined) {
        const counted = view.reduce((sum, row) => sum + row.event_count, 0);
        if (
          this.ledger.newestAcknowledgedSentAt >= clearedAt &&
          counted >= this.ledger.acknowledgedBefore(Math.max(clearedAt, probedAt - LAG_TARGET_MS))
        ) {
          return Math.max(0, probedAt - clearedAt);
        }
      }
      await sleep(250);
    }
    return undefined;
  }

  /**
   * Stops the load and waits until the view holds every acknowledged event (or `timeoutMs`
   * passes), then a few more flush intervals, so that a late overshoot shows; judges the view.
   */
  async settle(timeoutMs = 90_000): Promise<Verdict> {
    await this.load.stop();
    const deadline = Date.now() + timeoutMs;
    let verdict = this.ledger.judge(this.lastView);
    while (Date.now() < deadline) {
      const view = await this.readView();
      if (view !== undefined) {
        verdict = this.ledger.judge(view);
        if (verdict.lost === 0 && verdict.doubleCounted === 0) break;
      }
      await sleep(500);
    }
    await sleep(3_000);
    const view = await this.readView();
    return this.ledger.judge(view ?? this.lastView);
  }

  /**
   * The hour and day figures against the stored membership of their windows (which `settle`
   * judged against the ledger): every every-type hour and day row whose windows have all closed
   * must hold exactly its windows' distinct users and events. Waits up to `timeoutMs` for the
   * windows to close after the load stopped. Returns the periods checked and the mismatches.
   */
  async checkRollups(timeoutMs = 45_000): Promise<{ checked: number; problems: string[] }> {
    const schema = this.resources.schema;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const open = await this.pool
        .query<{ n: string }>(
          `SELECT count(*) AS n FROM ${schema}.user_activity_metrics WHERE NOT membership_stored`,
        )
        .catch(() => undefined);
      if (open !== undefined && Number(open.rows[0]?.n) === 0) break;
      await sleep(1000);
    }
    const result = await this.pool.query<{
      period: string;
      start: Date;
      part: number;
      unique_users: string;
      event_count: string;
      users: string;
      events: string;
    }>(
      `SELECT p.period, p.period_start AS start, p.source_partition AS part, p.unique_users,
              p.event_count, w.users, w.events
         FROM ${schema}.period_metrics p
        CROSS JOIN LATERAL (
              SELECT count(DISTINCT e.user_id) AS users, count(*) AS events
                FROM ${schema}.window_events e
               WHERE e.source_partition = p.source_partition AND e.site = p.site
                 AND e.window_start >= p.period_start AND e.window_start < p.period_end) w
        WHERE p.activity_type = ''
          AND NOT EXISTS (
              SELECT 1 FROM ${schema}.user_activity_metrics m
               WHERE m.source_partition = p.source_partition AND m.site = p.site
                 AND m."timestamp" >= p.period_start AND m."timestamp" < p.period_end
                 AND NOT m.membership_stored)`,
    );
    const problems = result.rows
      .filter((row) => row.unique_users !== row.users || row.event_count !== row.events)
      .map(
        (row) =>
          `${row.period} ${row.start.toISOString()} partition ${row.part}: ${row.unique_users} users and ${row.event_count} events, its windows hold ${row.users} and ${row.events}`,
      );
    return { checked: result.rows.length, problems };
  }

  /** Sessions left idle inside a transaction for more than 5 s (a leak: nothing is flushing). */
  async idleInTransaction(): Promise<string[]> {
    const result = await this.pool.query<{ pid: number; app: string; age: string }>(
      `SELECT pid, application_name AS app, (now() - state_change)::text AS age
         FROM pg_stat_activity
        WHERE state LIKE 'idle in transaction%' AND now() - state_change > interval '5 seconds'`,
    );
    return result.rows.map((row) => `pid ${row.pid} (${row.app}) for ${row.age}`);
  }

  /** A query on the pipeline's own connections (not the aggregators'). */
  async query(text: string, values: unknown[] = []): Promise<void> {
    await this.pool.query(text, values);
  }

  /** Backends of the aggregators, with what they run. */
  async aggregatorBackends(): Promise<Array<{ pid: number; state: string; query: string }>> {
    const result = await this.pool.query<{ pid: number; state: string; query: string }>(
      `SELECT pid, coalesce(state, '') AS state, left(query, 80) AS query
         FROM pg_stat_activity WHERE application_name = 'aggregator' AND datname = current_database()`,
    );
    return result.rows;
  }

  /** Stops everything this pipeline started and removes its topic and schema. */
  async close(): Promise<void> {
    if (this.sampler !== undefined) clearInterval(this.sampler);
    await this.load?.stop().catch(() => {});
    await Promise.allSettled([
      ...this.aggregators.map(async (a) => {
        a.freeze(false);
        await a.signal('SIGTERM', 15_000).catch(() => a.signal('SIGKILL'));
      }),
      this.ingest?.signal('SIGTERM', 15_000).catch(() => this.ingest.signal('SIGKILL')),
    ]);
    await withDeadline(this.pool?.end() ?? Promise.resolve(), 5_000, 'closing the pool').catch(
      () => {},
    );
    await this.resources?.cleanup().catch(() => {});
    for (const log of this.logs) log.end();
  }

  /** Writes every line `service` prints, across its restarts, to a file beside the stack's data. */
  private keepLog(service: ServiceProcess, label: string): void {
    const log = createWriteStream(join(this.stack.dir, `${this.name}.${label}.log`));
    this.logs.push(log);
    service.onOutput((line) => log.write(`${line}\n`));
  }

  /** The last output of every service, for a failure report. */
  tails(): string {
    return [this.ingest, ...this.aggregators].map((s) => s?.tail() ?? '').join('');
  }

  private sample(): void {
    const services: Array<[string, number | undefined]> = [
      ['ingest', this.ingest.rssBytes()],
      ...this.aggregators.map((a): [string, number | undefined] => ['aggregator', a.rssBytes()]),
    ];
    for (const [name, rss] of services) {
      if (rss !== undefined) this.peakRss.set(name, Math.max(this.peakRss.get(name) ?? 0, rss));
    }
  }
}
