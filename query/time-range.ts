/**
 * From the request's `from`, `to` or `range` and `tz` to a range of instants, and from a range
 * to its buckets: the zone arithmetic of every endpoint, with no database in sight.
 */
import { invalid, QueryError } from './errors.js';
import {
  dayStart,
  hourStart,
  isPeriodStart,
  midnight,
  nextPeriodStart,
  type Period,
  periodStarts,
  previousPeriodStart,
} from './zone-time.js';

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

export const RANGE_NAMES = [
  'today',
  'yesterday',
  'last_24_hours',
  'last_7_days',
  'last_30_days',
] as const;
export type RangeName = (typeof RANGE_NAMES)[number];

export type Interval = 'minute' | 'hour' | 'day';

/** The longest range of each interval, and of a summary or breakdown. */
export const LIMITS = {
  minute: { ms: 48 * HOUR_MS, text: '48 hours' },
  hour: { ms: 31 * DAY_MS, text: '31 days' },
  day: { ms: 400 * DAY_MS, text: '400 days' },
  total: { ms: 400 * DAY_MS, text: '400 days' },
} as const;

export interface TimeRange {
  fromMs: number;
  /** Exclusive. */
  toMs: number;
}

const DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
const INSTANT =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,3})?)?(?:Z|[+-](\d{2}):(\d{2}))$/i;

/**
 * An ISO-8601 instant with `Z` or an offset (`2026-12-07T10:00:00Z`), or a date
 * (`2026-12-07`: midnight in `zone`).
 */
export function parseTime(text: string, parameter: string, zone: string): number {
  const date = DATE.exec(text);
  if (date !== null) {
    const [year, month, day] = [Number(date[1]), Number(date[2]), Number(date[3])];
    if (!validDate(year, month, day)) throw invalid(parameter, `${parameter}: no such date`);
    return midnight(year, month, day, zone);
  }
  const instant = INSTANT.exec(text);
  if (instant !== null) {
    const [year, month, day] = [Number(instant[1]), Number(instant[2]), Number(instant[3])];
    const ms = Date.parse(text);
    if (
      validDate(year, month, day) &&
      Number(instant[4]) < 24 &&
      Number(instant[5]) < 60 &&
      Number(instant[6] ?? 0) < 60 &&
      Number(instant[7] ?? 0) < 24 &&
      Number(instant[8] ?? 0) < 60 &&
      Number.isFinite(ms)
    ) {
      return ms;
    }
  }
  throw invalid(
    parameter,
    `${parameter}: expected an ISO-8601 instant with an offset (2026-12-07T10:00:00Z) or a date (2026-12-07)`,
  );
}

function validDate(year: number, month: number, day: number): boolean {
  const probe = new Date(Date.UTC(year, month - 1, day));
  return (
    year >= 1970 &&
    year <= 9999 &&
    probe.getUTCFullYear() === year &&
    probe.getUTCMonth() === month - 1 &&
    probe.getUTCDate() === day
  );
}

/** `from` and `to`, or `range` resolved in `zone` at `nowMs`. */
export function resolveRange(
  input: { from?: string | undefined; to?: string | undefined; range?: string | undefined },
  zone: string,
  nowMs: number,
): TimeRange {
  if (input.range !== undefined) {
    if (input.from !== undefined || input.to !== undefined) {
      throw invalid('range', 'give either range or from and to, not both');
    }
    if (!(RANGE_NAMES as readonly string[]).includes(input.range)) {
      throw invalid('range', `range: expected one of ${RANGE_NAMES.join(', ')}`);
    }
    return namedRange(input.range as RangeName, zone, nowMs);
  }
  if (input.from === undefined) throw invalid('from', 'from is required (or range)');
  if (input.to === undefined) throw invalid('to', 'to is required (or range)');
  const fromMs = parseTime(input.from, 'from', zone);
  const toMs = parseTime(input.to, 'to', zone);
  if (!(toMs > fromMs)) throw invalid('to', 'to must be after from (to is exclusive)');
  return { fromMs, toMs };
}

function namedRange(name: RangeName, zone: string, nowMs: number): TimeRange {
  const today = dayStart(nowMs, zone);
  const tomorrow = nextPeriodStart(today, 'day', zone);
  switch (name) {
    case 'today':
      return { fromMs: today, toMs: tomorrow };
    case 'yesterday':
      return { fromMs: previousPeriodStart(today, 'day', zone), toMs: today };
    case 'last_24_hours': {
      const toMs = nextPeriodStart(hourStart(nowMs, zone), 'hour', zone);
      return { fromMs: toMs - 24 * HOUR_MS, toMs };
    }
    case 'last_7_days':
    case 'last_30_days': {
      let fromMs = today;
      for (let i = 1; i < (name === 'last_7_days' ? 7 : 30); i++) {
        fromMs = previousPeriodStart(fromMs, 'day', zone);
      }
      return { fromMs, toMs: tomorrow };
    }
  }
}

