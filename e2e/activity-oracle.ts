/**
 * The truth the exactly-once tests compare PostgreSQL with: a seeded generator of activity
 * events, an oracle that counts every event the pipeline accepted per window (unique users, page
 * views, events), a sender that posts batches to a real ingest and tells the oracle only about
 * the events ingest answered as accepted, and a poller that waits until the view
 * `user_activity_window_totals` equals the oracle exactly.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { waitFor } from '../shared/testing.js';

/** An event as a client sends it: `user_id` may be a number, `timestamp` a zoned RFC 3339 string. */
export interface ClientEvent {
  user_id: string | number;
  activity_type: string;
  timestamp: number | string;
  /** Repeats of an id already counted in the same window count once (a client resend). */
  event_id?: string;
}

/** One window of the view, in the form the tests compare. */
export interface WindowTotals {
  window_start: string;
  unique_users: number;
  page_view_count: number;
  event_count: number;
}

/** A small seeded PRNG (mulberry32): a failing run can be replayed from the seed it prints. */
export class SeededRandom {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [items[i], items[j]] = [items[j] as T, items[i] as T];
    }
    return items;
  }
}

/** A seed from the environment (`TEST_SEED`) to replay a failure, else a fresh one. */
export function testSeed(): number {
  const fromEnv = Number(process.env.TEST_SEED);
  return Number.isSafeInteger(fromEnv) ? fromEnv : Math.floor(Math.random() * 2 ** 31);
}

const OTHER_TYPES = ['click', 'scroll', 'signup', 'purchase'];

/**
 * Random events: users drawn with a skew from `users` ids (so the same users repeat across
 * windows), about half of them page views. Some users are sent as integers, some as the same
 * integer in a string — one user either way. Timestamps are epoch ms or RFC 3339 with a random
 * zone offset.
 */
export function randomEvent(random: SeededRandom, users: number, timestampMs: number): ClientEvent {
  const n = Math.floor(random.next() ** 2 * users);
  // Ids below 50 are numeric users: sent as a number or as its decimal string.
  const user_id = n < 50 ? (random.next() < 0.5 ? n : String(n)) : `user-${n}`;
  const activity_type = random.next() < 0.5 ? PAGE_VIEW : random.pick(OTHER_TYPES);
  const timestamp =
    random.next() < 0.6 ? timestampMs : rfc3339(timestampMs, random.pick([0, 120, -330, 345]));
  return { user_id, activity_type, timestamp };
}

/** `ms` as RFC 3339 in a zone `offsetMinutes` east of UTC (the same instant). */
export function rfc3339(ms: number, offsetMinutes: number): string {
  const local = new Date(ms + offsetMinutes * 60_000).toISOString().slice(0, -1);
  if (offsetMinutes === 0) return `${local}Z`;
  const sign = offsetMinutes > 0 ? '+' : '-';
  const abs = Math.abs(offsetMinutes);
  return `${local}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

const pad = (n: number): string => String(n).padStart(2, '0');

/** The start of the epoch-aligned window holding `ms`. */
export function windowStartOf(ms: number, windowMs: number): number {
  return ms - (ms % windowMs);
}

/** Counts accepted events per window, exactly as the pipeline should. */
export class ActivityOracle {
  private readonly windows = new Map<
    number,
    { users: Set<string>; eventIds: Set<string>; pageViews: number; events: number }
  >();
  private counted = 0;

  constructor(readonly windowMs: number) {}

  /** Events counted so far. */
  get events(): number {
    return this.counted;
  }

  add(event: ClientEvent): void {
    const ms = typeof event.timestamp === 'number' ? event.timestamp : Date.parse(event.timestamp);
    assert.ok(Number.isFinite(ms), `oracle: unparseable timestamp ${event.timestamp}`);
    const start = windowStartOf(ms, this.windowMs);
    let window = this.windows.get(start);
    if (window === undefined) {
      window = { users: new Set(), eventIds: new Set(), pageViews: 0, events: 0 };
      this.windows.set(start, window);
    }
    if (event.event_id !== undefined) {
      if (window.eventIds.has(event.event_id)) return;
      window.eventIds.add(event.event_id);
    }
    window.users.add(String(event.user_id));
    window.events++;
    if (event.activity_type === PAGE_VIEW) window.pageViews++;
    this.counted++;
  }

  /** What the view must hold, ordered by window start. */
  expected(): WindowTotals[] {
    return [...this.windows]
      .sort(([a], [b]) => a - b)
      .map(([start, window]) => ({
        window_start: new Date(start).toISOString(),
        unique_users: window.users.size,
        page_view_count: window.pageViews,
        event_count: window.events,
      }));
  }
}

/** What ingest answered for one batch. */
export interface BatchOutcome {
  status: number;
  accepted: ClientEvent[];
  rejected: number;
}

/**
 * Posts `events` to ingest's `POST /activities` and returns the events it accepted: all of them
 * on 200, all but the listed ones on 207, none otherwise (400, 503…).
 */
export async function postActivities(
  port: number,
  events: readonly ClientEvent[],
): Promise<BatchOutcome> {
  const response = await fetch(`http://127.0.0.1:${port}/activities`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(events),
    signal: AbortSignal.timeout(30_000),
  });
  const body = (await response.json().catch(() => ({}))) as {
    rejected?: Array<{ index: number }>;
  };
  if (response.status === 200) return { status: 200, accepted: [...events], rejected: 0 };
  if (response.status === 207) {
    const rejected = new Set((body.rejected ?? []).map((entry) => entry.index));
    return {
      status: 207,
      accepted: events.filter((_, index) => !rejected.has(index)),
      rejected: rejected.size,
    };
  }
  return { status: response.status, accepted: [], rejected: events.length };
}

