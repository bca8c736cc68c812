import { ConfigReader } from '../shared/config-reader.js';
import { isTimeZone } from '../shared/event-schema.js';
import { DEFAULT_TOPIC } from '../shared/kafka-client.js';
import { parseCidr } from './client-address.js';
import { type ApiKey, parseApiKeys } from './sites.js';

/** Everything the ingest service reads from the environment, validated once at start-up. */
export interface IngestConfig {
  host: string;
  port: number;
  kafkaBrokers: string[];
  topic: string;
  /** Partitions for the topic when ingest creates it. */
  topicPartitions: number;
  /** Longest wait for the broker's acknowledgement before answering 503. */
  ackTimeoutMs: number;
  /**
   * After an event handed over while the broker named every leader timed out, partitions whose
   * latest event timed out getting nothing acknowledged for this long: the producer is replaced
   * (`producer-watchdog.ts`).
   */
  producerStallTimeoutMs: number;
  /** Events produced but not yet acknowledged, at most; beyond it requests get 503. */
  maxInFlightEvents: number;
  /** The producer's `linger.ms`: how long it waits for more events before sending a batch. */
  producerLingerMs: number;
  /** The producer's `batch.size`: the most bytes of one partition's batch. */
  producerBatchBytes: number;
  /** Largest request body accepted, in bytes (as sent, before decompression). */
  maxBodyBytes: number;
  /** Largest body after `Content-Encoding: gzip` is inflated. */
  maxDecompressedBytes: number;
  /** Most events in one `POST /activities`. */
  maxBatchEvents: number;
  /** Origins allowed by CORS (`*` for any); empty: no CORS headers. */
  corsAllowedOrigins: string[];
  /**
   * Accepted API keys, each with the site its events belong to; empty: no authentication, and
   * every event belongs to `DEFAULT_SITE`.
   */
  apiKeys: ApiKey[];
  /** IANA time zone of `DEFAULT_SITE` (bare keys, or every event without keys). */
  defaultSiteTimeZone: string;
  /** Requests per second per API key (per remote address when keys are off); 0: no limit. */
  rateLimitPerSec: number;
  /** Requests a client may make at once before the rate applies. */
  rateLimitBurst: number;
  /** Oldest accepted event timestamp, relative to the receive time. */
  maxEventAgeMs: number;
  /** Whole request deadline: reading the body, validating, producing and answering. */
  requestTimeoutMs: number;
  /** POST requests past the header gates and not yet answered, at most; beyond it 503. */
  maxConcurrentRequests: number;
  /** Body bytes held across all requests (declared lengths reserved up front), at most. */
  maxBufferedBytes: number;
  /**
   * Gzip bodies being inflated at once, at most: each may grow to `maxDecompressedBytes`, and
   * libuv's four threads inflate them in turn.
   */
  maxConcurrentDecompressions: number;
  /**
   * Proxies (CIDRs) whose `X-Forwarded-For` names the client; empty: the peer address is the
   * client.
   */
  trustedProxies: string[];
  /**
   * After SIGTERM: `/readyz` answers 503 and requests are still served this long, so load
   * balancers stop sending new ones before the listener closes.
   */
  drainDelayMs: number;
  /** The whole shutdown, drain delay included. */
  shutdownGraceMs: number;
  logLevel: string;
}

