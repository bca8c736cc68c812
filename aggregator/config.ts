import { availableParallelism } from 'node:os';
import { ConfigReader } from '../shared/config-reader.js';
import { DEFAULT_TOPIC } from '../shared/kafka-client.js';

/** Everything the aggregator reads from the environment, validated once at start-up. */
export interface AggregatorConfig {
  host: string;
  /** Port of /healthz, /readyz and /metrics. */
  port: number;
  kafkaBrokers: string[];
  topic: string;
  consumerGroup: string;
  /**
   * How long the group coordinator waits for a silent member (crashed, stopped) before giving its
   * partitions to the others.
   */
  sessionTimeoutMs: number;
  databaseUrl: string;
  /** PostgreSQL schema holding the metrics table and view. */
  databaseSchema: string;
  windowMs: number;
  /**
   * How long after a window's end (by the partition's watermark) it stays in memory. Events
   * later than that are still counted, through the window's stored membership.
   */
  allowedLatenessMs: number;
  /** Events older than this at their receive time are invalid (ingest's bound, restated). */
  maxEventAgeMs: number;
  /** Flush at least this often while there are changes. */
  flushIntervalMs: number;
  /** Flush once this many records were consumed since the last flush. */
  batchSize: number;
  /** Worker threads for batch aggregation; 0 aggregates on the main thread. */
  workers: number;
  /** Where records that cannot be counted (invalid, late) go. */
  deadLetterTopic: string;
  /**
   * Above this many user ids and event ids held in memory, the oldest windows are written with
   * their membership and leave memory.
   */
  maxHeldUserIds: number;
  /**
   * What to do when a partition's stored position is no longer in the topic (retention passed
   * it): `stop` that partition and alert (the default), or resume from the `earliest` offset
   * still there, counting what was skipped.
   */
  offsetReset: 'stop' | 'earliest';
  /**
   * Keep the hour and day figures (`period_metrics`) as windows close. Off only to measure what
   * they cost (`make bench`).
   */
  rollups: boolean;
  /** Activity types each site's rollups count by name; the rest count as `other`. */
  maxActivityTypes: number;
  /**
   * Users of the hours and days being rolled up held in memory; past it the oldest periods are
   * forgotten and read again from PostgreSQL when needed.
   */
  maxHeldPeriodUsers: number;
  /** How long minute rows are kept (at least MAX_EVENT_AGE_SEC plus two days). */
  minuteRowsRetentionMs: number;
  /** How long hour rows are kept. */
  hourRowsRetentionMs: number;
  /** How long day rows are kept; null keeps them forever. */
  dayRowsRetentionMs: number | null;
  /** Client-side deadline of one database query. */
  databaseQueryTimeoutMs: number;
  /**
   * A consumer that delivers nothing for this long while records wait (and it is not paused,
   * rebalancing or busy) is replaced by a new one.
   */
  consumerStallTimeoutMs: number;
  shutdownGraceMs: number;
  logLevel: string;
  /**
   * Test only (`make chaos`): hold every flush this long between the upsert and COMMIT, so that a
   * fault can be injected in that gap for certain. 0 (the default) disables it.
   */
  chaosPauseBeforeCommitMs: number;
}

