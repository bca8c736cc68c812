import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { QueryError } from './errors.js';
import { bucketStarts, parseTime, resolveRange, totalPeriods } from './time-range.js';
import { dayStart, hourStart, midnight, nextPeriodStart } from './zone-time.js';

const iso = (ms: number) => new Date(ms).toISOString();
const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof QueryError) return `${err.code}:${err.parameter ?? ''}`;
    throw err;
  }
  return 'none';
};

describe('zone arithmetic', () => {
  test('hours and days of +05:45, -03:30/-02:30 and a daylight-saving day', () => {
    assert.equal(
      iso(hourStart(Date.UTC(2026, 10, 1, 10, 20), 'Asia/Kathmandu')),
      '2026-11-01T10:15:00.000Z',
    );
    assert.equal(
      iso(dayStart(Date.UTC(2026, 10, 1, 10), 'Asia/Kathmandu')),
      '2026-10-31T18:15:00.000Z',
    );
    assert.equal(iso(midnight(2026, 11, 1, 'America/St_Johns')), '2026-11-01T02:30:00.000Z');
    // St John's 1 November 2026: 25 hours (clocks go back at 02:00).
    const start = midnight(2026, 11, 1, 'America/St_Johns');
    assert.equal(nextPeriodStart(start, 'day', 'America/St_Johns') - start, 25 * 3_600_000);
    // Berlin 29 March 2026: 23 hours.
    const spring = midnight(2026, 3, 29, 'Europe/Berlin');
    assert.equal(nextPeriodStart(spring, 'day', 'Europe/Berlin') - spring, 23 * 3_600_000);
  });
});

describe('parseTime and resolveRange', () => {
  test('instants with offsets, dates as midnight in the zone; malformed refused', () => {
    assert.equal(parseTime('2026-12-07T10:00:00Z', 'from', 'UTC'), Date.UTC(2026, 11, 7, 10));
    assert.equal(parseTime('2026-12-07T15:45:00+05:45', 'from', 'UTC'), Date.UTC(2026, 11, 7, 10));
    assert.equal(parseTime('2026-12-07', 'from', 'Asia/Kathmandu'), Date.UTC(2026, 11, 6, 18, 15));
    for (const bad of [
      '2026-12-07T10:00:00',
      '2026-02-30',
      '2026-13-01',
      'yesterday',
      '2026-12-07T25:00Z',
    ]) {
      assert.equal(
        code(() => parseTime(bad, 'from', 'UTC')),
        'invalid_parameter:from',
        bad,
      );
    }
  });

  test('named ranges resolve in the zone', () => {
    const now = Date.UTC(2026, 11, 7, 20, 0); // 01:45 on 8 December in Kathmandu
    const today = resolveRange({ range: 'today' }, 'Asia/Kathmandu', now);
    assert.equal(iso(today.fromMs), '2026-12-07T18:15:00.000Z');
    assert.equal(iso(today.toMs), '2026-12-08T18:15:00.000Z');
    const last7 = resolveRange({ range: 'last_7_days' }, 'UTC', now);
    assert.equal(iso(last7.fromMs), '2026-12-01T00:00:00.000Z');
    assert.equal(iso(last7.toMs), '2026-12-08T00:00:00.000Z');
    const last24 = resolveRange({ range: 'last_24_hours' }, 'UTC', now);
    assert.equal(last24.toMs - last24.fromMs, 86_400_000);
    assert.equal(iso(last24.toMs), '2026-12-07T21:00:00.000Z');
    assert.equal(
      code(() => resolveRange({ range: 'today', from: '2026-12-01' }, 'UTC', now)),
      'invalid_parameter:range',
    );
    assert.equal(
      code(() => resolveRange({ from: '2026-12-02', to: '2026-12-01' }, 'UTC', now)),
      'invalid_parameter:to',
    );
  });
});

describe('buckets', () => {
  test('hours of the site zone; another zone only where its boundaries are the same', () => {
    const range = { fromMs: Date.UTC(2026, 10, 1, 0, 15), toMs: Date.UTC(2026, 10, 1, 3, 15) };
    assert.equal(bucketStarts(range, 'hour', 'Asia/Kathmandu', 'Asia/Kathmandu', 60_000).length, 3);
    assert.equal(
      code(() => bucketStarts(range, 'hour', 'Asia/Kathmandu', 'UTC', 60_000)),
      'tz_unsupported:tz',
    );
    assert.equal(
      code(() => bucketStarts(range, 'hour', 'UTC', 'UTC', 60_000)),
      'range_unaligned:from',
    );
    // Same offsets: Europe/London keeps UTC in November.
    const days = { fromMs: Date.UTC(2026, 10, 1), toMs: Date.UTC(2026, 10, 3) };
    assert.equal(bucketStarts(days, 'day', 'Europe/London', 'UTC', 60_000).length, 2);
    // But not across its change back (25 October 2026).
    const october = { fromMs: Date.UTC(2026, 9, 24), toMs: Date.UTC(2026, 9, 27) };
    assert.equal(
      code(() => bucketStarts(october, 'day', 'Europe/London', 'UTC', 60_000)),
      'range_unaligned:from',
    );
  });

  test('limits per interval', () => {
    const from = Date.UTC(2026, 0, 1);
    assert.equal(
      code(() =>
        bucketStarts(
          { fromMs: from, toMs: from + 48 * 3_600_000 + 60_000 },
          'minute',
          'UTC',
          'UTC',
          60_000,
        ),
      ),
      'range_too_long:to',
    );
    assert.equal(
      bucketStarts({ fromMs: from, toMs: from + 48 * 3_600_000 }, 'minute', 'UTC', 'UTC', 60_000)
        .length,
      2880,
    );
    assert.equal(
      code(() =>
        bucketStarts({ fromMs: from, toMs: from + 32 * 86_400_000 }, 'hour', 'UTC', 'UTC', 60_000),
      ),
      'range_too_long:to',
    );
    assert.equal(
      bucketStarts({ fromMs: from, toMs: from + 400 * 86_400_000 }, 'day', 'UTC', 'UTC', 60_000)
        .length,
      400,
    );
  });

  test('totals: days when whole days of the site zone, else hours, else refused', () => {
    const day = totalPeriods({ fromMs: Date.UTC(2026, 10, 1), toMs: Date.UTC(2026, 10, 3) }, 'UTC');
    assert.equal(day.period, 'day');
    assert.equal(day.starts.length, 2);
    const hours = totalPeriods(
      { fromMs: Date.UTC(2026, 10, 1, 5), toMs: Date.UTC(2026, 10, 1, 9) },
      'UTC',
    );
    assert.equal(hours.period, 'hour');
    assert.equal(hours.starts.length, 4);
    assert.equal(
      code(() =>
        totalPeriods(
          { fromMs: Date.UTC(2026, 10, 1, 5), toMs: Date.UTC(2026, 10, 1, 9) },
          'Asia/Kathmandu',
        ),
      ),
      'range_unaligned:from',
    );
  });
});
