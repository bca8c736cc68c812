/**
 * The SQL of the read side: what the query service reads from the views the aggregator keeps
 * (docs/DATA.md). Every function takes a connection whose search_path is the pipeline's schema.
 */
import type { ClientBase } from 'pg';
import type { Period } from './zone-time.js';

export interface Figures {
  uniqueUsers: number;
  pageViews: number;
  events: number;
}

export interface WindowFigures extends Figures {
  start: number;
  isFinal: boolean;
  /** When a flush last wrote the window: microseconds since the epoch, as text. */
  cursor: string;
}

/** A window row as the stream sends it, with its site. */
export interface SiteWindowFigures extends WindowFigures {
  site: string;
}

/** `updated_at` as microseconds since the epoch (exact; a JS Date keeps milliseconds only). */
const CURSOR_SQL = `(extract(epoch FROM updated_at) * 1000000)::bigint::text`;
/** The instant of a cursor parameter. */
const FROM_CURSOR_SQL = (parameter: string) =>
  `(timestamptz 'epoch' + ${parameter}::bigint * interval '1 microsecond')`;

const iso = (ms: number): string => new Date(ms).toISOString();

interface WindowRow {
  site: string;
  start: Date;
  unique_users: string;
  page_view_count: string;
  event_count: string;
  is_final: boolean;
  cursor: string;
}

const toWindow = (row: WindowRow): SiteWindowFigures => ({
  site: row.site,
  start: row.start.getTime(),
  uniqueUsers: Number(row.unique_users),
  pageViews: Number(row.page_view_count),
  events: Number(row.event_count),
  isFinal: row.is_final,
  cursor: row.cursor,
});

/** A site's windows starting in [fromMs, toMs). */
export async function readWindows(
  client: ClientBase,
  site: string,
  fromMs: number,
  toMs: number,
  windowSeconds: number,
): Promise<SiteWindowFigures[]> {
  const result = await client.query<WindowRow>(
    `SELECT site, window_start AS start, unique_users, page_view_count, event_count, is_final,
            ${CURSOR_SQL} AS cursor
       FROM site_window_totals
      WHERE site = $1 AND window_start >= $2 AND window_start < $3 AND window_seconds = $4
      ORDER BY window_start`,
    [site, iso(fromMs), iso(toMs), windowSeconds],
  );
  return result.rows.map(toWindow);
}

/**
 * Windows starting at or after `fromMs` that a flush wrote after `cursor` (exclusive), or at
 * or after it (`inclusive`): every site's, or one site's. Oldest write first.
 */
export async function readChangedWindows(
  client: ClientBase,
  options: {
    fromMs: number;
    windowSeconds: number;
    cursor: string;
    inclusive: boolean;
    site?: string;
  },
): Promise<SiteWindowFigures[]> {
  const parameters: unknown[] = [iso(options.fromMs), options.windowSeconds, options.cursor];
  if (options.site !== undefined) parameters.push(options.site);
  const result = await client.query<WindowRow>(
    `SELECT site, window_start AS start, unique_users, page_view_count, event_count, is_final,
            ${CURSOR_SQL} AS cursor
       FROM site_window_totals
      WHERE window_start >= $1 AND window_seconds = $2
        AND updated_at ${options.inclusive ? '>=' : '>'} ${FROM_CURSOR_SQL('$3')}
        ${options.site === undefined ? '' : 'AND site = $4'}
      ORDER BY updated_at, site, window_start`,
    parameters,
  );
  return result.rows.map(toWindow);
}

