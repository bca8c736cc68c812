import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ClientAddressResolver, clientKey, parseCidr } from './client-address.js';

describe('parseCidr', () => {
  test('addresses and CIDRs of both families', () => {
    assert.deepEqual(parseCidr('10.0.0.0/8'), { address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    assert.deepEqual(parseCidr('192.0.2.7'), { address: '192.0.2.7', prefix: 32, family: 'ipv4' });
    assert.deepEqual(parseCidr('fd00::/8'), { address: 'fd00::', prefix: 8, family: 'ipv6' });
    assert.deepEqual(parseCidr('::1'), { address: '::1', prefix: 128, family: 'ipv6' });
    for (const bad of [
      '',
      'x',
      '10.0.0.0/33',
      '10.0.0.0/',
      '10.0.0.0/-1',
      '10.0.0/8',
      'fd00::/129',
    ]) {
      assert.equal(parseCidr(bad), undefined, bad);
    }
  });
});

describe('clientKey', () => {
  test('IPv4 as it is; IPv4-mapped IPv6 as IPv4', () => {
    assert.equal(clientKey('192.0.2.1'), '192.0.2.1');
    assert.equal(clientKey('::ffff:192.0.2.1'), '192.0.2.1');
  });

  test('IPv6 by its /64 prefix, however it is written', () => {
    const key = '2001:db8:1:2::/64';
    assert.equal(clientKey('2001:db8:1:2::1'), key);
    assert.equal(clientKey('2001:0db8:0001:0002:ffff:ffff:ffff:ffff'), key);
    assert.equal(clientKey('2001:DB8:1:2:a:b:c:d'), key);
    assert.notEqual(clientKey('2001:db8:1:3::1'), key);
    assert.equal(clientKey('::1'), '0:0:0:0::/64');
    assert.equal(clientKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
  });

  test('anything else as it is', () => {
    assert.equal(clientKey('not-an-address'), 'not-an-address');
  });
});

describe('ClientAddressResolver', () => {
  const resolver = new ClientAddressResolver(['10.0.0.0/8', 'fd00::/8']);

  test('X-Forwarded-For is read only from a trusted proxy', () => {
    assert.equal(resolver.resolve('10.1.2.3', '203.0.113.9'), '203.0.113.9');
    assert.equal(resolver.resolve('198.51.100.1', '203.0.113.9'), '198.51.100.1');
    assert.equal(resolver.resolve('::ffff:10.1.2.3', '203.0.113.9'), '203.0.113.9');
    assert.equal(resolver.resolve('fd00::5', '2001:db8::1'), '2001:db8::1');
    assert.equal(resolver.resolve('10.1.2.3', undefined), '10.1.2.3');
  });

  test('the right-most untrusted hop is the client; what it wrote to its left is not', () => {
    assert.equal(resolver.resolve('10.1.2.3', '1.1.1.1, 203.0.113.9, 10.9.9.9'), '203.0.113.9');
    assert.equal(resolver.resolve('10.1.2.3', '10.5.5.5, 10.9.9.9'), '10.5.5.5');
  });

  test('a malformed hop ends the walk at the last trusted one', () => {
    assert.equal(resolver.resolve('10.1.2.3', 'garbage'), '10.1.2.3');
    assert.equal(resolver.resolve('10.1.2.3', '203.0.113.9, garbage, 10.9.9.9'), '10.9.9.9');
  });

  test('with no trusted proxies the header is ignored', () => {
    assert.equal(new ClientAddressResolver([]).resolve('10.1.2.3', '203.0.113.9'), '10.1.2.3');
  });
});
