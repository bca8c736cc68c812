import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StallDetector } from './stall-detector.js';

const look = (nowMs: number, progress: number, overrides = {}) => ({
  nowMs,
  progress,
  excused: false,
  waiting: true as boolean | undefined,
  ...overrides,
});

test('work waiting with no progress for the timeout is a stall', () => {
  const detector = new StallDetector(10_000);
  assert.equal(detector.observe(look(0, 5)), false, 'the first look only starts counting');
  assert.equal(detector.observe(look(5_000, 5)), false, 'waiting since 5 s');
  assert.equal(detector.observe(look(14_000, 5)), false);
  assert.equal(detector.observe(look(15_000, 5)), true);
});

test('progress, an excuse or an unknown answer starts the wait over', () => {
  for (const interruption of [
    { progress: 6 },
    { excused: true },
    { waiting: undefined },
    { waiting: false },
  ]) {
    const detector = new StallDetector(10_000);
    detector.observe(look(0, 5));
    detector.observe(look(5_000, 5));
    const deliveries = 'progress' in interruption ? interruption.progress : 5;
    assert.equal(detector.observe(look(10_000, deliveries, interruption)), false);
    assert.equal(detector.observe(look(15_000, deliveries)), false, JSON.stringify(interruption));
    assert.equal(detector.observe(look(24_000, deliveries)), false);
    assert.equal(detector.observe(look(25_000, deliveries)), true);
  }
});

test('replacements that bring no progress back off, and progress restores the timeout', () => {
  const detector = new StallDetector(10_000);
  detector.replaced(5);
  assert.equal(detector.currentTimeoutMs, 10_000, 'a first replacement keeps the timeout');
  detector.replaced(5);
  assert.equal(detector.currentTimeoutMs, 20_000);
  for (let i = 0; i < 10; i++) detector.replaced(5);
  assert.equal(detector.currentTimeoutMs, 160_000, 'at most 16 times the timeout');
  detector.observe(look(0, 5));
  assert.equal(detector.observe(look(100_000, 5)), false);
  detector.observe(look(110_000, 6));
  assert.equal(detector.currentTimeoutMs, 10_000);
});