/** A site's hour or day figures (one activity type, or '' for every type) in [fromMs, toMs). */
export async function readPeriods(
  client: ClientBase,
  site: string,
  period: Period,
  fromMs: number,
  toMs: number,
  activityType: string,
): Promise<Map<number, Figures>> {
  const result = await client.query<{
    start: Date;
    unique_users: string;
    page_view_count: string;
    event_count: string;
  }>(
    `SELECT period_start AS start, unique_users, page_view_count, event_count
       FROM site_period_totals
      WHERE site = $1 AND period = $2 AND activity_type = $3
        AND period_start >= $4 AND period_start < $5`,
    [site, period, activityType, iso(fromMs), iso(toMs)],
  );
  return new Map(
    result.rows.map((row) => [
      row.start.getTime(),
      {
        uniqueUsers: Number(row.unique_users),
        pageViews: Number(row.page_view_count),
        events: Number(row.event_count),
      },
    ]),
  );
}

/** Page views and events per activity type over [fromMs, toMs), most events first. */
export async function readTypeTotals(
  client: ClientBase,
  site: string,
  period: Period,
  fromMs: number,
  toMs: number,
): Promise<Array<{ activityType: string; pageViews: number; events: number }>> {
  const result = await client.query<{
    activity_type: string;
    page_views: string;
    events: string;
  }>(
    `SELECT activity_type, sum(page_view_count) AS page_views, sum(event_count) AS events
       FROM period_metrics
      WHERE site = $1 AND period = $2 AND activity_type <> ''
        AND period_start >= $3 AND period_start < $4
      GROUP BY activity_type
      ORDER BY events DESC, activity_type`,
    [site, period, iso(fromMs), iso(toMs)],
  );
  return result.rows.map((row) => ({
    activityType: row.activity_type,
    pageViews: Number(row.page_views),
    events: Number(row.events),
  }));
}

/** Page views and events over [fromMs, toMs) of one type ('' for every type). */
export async function readTotals(
  client: ClientBase,
  site: string,
  period: Period,
  fromMs: number,
  toMs: number,
  activityType: string,
): Promise<{ pageViews: number; events: number }> {
  const result = await client.query<{ page_views: string | null; events: string | null }>(
    `SELECT sum(page_view_count) AS page_views, sum(event_count) AS events
       FROM period_metrics
      WHERE site = $1 AND period = $2 AND activity_type = $3
        AND period_start >= $4 AND period_start < $5`,
    [site, period, activityType, iso(fromMs), iso(toMs)],
  );
  const row = result.rows[0];
  return { pageViews: Number(row?.page_views ?? 0), events: Number(row?.events ?? 0) };
}

/** The zone the site's rows were written in, newest first; undefined for a site with none. */
export async function readSiteZone(client: ClientBase, site: string): Promise<string | undefined> {
  const day = await client.query<{ time_zone: string }>(
    `SELECT time_zone FROM period_metrics WHERE site = $1 AND period = 'day'
      ORDER BY period_start DESC LIMIT 1`,
    [site],
  );
  if (day.rows[0] !== undefined) return day.rows[0].time_zone;
  // A new site has minute rows before its first day row.
  const minute = await client.query<{ time_zone: string }>(
    `SELECT time_zone FROM user_activity_metrics
      WHERE site = $1 AND "timestamp" > now() - interval '2 days'
      ORDER BY "timestamp" DESC LIMIT 1`,
    [site],
  );
  return minute.rows[0]?.time_zone;
}

/** The newest window with events of a site, and when a flush last wrote one of its windows. */
export async function readFreshness(
  client: ClientBase,
  site: string,
  sinceMs: number,
): Promise<{ newestWindowWithEvents: number | null; flushedAt: number | null }> {
  const result = await client.query<{ newest: Date | null; flushed: Date | null }>(
    `SELECT (SELECT max("timestamp") FROM user_activity_metrics
              WHERE site = $1 AND "timestamp" >= $2 AND event_count > 0) AS newest,
            (SELECT max(updated_at) FROM user_activity_metrics
              WHERE site = $1 AND "timestamp" >= $2) AS flushed`,
    [site, iso(sinceMs)],
  );
  const row = result.rows[0];
  return {
    newestWindowWithEvents: row?.newest?.getTime() ?? null,
    flushedAt: row?.flushed?.getTime() ?? null,
  };
}