/** The longest-range check, before any bucket is computed. */
export function checkLength(range: TimeRange, limit: keyof typeof LIMITS, parameter = 'to'): void {
  const { ms, text } = LIMITS[limit];
  if (range.toMs - range.fromMs > ms) {
    const what = limit === 'total' ? 'a range' : `a range by ${limit}`;
    throw new QueryError('range_too_long', `${what} may span at most ${text}`, parameter);
  }
}

/** Bucket starts of a timeseries; `minute` buckets are the aggregator's windows. */
export function bucketStarts(
  range: TimeRange,
  interval: Interval,
  zone: string,
  siteZone: string,
  windowMs: number,
): number[] {
  checkLength(range, interval);
  if (interval === 'minute') {
    for (const [name, ms] of [
      ['from', range.fromMs],
      ['to', range.toMs],
    ] as const) {
      if (ms % windowMs !== 0) {
        throw new QueryError(
          'range_unaligned',
          `${name} must start a ${windowMs / 1000}-second window for interval=minute`,
          name,
        );
      }
    }
    const starts: number[] = [];
    for (let at = range.fromMs; at < range.toMs; at += windowMs) starts.push(at);
    return starts;
  }
  const starts = periodBuckets(range, interval, zone);
  if (zone !== siteZone) {
    // The stored hours and days are the site zone's: another zone is answered only where its
    // boundaries are the same ones over the whole range.
    const site = periodStarts(range.fromMs, range.toMs, interval, siteZone, starts.length + 1);
    if (
      !isPeriodStart(range.fromMs, interval, siteZone) ||
      !site.aligned ||
      site.starts.length !== starts.length ||
      site.starts.some((start, i) => start !== starts[i])
    ) {
      throw new QueryError(
        'tz_unsupported',
        `the ${interval}s of ${zone} are not those of the site's zone ${siteZone} over this range; ask in ${siteZone}, or by minute`,
        'tz',
      );
    }
  }
  return starts;
}

function periodBuckets(range: TimeRange, period: Period, zone: string): number[] {
  if (!isPeriodStart(range.fromMs, period, zone)) {
    throw new QueryError(
      'range_unaligned',
      `from must start ${period === 'hour' ? 'an hour' : 'a day'} of ${zone} for interval=${period}`,
      'from',
    );
  }
  const limit = Math.ceil(LIMITS[period].ms / (period === 'hour' ? HOUR_MS : 23 * HOUR_MS)) + 2;
  const result = periodStarts(range.fromMs, range.toMs, period, zone, limit);
  if (!result.aligned) {
    throw new QueryError(
      'range_unaligned',
      `to must start ${period === 'hour' ? 'an hour' : 'a day'} of ${zone} for interval=${period}`,
      'to',
    );
  }
  return result.starts;
}

/**
 * The periods a total over `range` is read from: days when the range is whole days of the site
 * zone, else hours; the range must be whole hours of the site zone.
 */
export function totalPeriods(
  range: TimeRange,
  siteZone: string,
): { period: Period; starts: number[] } {
  checkLength(range, 'total');
  if (isPeriodStart(range.fromMs, 'day', siteZone)) {
    const days = periodStarts(range.fromMs, range.toMs, 'day', siteZone, 402);
    if (days.aligned) return { period: 'day', starts: days.starts };
  }
  for (const [name, ms] of [
    ['from', range.fromMs],
    ['to', range.toMs],
  ] as const) {
    if (!isPeriodStart(ms, 'hour', siteZone)) {
      throw new QueryError(
        'range_unaligned',
        `${name} must start an hour of the site's zone ${siteZone}: totals are read from its hours and days`,
        name,
      );
    }
  }
  const hours = periodStarts(range.fromMs, range.toMs, 'hour', siteZone, 400 * 25 + 1);
  return { period: 'hour', starts: hours.starts };
}

/** The range of as many periods immediately before `range`'s first. */
export function previousPeriod(
  range: TimeRange,
  period: Period,
  count: number,
  siteZone: string,
): TimeRange {
  let fromMs = range.fromMs;
  for (let i = 0; i < count; i++) fromMs = previousPeriodStart(fromMs, period, siteZone);
  return { fromMs, toMs: range.fromMs };
}