export function readIngestConfig(env: NodeJS.ProcessEnv): IngestConfig {
  const r = new ConfigReader(env);
  const defaultSiteTimeZone = r.string('DEFAULT_SITE_TIME_ZONE', 'UTC');
  if (!isTimeZone(defaultSiteTimeZone)) {
    r.problem(
      `DEFAULT_SITE_TIME_ZONE=${JSON.stringify(defaultSiteTimeZone)}: expected an IANA time zone name (like Europe/Berlin)`,
    );
  }
  const apiKeys = parseApiKeys(r.list('API_KEYS', []), defaultSiteTimeZone);
  for (const problem of apiKeys.problems) r.problem(problem);
  const config: IngestConfig = {
    host: r.string('INGEST_HOST', '0.0.0.0'),
    port: r.port('INGEST_PORT', 8080),
    kafkaBrokers: r.list('KAFKA_BROKERS', ['127.0.0.1:9092']),
    topic: r.string('TOPIC', DEFAULT_TOPIC),
    topicPartitions: r.int('TOPIC_PARTITIONS', 6, { min: 1, max: 1024 }),
    ackTimeoutMs: r.secondsAsMs('ACK_TIMEOUT_SEC', 10, { min: 0.1, max: 300 }),
    producerStallTimeoutMs: r.secondsAsMs('PRODUCER_STALL_TIMEOUT_SEC', 5, { min: 1, max: 300 }),
    maxInFlightEvents: r.int('MAX_IN_FLIGHT_EVENTS', 50_000, { min: 1, max: 10_000_000 }),
    producerLingerMs: r.secondsAsMs('PRODUCER_LINGER_SEC', 0.002, { min: 0, max: 1 }),
    producerBatchBytes: r.int('PRODUCER_BATCH_BYTES', 1_000_000, { min: 1024, max: 16_777_216 }),
    maxBodyBytes: r.int('MAX_BODY_BYTES', 1_048_576, { min: 1024, max: 64 * 1_048_576 }),
    maxDecompressedBytes: r.int('MAX_DECOMPRESSED_BYTES', 4_194_304, {
      min: 1024,
      max: 256 * 1_048_576,
    }),
    maxBatchEvents: r.int('MAX_BATCH_EVENTS', 1000, { min: 1, max: 100_000 }),
    corsAllowedOrigins: r.list('CORS_ALLOWED_ORIGINS', []),
    apiKeys: apiKeys.keys,
    defaultSiteTimeZone,
    rateLimitPerSec: r.int('RATE_LIMIT_PER_SEC', 0, { min: 0, max: 10_000_000 }),
    rateLimitBurst: r.int('RATE_LIMIT_BURST', 0, { min: 0, max: 10_000_000 }),
    maxEventAgeMs: r.secondsAsMs('MAX_EVENT_AGE_SEC', 7 * 24 * 3600, { min: 1, max: 3.2e7 }),
    requestTimeoutMs: r.secondsAsMs('REQUEST_TIMEOUT_SEC', 30, { min: 0.1, max: 600 }),
    maxConcurrentRequests: r.int('MAX_CONCURRENT_REQUESTS', 1024, { min: 1, max: 1_000_000 }),
    maxBufferedBytes: r.int('MAX_BUFFERED_BYTES', 64 * 1_048_576, {
      min: 1024,
      max: 16 * 1024 * 1_048_576,
    }),
    maxConcurrentDecompressions: r.int('MAX_CONCURRENT_DECOMPRESSIONS', 16, { min: 1, max: 1024 }),
    trustedProxies: r.list('TRUSTED_PROXIES', []),
    drainDelayMs: r.secondsAsMs('DRAIN_DELAY_SEC', 0, { min: 0, max: 300 }),
    shutdownGraceMs: r.secondsAsMs('SHUTDOWN_GRACE_SEC', 25, { min: 1, max: 600 }),
    logLevel: r.oneOf('LOG_LEVEL', 'info', ['trace', 'debug', 'info', 'warn', 'error', 'fatal']),
  };
  // A burst of 0 means "twice the rate": one second of headroom either side.
  if (config.rateLimitBurst === 0) config.rateLimitBurst = Math.max(1, config.rateLimitPerSec * 2);
  if (config.maxDecompressedBytes < config.maxBodyBytes) {
    r.problem('MAX_DECOMPRESSED_BYTES must be at least MAX_BODY_BYTES');
  }
  if (config.requestTimeoutMs <= config.ackTimeoutMs) {
    r.problem('REQUEST_TIMEOUT_SEC must be longer than ACK_TIMEOUT_SEC');
  }
  if (config.maxBufferedBytes < config.maxBodyBytes) {
    r.problem('MAX_BUFFERED_BYTES must be at least MAX_BODY_BYTES');
  }
  for (const proxy of config.trustedProxies) {
    if (parseCidr(proxy) === undefined) {
      r.problem(`TRUSTED_PROXIES: ${JSON.stringify(proxy)} is not an IP address or CIDR`);
    }
  }
  if (config.drainDelayMs >= config.shutdownGraceMs) {
    r.problem('DRAIN_DELAY_SEC must be shorter than SHUTDOWN_GRACE_SEC (the grace includes it)');
  }
  r.finish();
  return config;
}
