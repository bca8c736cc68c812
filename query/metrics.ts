import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** The endpoints metrics are labelled with; anything else is `other` (bounded cardinality). */
export const ENDPOINTS = [
  '/v1/timeseries',
  '/v1/summary',
  '/v1/breakdown',
  '/v1/realtime',
  '/v1/stream',
  '/healthz',
  '/readyz',
  '/metrics',
] as const;

export function endpointLabel(path: string): string {
  if ((ENDPOINTS as readonly string[]).includes(path)) return path;
  return path.startsWith('/v1/') ? 'other' : 'page';
}

/** The query service's own metrics, registered once on the service registry. */
export function createQueryMetrics(registry: Registry) {
  const registers = [registry];
  return {
    requests: new Counter({
      name: 'query_requests_total',
      help: 'Requests answered, by endpoint and HTTP status (a stream counts when it opens or is refused).',
      labelNames: ['endpoint', 'status'],
      registers,
    }),
    duration: new Histogram({
      name: 'query_request_duration_seconds',
      help: 'Time to answer a request, by endpoint (a stream: until its headers are sent).',
      labelNames: ['endpoint'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    streamClients: new Gauge({
      name: 'query_stream_clients',
      help: 'Open /v1/stream connections (bounded by QUERY_MAX_STREAMS).',
      registers,
    }),
    cacheHits: new Counter({
      name: 'query_cache_hits_total',
      help: 'Answers served from a computation already made or in flight for an identical query.',
      registers,
    }),
    cacheMisses: new Counter({
      name: 'query_cache_misses_total',
      help: 'Answers computed: each is one computation against PostgreSQL.',
      registers,
    }),
    flushNotifications: new Counter({
      name: 'query_flush_notifications_total',
      help: 'Flush notifications received from the aggregator (LISTEN activity_flush).',
      registers,
    }),
    streamEvents: new Counter({
      name: 'query_stream_events_total',
      help: 'Window updates written to stream clients.',
      registers,
    }),
  };
}

export type QueryMetrics = ReturnType<typeof createQueryMetrics>;
