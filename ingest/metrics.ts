import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { EVENT_REJECT_CODES } from '../shared/event-schema.js';

/** The routes metrics are labelled with; anything else is `other`, to bound label cardinality. */
export const KNOWN_ROUTES = [
  '/activity',
  '/activities',
  '/healthz',
  '/readyz',
  '/metrics',
] as const;

export function routeLabel(path: string): string {
  return (KNOWN_ROUTES as readonly string[]).includes(path) ? path : 'other';
}

/**
 * Reasons an event can be rejected for: each gets its series at 0 from the start, so that
 * `rate()` and `increase()` see the first rejection (a series born at 1 hides it).
 */
const EVENT_REJECT_REASONS = [
  ...EVENT_REJECT_CODES,
  'invalid_json',
  'broker_timeout',
  'broker_outcome_unknown',
  'broker_unavailable',
  'queue_full',
];

/**
 * The ingest service's own metrics, registered once on the service registry. `sites` are the
 * configured sites' names: the bounded values of the `site` label, each born at 0.
 */
export function createIngestMetrics(
  registry: Registry,
  options: { maxInFlightEvents: number; sites: readonly string[] },
) {
  const registers = [registry];
  const metrics = {
    httpRequests: new Counter({
      name: 'ingest_http_requests_total',
      help: 'HTTP requests answered, by route, method and status (499: client went away).',
      labelNames: ['route', 'method', 'status'],
      registers,
    }),
    httpDuration: new Histogram({
      name: 'ingest_http_request_duration_seconds',
      help: 'Time from request received to response written, by route and status.',
      labelNames: ['route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    httpInFlight: new Gauge({
      name: 'ingest_http_in_flight_requests',
      help: 'Requests received and not yet answered.',
      registers,
    }),
    eventsAccepted: new Counter({
      name: 'ingest_events_accepted_total',
      help: 'Events acknowledged by the broker and answered as accepted, by site.',
      labelNames: ['site'],
      registers,
    }),
    eventsRejected: new Counter({
      name: 'ingest_events_rejected_total',
      help: 'Events not accepted, by reason code.',
      labelNames: ['reason'],
      registers,
    }),
    requestsRefused: new Counter({
      name: 'ingest_requests_refused_total',
      help: 'POST requests refused before their events were read (origin, auth, rate limit, draining, media type, encoding, size, overloaded), by reason code.',
      labelNames: ['reason'],
      registers,
    }),
    rateLimited: new Counter({
      name: 'ingest_rate_limited_requests_total',
      help: 'Requests answered 429 because their client exceeded RATE_LIMIT_PER_SEC.',
      registers,
    }),
    producerInFlight: new Gauge({
      name: 'ingest_producer_in_flight_events',
      help: 'Events handed to the producer and not yet acknowledged (bounded by MAX_IN_FLIGHT_EVENTS).',
      registers,
    }),
    producerInFlightLimit: new Gauge({
      name: 'ingest_producer_in_flight_limit',
      help: 'MAX_IN_FLIGHT_EVENTS: beyond it, requests get 503 queue_full.',
      registers,
    }),
    producerReplacements: new Counter({
      name: 'ingest_producer_replacements_total',
      help: 'Kafka producers replaced by the watchdog: events timed out while the broker led every partition, and their partitions had nothing acknowledged for PRODUCER_STALL_TIMEOUT_SEC.',
      registers,
    }),
    producerFatalErrors: new Counter({
      name: 'ingest_producer_fatal_errors_total',
      help: 'Fatal errors reported by the Kafka producer; each makes ingest not ready until a new producer is connected.',
      registers,
    }),
    admittedRequests: new Gauge({
      name: 'ingest_http_admitted_requests',
      help: 'Requests with a body past the header gates and not yet answered (bounded by MAX_CONCURRENT_REQUESTS).',
      registers,
    }),
    bufferedBytes: new Gauge({
      name: 'ingest_http_buffered_bytes',
      help: 'Body bytes reserved by admitted requests (bounded by MAX_BUFFERED_BYTES).',
      registers,
    }),
    ackDuration: new Histogram({
      name: 'ingest_broker_ack_duration_seconds',
      help: 'Time from handing a request’s events to the producer to the broker’s acknowledgement.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
  };
  metrics.producerInFlightLimit.set(options.maxInFlightEvents);
  for (const reason of EVENT_REJECT_REASONS) metrics.eventsRejected.inc({ reason }, 0);
  for (const site of options.sites) metrics.eventsAccepted.inc({ site }, 0);
  // Born at 0 too: IngestOverloaded's rate() must see the first refusals.
  metrics.requestsRefused.inc({ reason: 'overloaded' }, 0);
  return metrics;
}

export type IngestMetrics = ReturnType<typeof createIngestMetrics>;