/** Totals of a paced send. */
export interface SendSummary {
  sent: number;
  accepted: number;
  rejected: number;
  /** Responses by status code. */
  statuses: Record<number, number>;
}

/**
 * Sends `events` in order, `batchSize` per request, `concurrency` requests at a time, spread
 * evenly over `durationMs` (0: as fast as ingest answers). Every accepted event goes to `oracle`.
 */
export async function sendEvents(options: {
  port: number;
  events: readonly ClientEvent[];
  oracle: ActivityOracle;
  batchSize: number;
  concurrency: number;
  durationMs?: number;
  /** Stops sending the remaining batches when it returns true. */
  stopped?: () => boolean;
}): Promise<SendSummary> {
  const batches: ClientEvent[][] = [];
  for (let i = 0; i < options.events.length; i += options.batchSize) {
    batches.push(options.events.slice(i, i + options.batchSize));
  }
  const summary: SendSummary = { sent: 0, accepted: 0, rejected: 0, statuses: {} };
  const spacingMs = (options.durationMs ?? 0) / Math.max(1, batches.length);
  const startedAt = Date.now();
  let next = 0;
  const sender = async (): Promise<void> => {
    while (next < batches.length && options.stopped?.() !== true) {
      const index = next++;
      const batch = batches[index] as ClientEvent[];
      const dueInMs = startedAt + index * spacingMs - Date.now();
      if (dueInMs > 0) await new Promise((resolve) => setTimeout(resolve, dueInMs));
      const outcome = await postActivities(options.port, batch);
      for (const event of outcome.accepted) options.oracle.add(event);
      summary.sent += batch.length;
      summary.accepted += outcome.accepted.length;
      summary.rejected += outcome.rejected;
      summary.statuses[outcome.status] = (summary.statuses[outcome.status] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, sender));
  return summary;
}

/** The view of `schema`, in the form `ActivityOracle.expected()` gives. */
export async function readWindowTotals(db: pg.ClientBase, schema: string): Promise<WindowTotals[]> {
  const result = await db.query<{
    window_start: Date;
    unique_users: number;
    page_view_count: number;
    event_count: number;
  }>(
    `SELECT window_start, unique_users::int, page_view_count::int, event_count::int
       FROM ${schema}.user_activity_window_totals ORDER BY window_start`,
  );
  return result.rows.map((row) => ({ ...row, window_start: row.window_start.toISOString() }));
}

/**
 * Waits until the view equals the oracle exactly, every window and nothing else; returns how long
 * that took. On timeout the error lists the windows that differ, plus what `context` adds.
 */
export async function waitForOracle(
  db: pg.ClientBase,
  schema: string,
  oracle: ActivityOracle,
  timeoutMs: number,
  context: () => string = () => '',
): Promise<number> {
  const startedAt = Date.now();
  const expected = oracle.expected();
  const wanted = JSON.stringify(expected);
  let seen: WindowTotals[] = [];
  await waitFor(
    async () => {
      seen = await readWindowTotals(db, schema);
      return JSON.stringify(seen) === wanted ? true : undefined;
    },
    {
      timeoutMs,
      intervalMs: 250,
      what: 'the view to equal the oracle',
      describe: () => `${describeDifference(seen, expected)}${context()}`,
    },
  );
  return Date.now() - startedAt;
}

/** The windows where `seen` and `expected` differ, one per line. */
export function describeDifference(seen: WindowTotals[], expected: WindowTotals[]): string {
  const starts = [...new Set([...seen, ...expected].map((row) => row.window_start))].sort();
  const figures = (row: WindowTotals | undefined): string =>
    row === undefined
      ? 'none'
      : `users ${row.unique_users}, page views ${row.page_view_count}, events ${row.event_count}`;
  const lines: string[] = [];
  for (const start of starts) {
    const a = seen.find((row) => row.window_start === start);
    const b = expected.find((row) => row.window_start === start);
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      lines.push(`\n  ${start}: view ${figures(a)}; oracle ${figures(b)}`);
    }
  }
  return lines.join('');
}
