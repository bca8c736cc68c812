import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { describe, test } from 'node:test';
import { PipelineError } from '../shared/errors.js';
import { readAggregatorConfig } from './config.js';

function configError(env: NodeJS.ProcessEnv): PipelineError {
  try {
    readAggregatorConfig(env);
  } catch (err) {
    assert.ok(err instanceof PipelineError);
    assert.equal(err.code, 'config_invalid');
    return err;
  }
  assert.fail('expected the config to be refused');
}

describe('readAggregatorConfig', () => {
  test('an empty environment gives the documented defaults for the local stack', () => {
    assert.deepEqual(readAggregatorConfig({}), {
      host: '0.0.0.0',
      port: 8081,
      kafkaBrokers: ['127.0.0.1:9092'],
      topic: 'incoming.user_activity',
      consumerGroup: 'activity-aggregator',
      sessionTimeoutMs: 30_000,
      databaseUrl: 'postgres://postgres@127.0.0.1:5432/activity',
      databaseSchema: 'public',
      windowMs: 60_000,
      allowedLatenessMs: 10_000,
      maxEventAgeMs: 7 * 86_400_000,
      flushIntervalMs: 2000,
      batchSize: 20_000,
      workers: availableParallelism(),
      deadLetterTopic: 'incoming.user_activity.dlq',
      maxHeldUserIds: 5_000_000,
      offsetReset: 'stop',
      rollups: true,
      maxActivityTypes: 100,
      maxHeldPeriodUsers: 5_000_000,
      minuteRowsRetentionMs: 30 * 86_400_000,
      hourRowsRetentionMs: 400 * 86_400_000,
      dayRowsRetentionMs: null,
      databaseQueryTimeoutMs: 15_000,
      consumerStallTimeoutMs: 10_000,
      shutdownGraceMs: 25_000,
      logLevel: 'info',
      chaosPauseBeforeCommitMs: 0,
    });
  });

  test('reads every variable, converting seconds to milliseconds', () => {
    const config = readAggregatorConfig({
      AGGREGATOR_HOST: '127.0.0.1',
      AGGREGATOR_PORT: '9081',
      KAFKA_BROKERS: 'k1:9092',
      TOPIC: 'activity.test',
      CONSUMER_GROUP: 'group-a',
      SESSION_TIMEOUT_SEC: '6',
      DATABASE_URL: 'postgres://u@db:5432/x',
      DATABASE_SCHEMA: 'metrics_2',
      WINDOW_SEC: '300',
      ALLOWED_LATENESS_SEC: '0',
      MAX_EVENT_AGE_SEC: '86400',
      FLUSH_INTERVAL_SEC: '0.5',
      BATCH_SIZE: '100',
      WORKERS: '0',
      DLQ_TOPIC: 'activity.dead',
      MAX_HELD_USER_IDS: '2000',
      OFFSET_RESET: 'earliest',
      ROLLUPS: 'off',
      MAX_ACTIVITY_TYPES: '20',
      MAX_HELD_PERIOD_USERS: '3000',
      MINUTE_ROWS_RETENTION_DAYS: '3',
      HOUR_ROWS_RETENTION_DAYS: '90',
      DAY_ROWS_RETENTION_DAYS: '3650',
      DATABASE_QUERY_TIMEOUT_SEC: '2.5',
      CONSUMER_STALL_TIMEOUT_SEC: '40',
      SHUTDOWN_GRACE_SEC: '5',
      LOG_LEVEL: 'warn',
      CHAOS_PAUSE_BEFORE_COMMIT_MS: '250',
    });
    assert.deepEqual(config, {
      host: '127.0.0.1',
      port: 9081,
      kafkaBrokers: ['k1:9092'],
      topic: 'activity.test',
      consumerGroup: 'group-a',
      sessionTimeoutMs: 6000,
      databaseUrl: 'postgres://u@db:5432/x',
      databaseSchema: 'metrics_2',
      windowMs: 300_000,
      allowedLatenessMs: 0,
      maxEventAgeMs: 86_400_000,
      flushIntervalMs: 500,
      batchSize: 100,
      workers: 0,
      deadLetterTopic: 'activity.dead',
      maxHeldUserIds: 2000,
      offsetReset: 'earliest',
      rollups: false,
      maxActivityTypes: 20,
      maxHeldPeriodUsers: 3000,
      minuteRowsRetentionMs: 3 * 86_400_000,
      hourRowsRetentionMs: 90 * 86_400_000,
      dayRowsRetentionMs: 3650 * 86_400_000,
      databaseQueryTimeoutMs: 2500,
      consumerStallTimeoutMs: 40_000,
      shutdownGraceMs: 5000,
      logLevel: 'warn',
      chaosPauseBeforeCommitMs: 250,
    });
  });

  test('several bad values are all reported in one error', () => {
    const err = configError({
      AGGREGATOR_PORT: '70000',
      WINDOW_SEC: '1.5',
      ALLOWED_LATENESS_SEC: '-10',
      BATCH_SIZE: '0',
      SESSION_TIMEOUT_SEC: '0',
      DATABASE_SCHEMA: 'Public; DROP TABLE x',
      LOG_LEVEL: 'chatty',
      OFFSET_RESET: 'latest',
    });
    for (const name of [
      'AGGREGATOR_PORT',
      'WINDOW_SEC',
      'ALLOWED_LATENESS_SEC',
      'BATCH_SIZE',
      'SESSION_TIMEOUT_SEC',
      'DATABASE_SCHEMA',
      'LOG_LEVEL',
      'OFFSET_RESET',
    ]) {
      assert.match(err.message, new RegExp(`- ${name}\\b`), name);
    }
  });

  test('the database schema must be a plain lower-case SQL identifier', () => {
    for (const schema of ['Metrics', '1metrics', 'a-b', 'a.b', '"x"', 'x'.repeat(64)]) {
      const err = configError({ DATABASE_SCHEMA: schema });
      assert.match(err.message, /DATABASE_SCHEMA=/, schema);
    }
    assert.equal(
      readAggregatorConfig({ DATABASE_SCHEMA: 'x'.repeat(63) }).databaseSchema.length,
      63,
    );
  });

  test('windows must be whole seconds', () => {
    const err = configError({ WINDOW_SEC: '2.5' });
    assert.match(err.message, /WINDOW_SEC must be a whole number of seconds/);
  });

  test('with rollups on, a window must divide 15 minutes (one hour of every zone)', () => {
    const err = configError({ WINDOW_SEC: '3600' });
    assert.match(err.message, /WINDOW_SEC must divide 900/);
    for (const seconds of ['1', '10', '60', '300', '900']) {
      assert.equal(readAggregatorConfig({ WINDOW_SEC: seconds }).windowMs, Number(seconds) * 1000);
    }
    assert.equal(readAggregatorConfig({ WINDOW_SEC: '3600', ROLLUPS: 'off' }).windowMs, 3_600_000);
  });

  test('minute rows outlive the age bound by two days', () => {
    const err = configError({ MAX_EVENT_AGE_SEC: String(29 * 86_400) });
    assert.match(err.message, /MINUTE_ROWS_RETENTION_DAYS must be at least/);
    assert.equal(
      readAggregatorConfig({
        MAX_EVENT_AGE_SEC: String(29 * 86_400),
        MINUTE_ROWS_RETENTION_DAYS: '31',
      }).minuteRowsRetentionMs,
      31 * 86_400_000,
    );
  });
});
