import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PipelineError } from '../shared/errors.js';
import { readQueryConfig } from './config.js';

test('defaults work for the local stack', () => {
  const config = readQueryConfig({});
  assert.equal(config.port, 8082);
  assert.equal(config.queryTimeoutMs, 5000);
  assert.equal(config.rateLimitPerSec, 20);
  assert.equal(config.rateLimitBurst, 100);
  assert.deepEqual(config.apiKeys, []);
  assert.equal(config.windowMs, 60_000);
});

test('read keys: KEY=SITE, several keys per site; every bad entry reported, never the key', () => {
  const config = readQueryConfig({
    QUERY_API_KEYS:
      'shop-read-key-0123456789=shop, shop-second-key-012345=shop,blog-read-key-0123456789=blog',
  });
  assert.deepEqual(
    config.apiKeys.map((k) => k.site),
    ['shop', 'shop', 'blog'],
  );
  try {
    readQueryConfig({
      QUERY_API_KEYS: 'short=shop,long-enough-key-0123456=Not A Site,nosite-key-0123456789',
      QUERY_TIMEOUT_MS: '10',
      DEFAULT_SITE_TIME_ZONE: 'Mars/Base',
    });
    assert.fail('refused');
  } catch (err) {
    assert.ok(err instanceof PipelineError && err.code === 'config_invalid');
    for (const part of [
      'entry 1',
      'entry 2',
      'entry 3',
      'QUERY_TIMEOUT_MS',
      'DEFAULT_SITE_TIME_ZONE',
    ]) {
      assert.ok(err.message.includes(part), part);
    }
    assert.ok(!err.message.includes('long-enough-key'), 'keys never appear in messages');
  }
});

test('broker settings are optional: without them the consumer lag is not measured', () => {
  const unset = readQueryConfig({});
  assert.deepEqual(unset.kafkaBrokers, []);
  assert.equal(unset.topic, 'incoming.user_activity');
  const set = readQueryConfig({ KAFKA_BROKERS: 'a:9092, b:9092', TOPIC: 'events' });
  assert.deepEqual(set.kafkaBrokers, ['a:9092', 'b:9092']);
  assert.equal(set.topic, 'events');
});
