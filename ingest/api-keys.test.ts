import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ApiKeys } from './api-keys.js';

describe('ApiKeys.presented', () => {
  test('reads `Authorization: Bearer <key>`', () => {
    assert.equal(ApiKeys.presented({ authorization: 'Bearer k-123' }), 'k-123');
  });

  test('the Bearer scheme is case-insensitive and surrounding blanks are ignored', () => {
    for (const header of ['bearer k-123', 'BEARER k-123', 'BeArEr k-123', 'Bearer   k-123  ']) {
      assert.equal(ApiKeys.presented({ authorization: header }), 'k-123', header);
    }
  });

  test('reads `X-API-Key: <key>` as sent', () => {
    assert.equal(ApiKeys.presented({ 'x-api-key': 'k-123' }), 'k-123');
    assert.equal(ApiKeys.presented({ 'x-api-key': 'Bearer k-123' }), 'Bearer k-123');
  });

  test('X-API-Key wins over Authorization when both are sent', () => {
    assert.equal(
      ApiKeys.presented({ 'x-api-key': 'from-header', authorization: 'Bearer from-auth' }),
      'from-header',
    );
  });

  test('an empty X-API-Key falls back to Authorization', () => {
    assert.equal(ApiKeys.presented({ 'x-api-key': '', authorization: 'Bearer k' }), 'k');
  });

  test('other schemes, a scheme without a key and a key with blanks present nothing', () => {
    for (const header of [
      'Basic dXNlcjpwYXNz',
      'Token k-123',
      'Bearer',
      'Bearer ',
      'Bearerk-123',
      'Bearer k 123',
      'k-123',
      '',
    ]) {
      assert.equal(ApiKeys.presented({ authorization: header }), undefined, header);
    }
    assert.equal(ApiKeys.presented({}), undefined);
  });
});

describe('ApiKeys.accepts', () => {
  const keys = new ApiKeys(['key-one', 'key-two']);

  test('is enabled when keys are configured', () => {
    assert.equal(keys.enabled, true);
  });

  test('accepts every configured key', () => {
    assert.equal(keys.accepts('key-one'), true);
    assert.equal(keys.accepts('key-two'), true);
  });

  test('refuses wrong keys, including near misses', () => {
    for (const key of ['', 'key', 'key-on', 'key-one ', ' key-one', 'KEY-ONE', 'key-one2', 'x']) {
      assert.equal(keys.accepts(key), false, JSON.stringify(key));
    }
  });

  test('a presented header goes through end to end', () => {
    const presented = ApiKeys.presented({ authorization: 'bearer key-two' });
    assert.ok(presented !== undefined);
    assert.equal(keys.accepts(presented), true);
  });

  test('is disabled with no keys, and then accepts nothing', () => {
    const none = new ApiKeys([]);
    assert.equal(none.enabled, false);
    assert.equal(none.accepts(''), false);
    assert.equal(none.accepts('key-one'), false);
  });
});
