import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CorsPolicy } from './cors.js';

const METHODS = ['POST', 'OPTIONS'];

describe('CorsPolicy with exact origins', () => {
  const policy = new CorsPolicy(['https://app.example', 'http://localhost:3000']);

  test('an allowed origin is echoed, with Vary: Origin', () => {
    assert.deepEqual(policy.responseHeaders('https://app.example'), {
      'access-control-allow-origin': 'https://app.example',
      vary: 'Origin',
    });
    assert.deepEqual(policy.responseHeaders('http://localhost:3000'), {
      'access-control-allow-origin': 'http://localhost:3000',
      vary: 'Origin',
    });
  });

  test('origins are matched exactly', () => {
    for (const origin of [
      'https://APP.example',
      'https://app.example/',
      'https://app.example:443',
      'http://app.example',
      'https://evil.app.example',
      'https://app.example.evil',
      'null',
      '',
    ]) {
      assert.deepEqual(policy.responseHeaders(origin), {}, origin);
      assert.equal(policy.preflightHeaders(origin, METHODS), undefined, origin);
    }
  });

  test('a request without Origin gets no CORS headers', () => {
    assert.deepEqual(policy.responseHeaders(undefined), {});
    assert.equal(policy.preflightHeaders(undefined, METHODS), undefined);
  });

  test('a preflight from an allowed origin lists methods, headers and max-age', () => {
    assert.deepEqual(policy.preflightHeaders('https://app.example', METHODS), {
      'access-control-allow-origin': 'https://app.example',
      vary: 'Origin',
      'access-control-allow-methods': 'POST, OPTIONS',
      'access-control-allow-headers': 'content-type, content-encoding, authorization, x-api-key',
      'access-control-max-age': '600',
    });
  });
});

describe('CorsPolicy with *', () => {
  const policy = new CorsPolicy(['*']);

  test('any origin is allowed with a literal *, and nothing varies', () => {
    for (const origin of ['https://app.example', 'null', 'http://x:1']) {
      assert.deepEqual(policy.responseHeaders(origin), { 'access-control-allow-origin': '*' });
    }
  });

  test('a preflight from any origin is answered without Vary', () => {
    const headers = policy.preflightHeaders('https://anything.example', METHODS);
    assert.ok(headers !== undefined);
    assert.equal(headers['access-control-allow-origin'], '*');
    assert.equal(headers.vary, undefined);
    assert.equal(headers['access-control-allow-methods'], 'POST, OPTIONS');
  });

  test('* among exact origins still allows any origin', () => {
    const mixed = new CorsPolicy(['https://app.example', '*']);
    assert.deepEqual(mixed.responseHeaders('https://other.example'), {
      'access-control-allow-origin': '*',
    });
  });

  test('a request without Origin still gets no CORS headers', () => {
    assert.deepEqual(policy.responseHeaders(undefined), {});
    assert.equal(policy.preflightHeaders(undefined, METHODS), undefined);
  });
});

describe('CorsPolicy with no origins', () => {
  const policy = new CorsPolicy([]);

  test('sends no CORS headers and refuses every preflight', () => {
    assert.deepEqual(policy.responseHeaders('https://app.example'), {});
    assert.equal(policy.preflightHeaders('https://app.example', METHODS), undefined);
  });
});

describe('CorsPolicy.refuses (writes)', () => {
  test('a listed set refuses other origins, not listed ones nor requests without Origin', () => {
    const policy = new CorsPolicy(['https://app.example.com']);
    assert.equal(policy.refuses('https://evil.example'), true);
    assert.equal(policy.refuses('null'), true);
    assert.equal(policy.refuses('https://app.example.com'), false);
    assert.equal(policy.refuses(undefined), false);
  });

  test('`*` and an empty list refuse no origin', () => {
    assert.equal(new CorsPolicy(['*']).refuses('https://evil.example'), false);
    assert.equal(new CorsPolicy([]).refuses('https://evil.example'), false);
  });
});
