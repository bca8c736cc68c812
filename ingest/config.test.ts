import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PipelineError } from '../shared/errors.js';
import { readIngestConfig } from './config.js';

function configError(env: NodeJS.ProcessEnv): PipelineError {
  try {
    readIngestConfig(env);
  } catch (err) {
    assert.ok(err instanceof PipelineError);
    assert.equal(err.code, 'config_invalid');
    return err;
  }
  assert.fail('expected the config to be refused');
}

describe('readIngestConfig', () => {
  test('an empty environment gives the documented defaults for the local stack', () => {
    assert.deepEqual(readIngestConfig({}), {
      host: '0.0.0.0',
      port: 8080,
      kafkaBrokers: ['127.0.0.1:9092'],
      topic: 'incoming.user_activity',
      topicPartitions: 6,
      ackTimeoutMs: 10_000,
      producerStallTimeoutMs: 5_000,
      maxInFlightEvents: 50_000,
      producerLingerMs: 2,
      producerBatchBytes: 1_000_000,
      maxBodyBytes: 1_048_576,
      maxDecompressedBytes: 4_194_304,
      maxBatchEvents: 1000,
      corsAllowedOrigins: [],
      apiKeys: [],
      defaultSiteTimeZone: 'UTC',
      rateLimitPerSec: 0,
      rateLimitBurst: 1,
      maxEventAgeMs: 7 * 24 * 3600_000,
      requestTimeoutMs: 30_000,
      maxConcurrentRequests: 1024,
      maxBufferedBytes: 67_108_864,
      maxConcurrentDecompressions: 16,
      trustedProxies: [],
      drainDelayMs: 0,
      shutdownGraceMs: 25_000,
      logLevel: 'info',
    });
  });

  test('reads every variable, converting seconds to milliseconds', () => {
    const config = readIngestConfig({
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: '9080',
      KAFKA_BROKERS: 'k1:9092, k2:9092',
      TOPIC: 'activity.test',
      TOPIC_PARTITIONS: '12',
      ACK_TIMEOUT_SEC: '2.5',
      PRODUCER_STALL_TIMEOUT_SEC: '3',
      MAX_IN_FLIGHT_EVENTS: '1000',
      PRODUCER_LINGER_SEC: '0.005',
      PRODUCER_BATCH_BYTES: '65536',
      MAX_BODY_BYTES: '2048',
      MAX_DECOMPRESSED_BYTES: '8192',
      MAX_BATCH_EVENTS: '50',
      CORS_ALLOWED_ORIGINS: 'https://a.example, https://b.example',
      API_KEYS: 'key-1,key-2=shop@Europe/Berlin',
      DEFAULT_SITE_TIME_ZONE: 'America/Sao_Paulo',
      RATE_LIMIT_PER_SEC: '100',
      RATE_LIMIT_BURST: '500',
      MAX_EVENT_AGE_SEC: '3600',
      REQUEST_TIMEOUT_SEC: '5',
      MAX_CONCURRENT_REQUESTS: '64',
      MAX_BUFFERED_BYTES: '1048576',
      MAX_CONCURRENT_DECOMPRESSIONS: '2',
      TRUSTED_PROXIES: '10.0.0.0/8, 192.0.2.7, fd00::/8',
      DRAIN_DELAY_SEC: '0.5',
      SHUTDOWN_GRACE_SEC: '1',
      LOG_LEVEL: 'debug',
    });
    assert.deepEqual(config, {
      host: '127.0.0.1',
      port: 9080,
      kafkaBrokers: ['k1:9092', 'k2:9092'],
      topic: 'activity.test',
      topicPartitions: 12,
      ackTimeoutMs: 2500,
      producerStallTimeoutMs: 3000,
      maxInFlightEvents: 1000,
      producerLingerMs: 5,
      producerBatchBytes: 65_536,
      maxBodyBytes: 2048,
      maxDecompressedBytes: 8192,
      maxBatchEvents: 50,
      corsAllowedOrigins: ['https://a.example', 'https://b.example'],
      apiKeys: [
        { key: 'key-1', site: 'default', timeZone: 'America/Sao_Paulo' },
        { key: 'key-2', site: 'shop', timeZone: 'Europe/Berlin' },
      ],
      defaultSiteTimeZone: 'America/Sao_Paulo',
      rateLimitPerSec: 100,
      rateLimitBurst: 500,
      maxEventAgeMs: 3_600_000,
      requestTimeoutMs: 5000,
      maxConcurrentRequests: 64,
      maxBufferedBytes: 1_048_576,
      maxConcurrentDecompressions: 2,
      trustedProxies: ['10.0.0.0/8', '192.0.2.7', 'fd00::/8'],
      drainDelayMs: 500,
      shutdownGraceMs: 1000,
      logLevel: 'debug',
    });
  });

  test('several bad values are all reported in one error', () => {
    const err = configError({
      INGEST_PORT: '0',
      TOPIC_PARTITIONS: 'six',
      MAX_BODY_BYTES: '100',
      ACK_TIMEOUT_SEC: '-1',
      LOG_LEVEL: 'verbose',
      KAFKA_BROKERS: ' , ',
      MAX_BATCH_EVENTS: '0',
      RATE_LIMIT_PER_SEC: '-5',
      PRODUCER_STALL_TIMEOUT_SEC: '0',
      MAX_CONCURRENT_REQUESTS: '0',
      MAX_CONCURRENT_DECOMPRESSIONS: 'many',
      DRAIN_DELAY_SEC: '-1',
      DEFAULT_SITE_TIME_ZONE: 'Europe/Atlantis',
      API_KEYS: 'k=Shop',
    });
    for (const name of [
      'INGEST_PORT',
      'TOPIC_PARTITIONS',
      'MAX_BODY_BYTES',
      'ACK_TIMEOUT_SEC',
      'LOG_LEVEL',
      'KAFKA_BROKERS',
      'MAX_BATCH_EVENTS',
      'RATE_LIMIT_PER_SEC',
      'PRODUCER_STALL_TIMEOUT_SEC',
      'MAX_CONCURRENT_REQUESTS',
      'MAX_CONCURRENT_DECOMPRESSIONS',
      'DRAIN_DELAY_SEC',
      'DEFAULT_SITE_TIME_ZONE',
      'API_KEYS',
    ]) {
      assert.match(err.message, new RegExp(`- ${name}\\b`), name);
    }
  });

  test('an unset rate-limit burst allows twice the rate', () => {
    assert.equal(readIngestConfig({ RATE_LIMIT_PER_SEC: '50' }).rateLimitBurst, 100);
    assert.equal(
      readIngestConfig({ RATE_LIMIT_PER_SEC: '50', RATE_LIMIT_BURST: '7' }).rateLimitBurst,
      7,
    );
  });

  test('a decompressed-size cap below the body cap is refused', () => {
    const err = configError({ MAX_BODY_BYTES: '8192', MAX_DECOMPRESSED_BYTES: '4096' });
    assert.match(err.message, /MAX_DECOMPRESSED_BYTES must be at least MAX_BODY_BYTES/);
  });

  test('a request timeout not longer than the ack timeout is refused', () => {
    const err = configError({ ACK_TIMEOUT_SEC: '10', REQUEST_TIMEOUT_SEC: '10' });
    assert.match(err.message, /REQUEST_TIMEOUT_SEC must be longer than ACK_TIMEOUT_SEC/);
  });

  test('a buffered-bytes bound below one body is refused', () => {
    const err = configError({ MAX_BODY_BYTES: '8192', MAX_BUFFERED_BYTES: '4096' });
    assert.match(err.message, /MAX_BUFFERED_BYTES must be at least MAX_BODY_BYTES/);
  });

  test('a trusted proxy that is not an address or CIDR is refused, naming it', () => {
    for (const bad of ['10.0.0.0/33', 'proxy.example', '10.0.0/8', 'fd00::/129', '1.2.3.4/8/8']) {
      const err = configError({ TRUSTED_PROXIES: `127.0.0.1, ${bad}` });
      assert.match(err.message, /TRUSTED_PROXIES/, bad);
      assert.ok(err.message.includes(JSON.stringify(bad)), bad);
    }
  });

  test('a drain delay not shorter than the shutdown grace is refused', () => {
    const err = configError({ DRAIN_DELAY_SEC: '25', SHUTDOWN_GRACE_SEC: '25' });
    assert.match(err.message, /DRAIN_DELAY_SEC must be shorter than SHUTDOWN_GRACE_SEC/);
  });

  test('API_KEYS of the form before sites still works: every key writes to the default site', () => {
    assert.deepEqual(readIngestConfig({ API_KEYS: 'key-1, key-2' }).apiKeys, [
      { key: 'key-1', site: 'default', timeZone: 'UTC' },
      { key: 'key-2', site: 'default', timeZone: 'UTC' },
    ]);
  });

  test('API_KEYS mixes sites with zones, sites without and bare keys', () => {
    const config = readIngestConfig({
      API_KEYS: 'k1=shop@Europe/Berlin,k2=blog@Asia/Kathmandu,k3,k4=docs',
      DEFAULT_SITE_TIME_ZONE: 'Europe/Lisbon',
    });
    assert.deepEqual(config.apiKeys, [
      { key: 'k1', site: 'shop', timeZone: 'Europe/Berlin' },
      { key: 'k2', site: 'blog', timeZone: 'Asia/Kathmandu' },
      { key: 'k3', site: 'default', timeZone: 'Europe/Lisbon' },
      { key: 'k4', site: 'docs', timeZone: 'UTC' },
    ]);
    assert.equal(config.defaultSiteTimeZone, 'Europe/Lisbon');
  });

  test('every bad API_KEYS entry is refused at once, none of them showing a key', () => {
    const err = configError({
      API_KEYS: [
        'secret-a=shop@Europe/Berlin',
        'secret-b=Shop',
        'secret-c=blog@Mars/Olympus',
        'secret-d=shop@Europe/Paris',
        'secret-a=docs',
        '=docs',
        'secret-e=docs@',
      ].join(','),
    });
    for (const expected of [
      /- API_KEYS entry 2 of 7: site "Shop" is not a site name/,
      /- API_KEYS entry 3 of 7: "Mars\/Olympus" is not an IANA time zone/,
      /- API_KEYS entries 1 and 4 give site shop different time zones/,
      /- API_KEYS entries 1 and 5 are the same key/,
      /- API_KEYS entry 6 of 7: no key before "="/,
      /- API_KEYS entry 7 of 7: no time zone after "@"/,
    ]) {
      assert.match(err.message, expected);
    }
    assert.doesNotMatch(err.message, /secret/);
  });

  test('an unknown DEFAULT_SITE_TIME_ZONE is refused, naming it', () => {
    const err = configError({ DEFAULT_SITE_TIME_ZONE: 'Europe/Atlantis' });
    assert.match(
      err.message,
      /- DEFAULT_SITE_TIME_ZONE="Europe\/Atlantis": expected an IANA time zone/,
    );
  });
});