export function readAggregatorConfig(env: NodeJS.ProcessEnv): AggregatorConfig {
  const r = new ConfigReader(env);
  const config: AggregatorConfig = {
    host: r.string('AGGREGATOR_HOST', '0.0.0.0'),
    port: r.port('AGGREGATOR_PORT', 8081),
    kafkaBrokers: r.list('KAFKA_BROKERS', ['127.0.0.1:9092']),
    topic: r.string('TOPIC', DEFAULT_TOPIC),
    consumerGroup: r.string('CONSUMER_GROUP', 'activity-aggregator'),
    // The broker refuses values outside its group.min/max.session.timeout.ms (6 s to 30 min).
    sessionTimeoutMs: r.secondsAsMs('SESSION_TIMEOUT_SEC', 30, { min: 1, max: 1800 }),
    databaseUrl: r.string('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/activity'),
    databaseSchema: r.string('DATABASE_SCHEMA', 'public'),
    windowMs: r.secondsAsMs('WINDOW_SEC', 60, { min: 1, max: 86_400 }),
    allowedLatenessMs: r.secondsAsMs('ALLOWED_LATENESS_SEC', 10, { min: 0, max: 86_400 }),
    maxEventAgeMs: r.secondsAsMs('MAX_EVENT_AGE_SEC', 7 * 86_400, { min: 60, max: 366 * 86_400 }),
    flushIntervalMs: r.secondsAsMs('FLUSH_INTERVAL_SEC', 2, { min: 0.05, max: 3600 }),
    batchSize: r.int('BATCH_SIZE', 20_000, { min: 1, max: 10_000_000 }),
    workers: r.int('WORKERS', availableParallelism(), { min: 0, max: 64 }),
    deadLetterTopic: r.optionalString('DLQ_TOPIC') ?? '',
    maxHeldUserIds: r.int('MAX_HELD_USER_IDS', 5_000_000, { min: 1000, max: 1_000_000_000 }),
    offsetReset: r.oneOf('OFFSET_RESET', 'stop', ['stop', 'earliest']),
    rollups: r.oneOf('ROLLUPS', 'on', ['on', 'off']) === 'on',
    maxActivityTypes: r.int('MAX_ACTIVITY_TYPES', 100, { min: 1, max: 10_000 }),
    maxHeldPeriodUsers: r.int('MAX_HELD_PERIOD_USERS', 5_000_000, {
      min: 1000,
      max: 1_000_000_000,
    }),
    minuteRowsRetentionMs: days(r.int('MINUTE_ROWS_RETENTION_DAYS', 30, { min: 1, max: 36_500 })),
    hourRowsRetentionMs: days(r.int('HOUR_ROWS_RETENTION_DAYS', 400, { min: 1, max: 36_500 })),
    dayRowsRetentionMs: orForever(r.int('DAY_ROWS_RETENTION_DAYS', 0, { min: 0, max: 36_500 })),
    databaseQueryTimeoutMs: r.secondsAsMs('DATABASE_QUERY_TIMEOUT_SEC', 15, { min: 0.1, max: 600 }),
    consumerStallTimeoutMs: r.secondsAsMs('CONSUMER_STALL_TIMEOUT_SEC', 10, { min: 3, max: 3600 }),
    shutdownGraceMs: r.secondsAsMs('SHUTDOWN_GRACE_SEC', 25, { min: 1, max: 600 }),
    logLevel: r.oneOf('LOG_LEVEL', 'info', ['trace', 'debug', 'info', 'warn', 'error', 'fatal']),
    chaosPauseBeforeCommitMs: r.int('CHAOS_PAUSE_BEFORE_COMMIT_MS', 0, { min: 0, max: 60_000 }),
  };
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(config.databaseSchema)) {
    r.problem(
      `DATABASE_SCHEMA=${JSON.stringify(config.databaseSchema)}: expected a lower-case SQL identifier`,
    );
  }
  if (config.deadLetterTopic === '') config.deadLetterTopic = `${config.topic}.dlq`;
  if (config.windowMs % 1000 !== 0) r.problem('WINDOW_SEC must be a whole number of seconds');
  // Every zone's offset is a multiple of 15 minutes: a window that divides 15 minutes lies
  // within one hour (and one day) of every site's zone.
  if (config.rollups && (15 * 60_000) % config.windowMs !== 0) {
    r.problem('WINDOW_SEC must divide 900 (15 minutes) while ROLLUPS=on');
  }
  if (config.minuteRowsRetentionMs < config.maxEventAgeMs + 2 * DAY_MS) {
    r.problem(
      'MINUTE_ROWS_RETENTION_DAYS must be at least MAX_EVENT_AGE_SEC plus two days: a late event must find its window',
    );
  }
  r.finish();
  return config;
}

const DAY_MS = 86_400_000;
const days = (n: number): number => n * DAY_MS;
/** Days to keep, 0 for forever. */
const orForever = (n: number): number | null => (n === 0 ? null : days(n));
