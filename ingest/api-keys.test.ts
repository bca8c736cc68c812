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

describe('ApiKeys.siteOf', () => {
  const keys = new ApiKeys(
    [
      { key: 'key-one', site: 'default', timeZone: 'UTC' },
      { key: 'key-two', site: 'shop', timeZone: 'Europe/Berlin' },
      { key: 'key-two-rotated', site: 'shop', timeZone: 'Europe/Berlin' },
      { key: 'key-three', site: 'blog', timeZone: 'Asia/Kathmandu' },
    ],
    'UTC',
  );

  test('is enabled when keys are configured', () => {
    assert.equal(keys.enabled, true);
  });

  test('gives every configured key its site and the site its zone', () => {
    assert.deepEqual(keys.siteOf('key-one'), { name: 'default', timeZone: 'UTC' });
    assert.deepEqual(keys.siteOf('key-two'), { name: 'shop', timeZone: 'Europe/Berlin' });
    assert.deepEqual(keys.siteOf('key-three'), { name: 'blog', timeZone: 'Asia/Kathmandu' });
  });

  test('keys of one site give the same site', () => {
    assert.equal(keys.siteOf('key-two'), keys.siteOf('key-two-rotated'));
  });

  test('lists each site once, in the order the keys name them', () => {
    assert.deepEqual(
      keys.sites.map((site) => site.name),
      ['default', 'shop', 'blog'],
    );
  });

  test('refuses wrong keys, including near misses', () => {
    for (const key of ['', 'key', 'key-on', 'key-one ', ' key-one', 'KEY-ONE', 'key-one2', 'x']) {
      assert.equal(keys.siteOf(key), undefined, JSON.stringify(key));
    }
  });

  test('a presented header goes through end to end', () => {
    const presented = ApiKeys.presented({ authorization: 'bearer key-three' });
    assert.ok(presented !== undefined);
    assert.equal(keys.siteOf(presented)?.name, 'blog');
  });

  test('is disabled with no keys: accepts nothing, and the default site is the only one', () => {
    const none = new ApiKeys([], 'America/New_York');
    assert.equal(none.enabled, false);
    assert.equal(none.siteOf(''), undefined);
    assert.equal(none.siteOf('key-one'), undefined);
    assert.deepEqual(none.defaultSite, { name: 'default', timeZone: 'America/New_York' });
    assert.deepEqual(none.sites, [none.defaultSite]);
  });

  test('keys without a default-site key do not list the default site', () => {
    const only = new ApiKeys([{ key: 'k', site: 'shop', timeZone: 'UTC' }], 'UTC');
    assert.deepEqual(
      only.sites.map((site) => site.name),
      ['shop'],
    );
  });
});
