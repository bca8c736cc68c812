/**
 * The figures each endpoint answers with, from validated parameters: buckets zero-filled and
 * marked complete, totals with unique users as a true union over the range, the previous period,
 * the breakdown by activity type, the last windows and their freshness.
 */
import type { ClientBase } from 'pg';
import { uniqueUsersOverRange } from '../shared/range-uniques.js';
import {
  type Figures,
  readFreshness,
  readPeriods,
  readTotals,
  readTypeTotals,
  readWindows,
} from './read-model.js';
import {
  bucketStarts,
  type Interval,
  previousPeriod,
  type TimeRange,
  totalPeriods,
} from './time-range.js';
import type { Period } from './zone-time.js';

export const METRICS = ['unique_users', 'page_views', 'events'] as const;
export type Metric = (typeof METRICS)[number];

/** Windows the realtime answer holds: the current one and the 30 before it. */
export const REALTIME_WINDOWS = 31;

/** Where a request's figures come from: the site, its zone and the zone asked in. */
export interface Scope {
  site: string;
  /** The zone the site's hours and days are stored in. */
  siteZone: string;
  /** The zone the request is answered in (`tz`, else the site's). */
  zone: string;
}

export interface Accuracy {
  kind: 'exact' | 'approximate';
  relative_standard_error?: number;
  relative_error_bound?: number;
}

export interface AnswerSettings {
  windowMs: number;
  /** A bucket whose end is this far behind the clock is final (lateness plus flushes). */
  settleMs: number;
}

const iso = (ms: number): string => new Date(ms).toISOString();
const pick = (figures: Figures | undefined, metric: Metric): number =>
  figures === undefined
    ? 0
    : metric === 'unique_users'
      ? figures.uniqueUsers
      : metric === 'page_views'
        ? figures.pageViews
        : figures.events;

export class Answers {
  constructor(private readonly settings: AnswerSettings) {}

  private complete(endMs: number, nowMs: number): boolean {
    return endMs + this.settings.settleMs <= nowMs;
  }

  async timeseries(
    client: ClientBase,
    scope: Scope,
    query: {
      metric: Metric;
      interval: Interval;
      range: TimeRange;
      activityType: string | undefined;
    },
    nowMs: number,
  ): Promise<object> {
    const { windowMs } = this.settings;
    const { range, interval, metric } = query;
    const starts = bucketStarts(range, interval, scope.zone, scope.siteZone, windowMs);
    const buckets: Array<{ start: string; value: number; complete: boolean }> = [];
    if (interval === 'minute') {
      const rows = new Map(
        (await readWindows(client, scope.site, range.fromMs, range.toMs, windowMs / 1000)).map(
          (row) => [row.start, row],
        ),
      );
      for (const start of starts) {
        const row = rows.get(start);
        const end = start + windowMs;
        buckets.push({
          start: iso(start),
          value: pick(row, metric),
          complete: end <= nowMs && (row?.isFinal ?? this.complete(end, nowMs)),
        });
      }
    } else {
      const rows = await readPeriods(
        client,
        scope.site,
        interval,
        range.fromMs,
        range.toMs,
        query.activityType ?? '',
      );
      starts.forEach((start, i) => {
        const end = starts[i + 1] ?? range.toMs;
        buckets.push({
          start: iso(start),
          value: pick(rows.get(start), metric),
          complete: this.complete(end, nowMs),
        });
      });
    }
    return {
      site: scope.site,
      time_zone: scope.zone,
      metric,
      interval,
      from: iso(range.fromMs),
      to: iso(range.toMs),
      ...(query.activityType === undefined ? {} : { activity_type: query.activityType }),
      buckets,
    };
  }

  async summary(
    client: ClientBase,
    scope: Scope,
    query: { range: TimeRange; activityType: string | undefined; comparePrevious: boolean },
    nowMs: number,
  ): Promise<object> {
    const { period, starts } = totalPeriods(query.range, scope.siteZone);
    const current = await this.total(client, scope.site, period, query.range, query.activityType);
    const answer: Record<string, unknown> = {
      site: scope.site,
      time_zone: scope.zone,
      from: iso(query.range.fromMs),
      to: iso(query.range.toMs),
      ...(query.activityType === undefined ? {} : { activity_type: query.activityType }),
      ...current,
      complete: this.complete(query.range.toMs, nowMs),
    };
    if (query.comparePrevious) {
      const before = previousPeriod(query.range, period, starts.length, scope.siteZone);
      answer.previous_period = {
        from: iso(before.fromMs),
        to: iso(before.toMs),
        ...(await this.total(client, scope.site, period, before, query.activityType)),
        complete: this.complete(before.toMs, nowMs),
      };
    }
    return answer;
  }

