/**
 * The truth the rollup tests compare PostgreSQL with: every counted event of every site, and
 * from them each site's minute figures and its hour and day figures, per activity type and for
 * every type, in the site's time zone — computed here with `Intl`, independently of the SQL that
 * places windows in hours and days.
 */
import type pg from 'pg';
import { PAGE_VIEW } from '../shared/event-schema.js';

/** An event as ingest stamps it on a record. */
export interface SiteEvent {
  site: string;
  time_zone: string;
  user_id: string;
  activity_type: string;
  /** Epoch ms. */
  timestamp: number;
  event_id: string;
}

/** One figure, keyed as the views key it. */
export interface Figure {
  key: string;
  unique_users: number;
  page_view_count: number;
  event_count: number;
}

interface Tally {
  users: Set<string>;
  pageViews: number;
  events: number;
}

/** The activity type of the rows that count every type. */
const EVERY_TYPE = '';

export class RollupOracle {
  /** (site, window) → the event ids counted there: a repeat is counted once. */
  private readonly ids = new Map<string, Set<string>>();
  private readonly minutes = new Map<string, Tally>();
  private readonly periods = new Map<string, Tally>();

  constructor(readonly windowMs: number) {}

  add(event: SiteEvent): void {
    const windowStart = event.timestamp - (event.timestamp % this.windowMs);
    const window = `${event.site}|${iso(windowStart)}`;
    let ids = this.ids.get(window);
    if (ids === undefined) {
      ids = new Set();
      this.ids.set(window, ids);
    }
    if (ids.has(event.event_id)) return;
    ids.add(event.event_id);
    count(this.minutes, window, event);
    const hour = localHourStart(windowStart, event.time_zone);
    const day = localDayStart(windowStart, event.time_zone);
    for (const type of [EVERY_TYPE, event.activity_type]) {
      count(this.periods, `${event.site}|hour|${iso(hour)}|${type}`, event);
      count(this.periods, `${event.site}|day|${iso(day)}|${type}`, event);
    }
  }

  /** Each site's minute figures: keys `site|window start`. */
  expectedMinutes(): Figure[] {
    return figures(this.minutes);
  }

  /** Each site's hour and day figures: keys `site|hour or day|start|type` ('' for every type). */
  expectedPeriods(): Figure[] {
    return figures(this.periods);
  }
}

function count(tallies: Map<string, Tally>, key: string, event: SiteEvent): void {
  let tally = tallies.get(key);
  if (tally === undefined) {
    tally = { users: new Set(), pageViews: 0, events: 0 };
    tallies.set(key, tally);
  }
  tally.users.add(event.user_id);
  tally.events++;
  if (event.activity_type === PAGE_VIEW) tally.pageViews++;
}

function figures(tallies: Map<string, Tally>): Figure[] {
  return [...tallies]
    .map(([key, tally]) => ({
      key,
      unique_users: tally.users.size,
      page_view_count: tally.pageViews,
      event_count: tally.events,
    }))
    .sort((a, b) => a.key.localeCompare(b.key));
}

const iso = (ms: number): string => new Date(ms).toISOString();

const formats = new Map<string, Intl.DateTimeFormat>();

/** The wall-clock fields of instant `ms` in `zone`. */
function local(ms: number, zone: string) {
  let format = formats.get(zone);
  if (format === undefined) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formats.set(zone, format);
  }
  const parts = Object.fromEntries(
    format.formatToParts(new Date(ms)).map((part) => [part.type, Number(part.value)]),
  ) as Record<'year' | 'month' | 'day' | 'hour' | 'minute' | 'second', number>;
  return parts;
}

/** `zone`'s offset from UTC at instant `ms`, in ms (Kathmandu: +5:45). */
export function zoneOffsetMs(ms: number, zone: string): number {
  const p = local(ms, zone);
  const wall = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
  return wall - (ms - (ms % 1000));
}

/** The instant the local hour holding `ms` began, in `zone`. */
export function localHourStart(ms: number, zone: string): number {
  const p = local(ms, zone);
  return ms - (ms % 1000) - (p.minute * 60 + p.second) * 1000;
}

/** The instant the local day holding `ms` began (the zone's midnight), in `zone`. */
export function localDayStart(ms: number, zone: string): number {
  const p = local(ms, zone);
  const midnightWall = Date.UTC(p.year, p.month - 1, p.day);
  // Midnight's own offset: a day with a daylight-saving change has another offset at its start.
  let start = midnightWall - zoneOffsetMs(ms, zone);
  start = midnightWall - zoneOffsetMs(start, zone);
  return start;
}

/** Each site's minute figures as the view `site_window_totals` holds them. */
export async function readMinutes(db: pg.ClientBase, schema: string): Promise<Figure[]> {
  const result = await db.query<{
    site: string;
    start: Date;
    unique_users: string;
    page_view_count: string;
    event_count: string;
  }>(
    `SELECT site, window_start AS start, unique_users, page_view_count, event_count
       FROM ${schema}.site_window_totals`,
  );
  return result.rows
    .map((row) => ({
      key: `${row.site}|${row.start.toISOString()}`,
      unique_users: Number(row.unique_users),
      page_view_count: Number(row.page_view_count),
      event_count: Number(row.event_count),
    }))
    .sort((a, b) => a.key.localeCompare(b.key));
}

/** Each site's hour and day figures as the view `site_period_totals` holds them. */
export async function readPeriods(db: pg.ClientBase, schema: string): Promise<Figure[]> {
  const result = await db.query<{
    site: string;
    period: string;
    start: Date;
    activity_type: string;
    unique_users: string;
    page_view_count: string;
    event_count: string;
  }>(
    `SELECT site, period, period_start AS start, activity_type, unique_users, page_view_count,
            event_count
       FROM ${schema}.site_period_totals`,
  );
  return result.rows
    .map((row) => ({
      key: `${row.site}|${row.period}|${row.start.toISOString()}|${row.activity_type}`,
      unique_users: Number(row.unique_users),
      page_view_count: Number(row.page_view_count),
      event_count: Number(row.event_count),
    }))
    .sort((a, b) => a.key.localeCompare(b.key));
}

/** The first few figures that differ, for a failure message. */
export function figureDifferences(seen: Figure[], expected: Figure[], limit = 8): string {
  const byKey = new Map(seen.map((figure) => [figure.key, figure]));
  const lines: string[] = [];
  for (const want of expected) {
    const got = byKey.get(want.key);
    byKey.delete(want.key);
    if (got === undefined || JSON.stringify(got) !== JSON.stringify(want)) {
      lines.push(`${want.key}: expected ${JSON.stringify(want)}, saw ${JSON.stringify(got)}`);
    }
  }
  for (const extra of byKey.values())
    lines.push(`${extra.key}: unexpected ${JSON.stringify(extra)}`);
  const shown = lines.slice(0, limit).join('\n  ');
  return lines.length > limit ? `${shown}\n  … ${lines.length - limit} more` : shown;
}
