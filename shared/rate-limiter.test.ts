import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RateLimiter } from './rate-limiter.js';

/** Takes one token per call at `nowMs`; returns each call's answer (0: admitted, else seconds). */
function takeMany(limiter: RateLimiter, client: string, count: number, nowMs: number): number[] {
  return Array.from({ length: count }, () => limiter.take(client, 1, nowMs));
}

describe('RateLimiter', () => {
  test('admits a full burst at once, then refuses', () => {
    const limiter = new RateLimiter(10, 5);
    assert.deepEqual(takeMany(limiter, 'a', 5, 1_000), [0, 0, 0, 0, 0]);
    assert.ok(limiter.take('a', 1, 1_000) > 0);
  });

  test('refills at the configured rate as the injected clock advances', () => {
    const limiter = new RateLimiter(10, 5);
    takeMany(limiter, 'a', 5, 0);
    // 10 per second: one token every 100 ms.
    assert.ok(limiter.take('a', 1, 50) > 0, 'half a token has refilled');
    assert.equal(limiter.take('a', 1, 100), 0, 'a whole token refilled by 100 ms');
    assert.ok(limiter.take('a', 1, 100) > 0, 'and only one');
    assert.deepEqual(takeMany(limiter, 'a', 4, 500), [0, 0, 0, 0], 'four more by 500 ms');
    assert.ok(limiter.take('a', 1, 500) > 0);
  });

  test('never refills past the burst, however long the client was idle', () => {
    const limiter = new RateLimiter(10, 3);
    takeMany(limiter, 'a', 3, 0);
    assert.deepEqual(takeMany(limiter, 'a', 3, 3_600_000), [0, 0, 0]);
    assert.ok(limiter.take('a', 1, 3_600_000) > 0);
  });

  test('a clock stepping backwards refills nothing, and refill resumes from the new reading', () => {
    const limiter = new RateLimiter(10, 2);
    takeMany(limiter, 'a', 2, 10_000);
    assert.ok(limiter.take('a', 1, 5_000) > 0, 'no tokens for negative elapsed time');
    assert.ok(limiter.take('a', 1, 5_050) > 0, 'half a token since the step');
    assert.equal(limiter.take('a', 1, 5_100), 0, 'one token 100 ms after the step');
  });

  test('Retry-After is whole seconds, at least 1, and waiting that long is enough', () => {
    const limiter = new RateLimiter(1, 4);
    takeMany(limiter, 'a', 4, 0);
    const waitSec = limiter.take('a', 1, 0);
    assert.equal(waitSec, 1);
    assert.ok(Number.isInteger(waitSec));
    assert.equal(limiter.take('a', 1, waitSec * 1000), 0);

    // Half a token short: still a whole second, rounded up.
    const fast = new RateLimiter(2, 1);
    fast.take('b', 1, 0);
    assert.equal(fast.take('b', 1, 250), 1);
  });

  test('Retry-After grows with the cost, capped at a full burst', () => {
    const limiter = new RateLimiter(2, 10);
    takeMany(limiter, 'a', 10, 0);
    assert.equal(limiter.take('a', 6, 0), 3, '6 tokens at 2 per second');
    // A cost above the burst is charged the burst: it can pass once the bucket is full.
    assert.equal(limiter.take('a', 1_000, 0), 5);
    assert.equal(limiter.take('a', 1_000, 5_000), 0);
  });

  test('clients have separate buckets', () => {
    const limiter = new RateLimiter(1, 2);
    takeMany(limiter, 'a', 2, 0);
    assert.ok(limiter.take('a', 1, 0) > 0);
    assert.deepEqual(takeMany(limiter, 'b', 2, 0), [0, 0]);
  });

  test('a full table evicts no one: new clients share one overflow bucket', () => {
    const limiter = new RateLimiter(1, 1, 2);
    assert.equal(limiter.take('a', 1, 0), 0);
    assert.equal(limiter.take('b', 1, 0), 0);
    assert.ok(limiter.take('a', 1, 0) > 0, 'a has used its burst');
    // The table is full of clients in debt: c and d are charged to the one overflow bucket.
    assert.equal(limiter.take('c', 1, 0), 0, 'the overflow bucket starts full');
    assert.ok(limiter.take('d', 1, 0) > 0, 'and is shared by every client not in the table');
    assert.equal(limiter.trackedClients, 2);
    assert.ok(limiter.take('a', 1, 0) > 0, 'a is still limited');
    assert.ok(limiter.take('b', 1, 0) > 0, 'b is still limited');
  });

  test('a refilled client is forgotten to make room, losing nothing', () => {
    const limiter = new RateLimiter(1, 2, 2);
    takeMany(limiter, 'a', 2, 0);
    takeMany(limiter, 'b', 2, 1_000);
    // At 2 s `a` (idle 2 s at 1/s, burst 2) is full again: forgetting it equals keeping it.
    assert.equal(limiter.take('c', 1, 2_000), 0);
    assert.equal(limiter.trackedClients, 2);
    assert.ok(limiter.take('b', 1, 2_000) === 0, 'b refilled one token');
    assert.ok(limiter.take('b', 1, 2_000) > 0, 'but only one: b was kept');
  });

  test('spraying 200,000 addresses neither resets an abuser nor limits a known client', () => {
    const limiter = new RateLimiter(1, 2, 100_000);
    let nowMs = 0;
    let abuserAdmitted = 0;
    let legitRefused = 0;
    for (let i = 0; i < 200_000; i++) {
      nowMs = i / 10; // 10,000 requests a second: 20 s
      limiter.take(`spoofed-${i}`, 1, nowMs);
      if (i % 100 === 0 && limiter.take('abuser', 1, nowMs) === 0) abuserAdmitted++;
      if (i % 20_000 === 0 && limiter.take('legit', 1, nowMs) > 0) legitRefused++;
    }
    // Burst 2 plus 1 per second over 20 s.
    assert.ok(abuserAdmitted <= 2 + 20 + 1, `abuser admitted ${abuserAdmitted} times`);
    assert.equal(legitRefused, 0);
    assert.ok(limiter.trackedClients <= 100_000);
  });

  test('many distinct clients never grow the map past its bound', () => {
    const limiter = new RateLimiter(100, 100, 1_000);
    for (let i = 0; i < 10_000; i++) limiter.take(`client-${i}`, 1, i);
    assert.equal(limiter.trackedClients, 1_000);
  });

  test('a rate of 0 disables limiting and tracks no client', () => {
    const limiter = new RateLimiter(0, 1);
    assert.equal(limiter.enabled, false);
    assert.deepEqual(takeMany(limiter, 'a', 1_000, 0), new Array(1_000).fill(0));
    assert.equal(limiter.take('a', 1_000_000, 0), 0);
    assert.equal(limiter.trackedClients, 0);
    assert.equal(new RateLimiter(1, 1).enabled, true);
  });
});