  async breakdown(
    client: ClientBase,
    scope: Scope,
    query: { range: TimeRange },
    nowMs: number,
  ): Promise<object> {
    const { period } = totalPeriods(query.range, scope.siteZone);
    const { fromMs, toMs } = query.range;
    const types = await readTypeTotals(client, scope.site, period, fromMs, toMs);
    const rows: object[] = [];
    // One union per type, one after another on this connection: at most MAX_ACTIVITY_TYPES.
    for (const type of types) {
      const users = await uniqueUsersOverRange(client, {
        site: scope.site,
        period,
        fromMs,
        toMs,
        activityType: type.activityType,
      });
      rows.push({
        activity_type: type.activityType,
        events: type.events,
        page_views: type.pageViews,
        unique_users: users.uniqueUsers,
        accuracy: accuracy(users),
      });
    }
    return {
      site: scope.site,
      time_zone: scope.zone,
      from: iso(fromMs),
      to: iso(toMs),
      by: 'activity_type',
      complete: this.complete(toMs, nowMs),
      rows,
    };
  }

  /** `consumerLagRecords`: the whole topic's lag (`consumer-lag.ts`), or null when unknown. */
  async realtime(
    client: ClientBase,
    scope: Scope,
    nowMs: number,
    consumerLagRecords: number | null,
  ): Promise<object> {
    const { windowMs } = this.settings;
    const current = nowMs - (nowMs % windowMs);
    const fromMs = current - (REALTIME_WINDOWS - 1) * windowMs;
    const rows = new Map(
      (await readWindows(client, scope.site, fromMs, current + windowMs, windowMs / 1000)).map(
        (row) => [row.start, row],
      ),
    );
    const windows: object[] = [];
    for (let start = fromMs; start <= current; start += windowMs) {
      const row = rows.get(start);
      const end = start + windowMs;
      windows.push({
        start: iso(start),
        unique_users: row?.uniqueUsers ?? 0,
        page_views: row?.pageViews ?? 0,
        events: row?.events ?? 0,
        complete: end <= nowMs && (row?.isFinal ?? this.complete(end, nowMs)),
      });
    }
    const freshness = await readFreshness(client, scope.site, nowMs - 2 * 86_400_000);
    return {
      site: scope.site,
      time_zone: scope.zone,
      window_seconds: windowMs / 1000,
      windows,
      freshness: {
        newest_window_with_events:
          freshness.newestWindowWithEvents === null ? null : iso(freshness.newestWindowWithEvents),
        flushed_at: freshness.flushedAt === null ? null : iso(freshness.flushedAt),
        consumer_lag_records: consumerLagRecords,
      },
    };
  }

  /** Unique users (a union over the periods), page views and events over a range. */
  private async total(
    client: ClientBase,
    site: string,
    period: Period,
    range: TimeRange,
    activityType: string | undefined,
  ): Promise<object> {
    const users = await uniqueUsersOverRange(client, {
      site,
      period,
      fromMs: range.fromMs,
      toMs: range.toMs,
      ...(activityType === undefined ? {} : { activityType }),
    });
    const totals = await readTotals(
      client,
      site,
      period,
      range.fromMs,
      range.toMs,
      activityType ?? '',
    );
    return {
      unique_users: users.uniqueUsers,
      page_views: totals.pageViews,
      events: totals.events,
      accuracy: accuracy(users),
    };
  }
}

function accuracy(answer: {
  exact: boolean;
  relativeStandardError: number;
  relativeErrorBound: number;
}): Accuracy {
  return answer.exact
    ? { kind: 'exact' }
    : {
        kind: 'approximate',
        relative_standard_error: answer.relativeStandardError,
        relative_error_bound: answer.relativeErrorBound,
      };
}
