import { type Service, StateHolder, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { RateLimiter } from '../shared/rate-limiter.js';
import { createServiceRegistry } from '../shared/service-metrics.js';
import { Answers } from './answers.js';
import type { QueryConfig } from './config.js';
import { ConsumerLag } from './consumer-lag.js';
import { QueryDatabase } from './database.js';
import { QueryHttpServer } from './http-server.js';
import { createQueryMetrics, endpointLabel } from './metrics.js';
import { ReadKeys } from './read-keys.js';
import { createQueryHandler } from './request-handler.js';
import { ResultCache } from './result-cache.js';
import { StaticFiles } from './static-files.js';
import { WindowStream } from './window-stream.js';

export interface QueryService extends Service {
  /** The port the HTTP server listens on. */
  readonly port: number;
}

/** How often readiness asks PostgreSQL whether it answers. */
const PROBE_EVERY_MS = 5000;

/**
 * Wires the query service and starts it: the database pool and the LISTEN connection first (so
 * that the first request and the first stream can be answered), then the HTTP server.
 */
export async function startQuery(config: QueryConfig, logger: Logger): Promise<QueryService> {
  const state = new StateHolder();
  const registry = createServiceRegistry('query', state);
  const metrics = createQueryMetrics(registry);
  const database = new QueryDatabase({
    url: config.databaseUrl,
    schema: config.databaseSchema,
    poolSize: config.databasePoolSize,
    timeoutMs: config.queryTimeoutMs,
    logger: logger.child({ component: 'database' }),
  });
  const cache = new ResultCache<object>(config.cacheTtlMs, config.cacheMaxEntries, {
    hit: () => metrics.cacheHits.inc(),
    miss: () => metrics.cacheMisses.inc(),
  });
  const stream = new WindowStream({
    databaseUrl: config.databaseUrl,
    schema: config.databaseSchema,
    windowMs: config.windowMs,
    maxStreams: config.maxStreams,
    database,
    metrics,
    onFlush: () => cache.clear(),
    logger: logger.child({ component: 'stream' }),
  });
  const consumerLag =
    config.kafkaBrokers.length === 0
      ? undefined
      : new ConsumerLag({
          brokers: config.kafkaBrokers,
          topic: config.topic,
          windowSeconds: config.windowMs / 1000,
          database,
          logger: logger.child({ component: 'consumer-lag' }),
        });
  let databaseAnswers = false;
  const isReady = (): boolean => state.state === 'running' && databaseAnswers && stream.listening;
  const staticFiles = new StaticFiles();
  const http = new QueryHttpServer({
    host: config.host,
    port: config.port,
    logger: logger.child({ component: 'http' }),
    handler: createQueryHandler({
      database,
      answers: new Answers({
        windowMs: config.windowMs,
        settleMs: config.allowedLatenessMs + 2 * config.flushIntervalMs,
      }),
      cache,
      stream,
      consumerLag,
      keys: new ReadKeys(config.apiKeys),
      rateLimiter: new RateLimiter(config.rateLimitPerSec, config.rateLimitBurst),
      staticFiles,
      defaultSiteTimeZone: config.defaultSiteTimeZone,
      windowMs: config.windowMs,
      state,
      isReady,
      registry,
      metrics,
      logger: logger.child({ component: 'requests' }),
    }),
    onResponse: (path, status, seconds) => {
      const endpoint = endpointLabel(path);
      metrics.requests.inc({ endpoint, status });
      metrics.duration.observe({ endpoint }, seconds);
    },
  });

  const probe = async (): Promise<void> => {
    try {
      await database.use((db) => db.query('SELECT 1'));
      databaseAnswers = true;
    } catch (err) {
      if (databaseAnswers) logger.warn({ err }, 'PostgreSQL does not answer: not ready');
      databaseAnswers = false;
    }
  };
  let prober: NodeJS.Timeout | undefined;
  // Without PostgreSQL the service still starts, alive and not ready, and answers 503 until it
  // can read: a supervisor need not restart it for a database outage.
  try {
    await probe();
    await stream.start();
    await http.start();
  } catch (err) {
    state.set('failed');
    await stream.close();
    await consumerLag?.close();
    await database.close().catch(() => {});
    throw err;
  }
  prober = setInterval(() => void probe(), PROBE_EVERY_MS);
  prober.unref();
  state.set('running');
  logger.info(
    {
      host: config.host,
      port: http.port,
      schema: config.databaseSchema,
      authentication: config.apiKeys.length > 0,
      pageFiles: staticFiles.count,
    },
    'query listening',
  );

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Stop accepting, end the streams (clients reconnect elsewhere with Last-Event-ID), answer
      // what is in hand, then close the connections.
      state.set('draining');
      clearInterval(prober);
      http.stopAccepting();
      await stream.close();
      await withDeadline(
        http.drained(),
        Math.max(1000, config.shutdownGraceMs / 2),
        'answering requests in hand',
      ).catch((err: unknown) => logger.warn({ err }, 'requests still unanswered; closing them'));
      http.destroyAll();
      await consumerLag?.close();
      await database.close();
      state.set('stopped');
    })();
    return closing;
  };
  return { state, close, port: http.port };
}
