import { HealthServer } from '../shared/health-server.js';
import { createKafka, ensureTopic } from '../shared/kafka-client.js';
import { type Service, StateHolder, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { createServiceRegistry } from '../shared/service-metrics.js';
import { ActivityConsumer } from './activity-consumer.js';
import { Aggregation } from './aggregation.js';
import type { AggregatorConfig } from './config.js';
import { lookIntervalMs } from './consumer-watchdog.js';
import type { PauseBeforeCommit } from './copy-writer.js';
import { Database } from './database.js';
import { DeadLetterProducer } from './dead-letter.js';
import { createAggregatorMetrics } from './metrics.js';
import { migrate } from './migrations.js';
import { PeriodUserCache } from './period-users.js';
import { RetentionJob } from './retention.js';
import { WorkerPool } from './worker-pool.js';

export interface AggregatorService extends Service {
  /** Port of /healthz, /readyz and /metrics. */
  readonly port: number;
  /** The consumer, for tests that force its faults. */
  readonly consumer: ActivityConsumer;
}

/**
 * Wires the aggregator: health server first (so liveness answers while starting), database
 * (migrated), worker pool, dead-letter producer, aggregation, consumer.
 */
export async function startAggregator(
  config: AggregatorConfig,
  logger: Logger,
): Promise<AggregatorService> {
  const state = new StateHolder();
  const registry = createServiceRegistry('aggregator', state);
  const metrics = createAggregatorMetrics(registry);
  metrics.heldUsersLimit.set(config.maxHeldUserIds);

  const db = new Database({
    url: config.databaseUrl,
    schema: config.databaseSchema,
    queryTimeoutMs: config.databaseQueryTimeoutMs,
    onRetry: (operation) => metrics.databaseRetries.inc({ operation }),
    logger: logger.child({ component: 'database' }),
  });
  const kafka = createKafka({ brokers: config.kafkaBrokers, clientId: 'aggregator', logger });
  const pool = new WorkerPool(config.workers);
  const deadLetters = new DeadLetterProducer(
    kafka,
    config.topic,
    config.deadLetterTopic,
    logger.child({ component: 'dead-letter' }),
  );
  // Retention deletes and drops on a connection of its own, beside the flushes'.
  const retentionDb = new Database({
    url: config.databaseUrl,
    schema: config.databaseSchema,
    queryTimeoutMs: RETENTION_QUERY_TIMEOUT_MS,
    onRetry: (operation) => metrics.databaseRetries.inc({ operation }),
    logger: logger.child({ component: 'retention' }),
  });
  const retention = new RetentionJob(
    retentionDb,
    {
      maxEventAgeMs: config.maxEventAgeMs,
      minuteRowsMs: config.minuteRowsRetentionMs,
      hourRowsMs: config.hourRowsRetentionMs,
      dayRowsMs: config.dayRowsRetentionMs,
    },
    {
      ran: (outcome) => {
        metrics.retentionRuns.inc({ result: outcome === undefined ? 'skipped' : 'ok' });
        if (outcome === undefined) return;
        metrics.retentionRowsDeleted.inc(outcome.rowsDeleted);
        metrics.retentionPartitionsDropped.inc(outcome.partitionsDropped);
        metrics.retentionLastSuccess.set(Date.now() / 1000);
        logger.info({ component: 'retention', ...outcome }, 'retention run done');
      },
      failed: (err) => {
        metrics.retentionRuns.inc({ result: 'error' });
        logger.error(
          { component: 'retention', err },
          'retention run failed; trying again next hour',
        );
      },
    },
  );
  let consumer: ActivityConsumer | undefined;
  const health = new HealthServer({
    host: config.host,
    port: config.port,
    registry,
    state,
    isReady: () => state.state === 'running' && (consumer?.healthy ?? false),
  });
  await health.start();

  try {
    const applied = await db.use((client) => migrate(client, config.databaseSchema));
    logger.info({ schema: config.databaseSchema, applied }, 'database schema ready');
    await retention.start();
    const dlq = await ensureTopic(kafka, config.deadLetterTopic, 1);
    logger.info({ topic: config.deadLetterTopic, created: dlq.created }, 'dead-letter topic ready');
    await deadLetters.start();
    const aggregation = new Aggregation(
      db,
      pool,
      deadLetters,
      {
        windowMs: config.windowMs,
        allowedLatenessMs: config.allowedLatenessMs,
        maxAgeMs: config.maxEventAgeMs,
        idleAfterMs: Math.max(5000, config.allowedLatenessMs),
        // Two looks of the watchdog, and a second for the query itself.
        endOffsetsFreshMs: 2 * lookIntervalMs(config.consumerStallTimeoutMs) + 1000,
        rollups: config.rollups
          ? {
              maxActivityTypes: config.maxActivityTypes,
              periodUsers: new PeriodUserCache(config.maxHeldPeriodUsers),
            }
          : null,
        ...pauseBeforeCommit(config, logger),
      },
      metrics,
    );
    consumer = new ActivityConsumer(
      kafka,
      aggregation,
      db,
      {
        brokers: config.kafkaBrokers,
        topic: config.topic,
        consumerGroup: config.consumerGroup,
        sessionTimeoutMs: config.sessionTimeoutMs,
        windowSeconds: config.windowMs / 1000,
        flushIntervalMs: config.flushIntervalMs,
        batchSize: config.batchSize,
        concurrency: config.workers,
        maxHeldUserIds: config.maxHeldUserIds,
        offsetReset: config.offsetReset,
        stallTimeoutMs: config.consumerStallTimeoutMs,
      },
      metrics,
      logger.child({ component: 'consumer' }),
    );
    await consumer.start();
  } catch (err) {
    state.set('failed');
    await Promise.allSettled([
      health.close(),
      db.close(),
      pool.close(),
      deadLetters.close(),
      retention.close().then(() => retentionDb.close()),
    ]);
    throw err;
  }
  state.set('running');
  logger.info(
    {
      port: health.port,
      topic: config.topic,
      group: config.consumerGroup,
      workers: config.workers,
    },
    'aggregator running',
  );

  const running = consumer;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    // Stop consuming, drain the workers, final flush and commit, then close connections.
    closing ??= (async () => {
      state.set('draining');
      await withDeadline(running.close(), config.shutdownGraceMs, 'final flush');
      await Promise.allSettled([pool.close(), deadLetters.close(), retention.close()]);
      await Promise.allSettled([db.close(), retentionDb.close()]);
      await health.close();
      state.set('stopped');
    })();
    return closing;
  };
  return { state, close, port: health.port, consumer: running };
}

/** A retention statement deletes one batch or drops one table: minutes would mean a fault. */
const RETENTION_QUERY_TIMEOUT_MS = 120_000;

/** The test-only pause of `CHAOS_PAUSE_BEFORE_COMMIT_MS`, with the log line chaos waits for. */
function pauseBeforeCommit(
  config: AggregatorConfig,
  logger: Logger,
): { pauseBeforeCommit?: PauseBeforeCommit } {
  const ms = config.chaosPauseBeforeCommitMs;
  if (ms <= 0) return {};
  const chaos = logger.child({ component: 'chaos' });
  return {
    pauseBeforeCommit: {
      ms,
      onPause: () => chaos.warn({ pauseMs: ms }, 'paused between COPY and COMMIT'),
    },
  };
}
