import { createKafka } from '../shared/kafka-client.js';
import { type Service, StateHolder, sleep, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { RateLimiter } from '../shared/rate-limiter.js';
import { createServiceRegistry } from '../shared/service-metrics.js';
import { ApiKeys } from './api-keys.js';
import { ClientAddressResolver } from './client-address.js';
import type { IngestConfig } from './config.js';
import { CorsPolicy } from './cors.js';
import { EventProducer } from './event-producer.js';
import { HttpServer } from './http-server.js';
import { Slots } from './load-bounds.js';
import { createIngestMetrics, routeLabel } from './metrics.js';
import { ProducerWatchdog } from './producer-watchdog.js';
import { createRequestHandler } from './request-handler.js';

export interface IngestService extends Service {
  /** The port the HTTP server listens on. */
  readonly port: number;
}

/**
 * Wires the ingest components and starts them: producer first (so that the first request can
 * be acknowledged), then the HTTP server.
 */
export async function startIngest(config: IngestConfig, logger: Logger): Promise<IngestService> {
  const state = new StateHolder();
  const registry = createServiceRegistry('ingest', state);
  const apiKeys = new ApiKeys(config.apiKeys, config.defaultSiteTimeZone);
  const metrics = createIngestMetrics(registry, {
    maxInFlightEvents: config.maxInFlightEvents,
    sites: apiKeys.sites.map((site) => site.name),
  });
  const kafka = createKafka({ brokers: config.kafkaBrokers, clientId: 'ingest', logger });
  const producer = new EventProducer(
    kafka,
    {
      brokers: config.kafkaBrokers,
      clientId: 'ingest',
      topic: config.topic,
      topicPartitions: config.topicPartitions,
      ackTimeoutMs: config.ackTimeoutMs,
      maxInFlightEvents: config.maxInFlightEvents,
      lingerMs: config.producerLingerMs,
      batchBytes: config.producerBatchBytes,
    },
    metrics,
    logger.child({ component: 'producer' }),
  );
  const watchdog = new ProducerWatchdog(
    producer,
    config.producerStallTimeoutMs,
    metrics,
    logger.child({ component: 'producer-watchdog' }),
  );
  const cors = new CorsPolicy(config.corsAllowedOrigins);
  // Writes are taken while running, and through the drain delay after SIGTERM (the listener is
  // still open then, and a load balancer may still send requests); not once it has closed.
  let listenerClosed = false;
  const acceptingWrites = (): boolean =>
    state.state === 'running' || (state.state === 'draining' && !listenerClosed);
  const http = new HttpServer({
    host: config.host,
    port: config.port,
    maxBodyBytes: config.maxBodyBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    maxConcurrentRequests: config.maxConcurrentRequests,
    maxBufferedBytes: config.maxBufferedBytes,
    logger: logger.child({ component: 'http' }),
    handler: createRequestHandler({
      producer,
      metrics,
      registry,
      state,
      cors,
      apiKeys,
      rateLimiter: new RateLimiter(config.rateLimitPerSec, config.rateLimitBurst),
      clientAddress: new ClientAddressResolver(config.trustedProxies),
      acceptingWrites,
      inflateSlots: new Slots(config.maxConcurrentDecompressions),
      maxEventAgeMs: config.maxEventAgeMs,
      maxBatchEvents: config.maxBatchEvents,
      maxDecompressedBytes: config.maxDecompressedBytes,
      logger: logger.child({ component: 'requests' }),
    }),
    errorHeaders: (headers) => cors.responseHeaders(headers.origin),
    onResponse: (request, status, seconds) => {
      const route = routeLabel(request.path);
      metrics.httpRequests.inc({ route, method: request.method, status });
      metrics.httpDuration.observe({ route, status }, seconds);
      metrics.httpInFlight.set(http.inFlight);
      metrics.admittedRequests.set(http.admittedRequests);
      metrics.bufferedBytes.set(http.bufferedBytes);
    },
    onRefused: (code) => metrics.requestsRefused.inc({ reason: code }),
  });

  try {
    await producer.start();
    watchdog.start();
    await http.start();
  } catch (err) {
    state.set('failed');
    watchdog.close();
    await producer.close(1000).catch(() => {});
    http.stopAccepting();
    throw err;
  }
  state.set('running');
  logger.info(
    {
      host: config.host,
      port: http.port,
      topic: config.topic,
      authentication: apiKeys.enabled,
      sites: apiKeys.sites.map((site) => `${site.name}@${site.timeZone}`),
    },
    'ingest listening',
  );

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Not ready at once (load balancers stop routing here), but keep serving for the drain
      // delay while they notice; then stop accepting, answer what was received, and flush what
      // the producer still holds.
      state.set('draining');
      if (config.drainDelayMs > 0) {
        http.closeConnectionsAfterAnswer();
        logger.info({ drainDelayMs: config.drainDelayMs }, 'not ready; still serving');
        await sleep(config.drainDelayMs);
      }
      listenerClosed = true;
      http.stopAccepting();
      await withDeadline(
        http.drained(),
        Math.max(1000, config.shutdownGraceMs - config.drainDelayMs),
        'answering in-flight requests',
      );
      watchdog.close();
      await producer.close(Math.max(1000, config.shutdownGraceMs / 2));
      state.set('stopped');
    })();
    return closing;
  };
  return { state, close, port: http.port };
}
