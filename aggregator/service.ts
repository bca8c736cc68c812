import pg from 'pg';
import { HealthServer } from '../shared/health-server.js';
import { createKafka } from '../shared/kafka-client.js';
import { type Service, StateHolder, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { createServiceRegistry } from '../shared/service-metrics.js';
import { ActivityConsumer } from './activity-consumer.js';
import { Aggregation } from './aggregation.js';
import type { AggregatorConfig } from './config.js';
import { createAggregatorMetrics } from './metrics.js';
import { migrate } from './migrations.js';

export interface AggregatorService extends Service {
  /** Port of /healthz, /readyz and /metrics. */
  readonly port: number;
}

/** Wires the aggregator: database (migrated), health server, aggregation, consumer. */
export async function startAggregator(
  config: AggregatorConfig,
  logger: Logger,
): Promise<AggregatorService> {
  const state = new StateHolder();
  const registry = createServiceRegistry('aggregator', state);
  const metrics = createAggregatorMetrics(registry);

  const db = new pg.Client({
    connectionString: config.databaseUrl,
    application_name: 'aggregator',
    options: `-c search_path=${config.databaseSchema}`,
  });
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
    await db.connect();
    const applied = await migrate(db, config.databaseSchema);
    logger.info({ schema: config.databaseSchema, applied }, 'database schema ready');
    const aggregation = new Aggregation(
      db,
      { windowMs: config.windowMs, allowedLatenessMs: config.allowedLatenessMs },
      metrics,
      logger.child({ component: 'aggregation' }),
    );
    const kafka = createKafka({ brokers: config.kafkaBrokers, clientId: 'aggregator', logger });
    consumer = new ActivityConsumer(
      kafka,
      aggregation,
      {
        topic: config.topic,
        consumerGroup: config.consumerGroup,
        flushIntervalMs: config.flushIntervalMs,
        batchSize: config.batchSize,
      },
      logger.child({ component: 'consumer' }),
    );
    await consumer.start();
  } catch (err) {
    state.set('failed');
    await health.close();
    await db.end().catch(() => {});
    throw err;
  }
  state.set('running');
  logger.info(
    { port: health.port, topic: config.topic, group: config.consumerGroup },
    'aggregator running',
  );

  const running = consumer;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      state.set('draining');
      await withDeadline(running.close(), config.shutdownGraceMs, 'final flush');
      await db.end();
      await health.close();
      state.set('stopped');
    })();
    return closing;
  };
  return { state, close, port: health.port };
}
