import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Position, QuietClock, recordsWaiting } from './partition-backlog.js';

test('records wait when an end lies more than one offset past the position', () => {
  const ends = new Map([
    [0, { high: 100, low: 0 }],
    [1, { high: 51, low: 40 }],
  ]);
  const waiting = (entries: Array<[number, Position]>) => recordsWaiting(new Map(entries), ends);
  assert.equal(waiting([[0, 100]]), false, 'at the end');
  assert.equal(waiting([[0, 99]]), false, 'one offset short: a commit marker is never delivered');
  assert.equal(waiting([[0, 98]]), true);
  assert.equal(waiting([[1, 'beginning']]), true, 'from the low watermark');
  assert.equal(waiting([[2, 0]]), false, 'a partition the broker did not report');
  assert.equal(
    waiting([
      [0, 100],
      [1, 45],
    ]),
    true,
  );
});

test('a consumer quiet while records may wait is reported after a while, then every so often', () => {
  const clock = new QuietClock(20_000, 30_000);
  assert.equal(clock.observe(0, 7, true, true), undefined, 'the first look starts the clock');
  assert.equal(clock.observe(19_000, 7, true, undefined), undefined);
  assert.equal(clock.observe(20_000, 7, true, undefined), 20_000, 'unknown ends count as quiet');
  assert.equal(clock.observe(40_000, 7, true, true), undefined, 'said 20 s ago');
  assert.equal(clock.observe(50_000, 7, true, true), 50_000);
});

test('a delivery, no partitions or nothing to read is not quiet', () => {
  for (const [deliveries, assigned, waiting] of [
    [8, true, true],
    [7, false, true],
    [7, true, false],
  ] as const) {
    const clock = new QuietClock(20_000, 30_000);
    clock.observe(0, 7, true, true);
    assert.equal(clock.observe(25_000, deliveries, assigned, waiting), undefined);
    assert.equal(clock.observe(40_000, deliveries, true, true), undefined, 'the clock restarted');
    assert.equal(clock.observe(45_000, deliveries, true, true), 20_000);
  }
});
