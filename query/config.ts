import { ConfigReader } from '../shared/config-reader.js';
import { isTimeZone, SITE_NAME } from '../shared/event-schema.js';
import { DEFAULT_TOPIC } from '../shared/kafka-client.js';

/** A read key and the one site it reads. */
export interface ReadKey {
  key: string;
  site: string;
}

/** Everything the query service reads from the environment, validated once at start-up. */
export interface QueryConfig {
  host: string;
  /** Port of the API, the page, /healthz, /readyz and /metrics. */
  port: number;
  /** The aggregator's database and schema (the same settings). */
  databaseUrl: string;
  databaseSchema: string;
  /** Connections to PostgreSQL for answers (the stream's LISTEN connection is one more). */
  databasePoolSize: number;
  /**
   * The aggregator's broker and events topic, to report the consumer lag in `/v1/realtime`;
   * empty: the lag is reported as null.
   */
  kafkaBrokers: string[];
  topic: string;
  /** Read keys; empty: the API is open and reads the site `default` unless told another. */
  apiKeys: ReadKey[];
  /** Zone of a site with no stored rows yet (a stored row's zone wins). */
  defaultSiteTimeZone: string;
  /** The aggregator's window length: a `minute` bucket is one window. */
  windowMs: number;
  /**
   * The aggregator's lateness and flush interval: a bucket is `complete` once its end is this far
   * behind the clock, the time the aggregator takes to make its windows final.
   */
  allowedLatenessMs: number;
  flushIntervalMs: number;
  /** Deadline of one answer: `statement_timeout` and the client-side deadline. */
  queryTimeoutMs: number;
  /** Token bucket per read key (per client address without keys); 0 turns it off. */
  rateLimitPerSec: number;
  rateLimitBurst: number;
  /** Open `/v1/stream` connections, at most. */
  maxStreams: number;
  /** How long an answer is reused for identical queries (dropped on a flush sooner). */
  cacheTtlMs: number;
  /** Answers kept, at most. */
  cacheMaxEntries: number;
  shutdownGraceMs: number;
  logLevel: string;
}

export function readQueryConfig(env: NodeJS.ProcessEnv): QueryConfig {
  const r = new ConfigReader(env);
  const config: QueryConfig = {
    host: r.string('QUERY_HOST', '0.0.0.0'),
    port: r.port('QUERY_PORT', 8082),
    databaseUrl: r.string('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/activity'),
    databaseSchema: r.string('DATABASE_SCHEMA', 'public'),
    databasePoolSize: r.int('QUERY_DATABASE_POOL_SIZE', 10, { min: 1, max: 1000 }),
    kafkaBrokers: r.list('KAFKA_BROKERS', []),
    topic: r.string('TOPIC', DEFAULT_TOPIC),
    apiKeys: parseReadKeys(r.list('QUERY_API_KEYS', []), (problem) => r.problem(problem)),
    defaultSiteTimeZone: r.string('DEFAULT_SITE_TIME_ZONE', 'UTC'),
    windowMs: r.secondsAsMs('WINDOW_SEC', 60, { min: 1, max: 86_400 }),
    allowedLatenessMs: r.secondsAsMs('ALLOWED_LATENESS_SEC', 10, { min: 0, max: 86_400 }),
    flushIntervalMs: r.secondsAsMs('FLUSH_INTERVAL_SEC', 2, { min: 0.05, max: 3600 }),
    queryTimeoutMs: r.int('QUERY_TIMEOUT_MS', 5000, { min: 100, max: 600_000 }),
    rateLimitPerSec: r.int('QUERY_RATE_LIMIT_PER_SEC', 20, { min: 0, max: 1_000_000 }),
    rateLimitBurst: r.int('QUERY_RATE_LIMIT_BURST', 100, { min: 1, max: 1_000_000 }),
    maxStreams: r.int('QUERY_MAX_STREAMS', 1000, { min: 1, max: 100_000 }),
    cacheTtlMs: r.int('QUERY_CACHE_TTL_MS', 2000, { min: 0, max: 3_600_000 }),
    cacheMaxEntries: r.int('QUERY_CACHE_MAX_ENTRIES', 1000, { min: 1, max: 1_000_000 }),
    shutdownGraceMs: r.secondsAsMs('SHUTDOWN_GRACE_SEC', 25, { min: 1, max: 600 }),
    logLevel: r.oneOf('LOG_LEVEL', 'info', ['trace', 'debug', 'info', 'warn', 'error', 'fatal']),
  };
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(config.databaseSchema)) {
    r.problem(
      `DATABASE_SCHEMA=${JSON.stringify(config.databaseSchema)}: expected a lower-case SQL identifier`,
    );
  }
  if (!isTimeZone(config.defaultSiteTimeZone)) {
    r.problem(
      `DEFAULT_SITE_TIME_ZONE=${JSON.stringify(config.defaultSiteTimeZone)}: expected an IANA time zone name (like Europe/Berlin)`,
    );
  }
  if (config.windowMs % 1000 !== 0 || (15 * 60_000) % config.windowMs !== 0) {
    r.problem('WINDOW_SEC must be a whole number of seconds that divides 900, as the aggregator’s');
  }
  r.finish();
  return config;
}

/** `KEY=SITE` entries; a key reads one site, a site may have several keys. */
function parseReadKeys(entries: string[], problem: (message: string) => void): ReadKey[] {
  const keys: ReadKey[] = [];
  const seen = new Set<string>();
  entries.forEach((entry, i) => {
    const at = entry.indexOf('=');
    const key = at < 0 ? '' : entry.slice(0, at).trim();
    const site = at < 0 ? '' : entry.slice(at + 1).trim();
    if (key.length < 16 || !/^[\x21-\x7e]+$/.test(key)) {
      problem(
        `QUERY_API_KEYS entry ${i + 1}: expected KEY=SITE with a key of at least 16 printable characters`,
      );
      return;
    }
    if (!SITE_NAME.test(site)) {
      problem(
        `QUERY_API_KEYS entry ${i + 1}: site ${JSON.stringify(site)} is not a site name (${SITE_NAME.source})`,
      );
      return;
    }
    if (seen.has(key)) {
      problem(`QUERY_API_KEYS entry ${i + 1}: the key is listed twice`);
      return;
    }
    seen.add(key);
    keys.push({ key, site });
  });
  return keys;
}
