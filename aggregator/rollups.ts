import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ClientBase } from 'pg';
import pgCopyStreams from 'pg-copy-streams';
import { HLL_EMPTY_SQL, hllAddAggSql } from '../shared/hll.js';
import { hashBytes } from './byte-string-set.js';
import {
  encodeAddedUsers,
  type HeldPeriod,
  type PartitionProgress,
  type PeriodKey,
  PeriodUserCache,
  periodKeyId,
} from './period-users.js';
import type { WindowMembership, WindowRow } from './window-state.js';

const { from: copyFrom } = pgCopyStreams;

/**
 * Hour and day figures (`period_metrics`), kept up to date from the membership as a flush stores
 * it, in the same transaction: every event stored in `window_events` for the first time — a
 * closing window's events, or a late event counted through a closed window's membership — is
 * added to its site's hour and day, once for every type and once for its own activity type. The
 * period's users decide which of its users are new there, so the unique counts are exact and a
 * replay, which stores no event twice, adds nothing. Those users are held in memory between
 * flushes (`period-users.ts`) and stored as one list per period and flush (`period_users`): the
 * counting is in the aggregator, and a flush writes a few rows per period, not one per user.
 *
 * Hours and days are the site's: its time zone (`user_activity_metrics.time_zone`) places each
 * window, so a day is 23, 24 or 25 hours long and starts at the zone's midnight, and an hour of
 * a zone 45 minutes off UTC starts at :15 UTC. A window always lies within one hour of any zone
 * because WINDOW_SEC divides 15 minutes.
 *
 * Activity types are counted by name up to `maxActivityTypes` per site (`activity_types`, first
 * come, never forgotten); the rest count as `other`, so random types cannot blow up storage.
 */

/** The activity type of the rows that count every type. */
export const EVERY_TYPE = '';
/** What types past a site's limit count as. */
export const OTHER_TYPE = 'other';

/**
 * Creates the transaction's list of events newly stored by SQL (a merge or events for closed
 * windows; the rollups' input beside the closing windows), emptied at COMMIT.
 */
export async function prepareRollupSource(client: ClientBase): Promise<void> {
  await client.query(
    `CREATE TEMP TABLE IF NOT EXISTS rollup_source (
       site TEXT, window_start TIMESTAMPTZ, source_partition INTEGER, user_id TEXT,
       activity_type TEXT, page_view BOOLEAN) ON COMMIT DELETE ROWS`,
  );
}

/** How a flush keeps the hour and day figures; null where it keeps none. */
export interface RollupSettings {
  maxActivityTypes: number;
  /**
   * The periods' users held between flushes (the aggregator's); without it each flush reads
   * the stored users of every period it touches.
   */
  periodUsers?: PeriodUserCache;
}

/** What `rollUp` added. */
export interface RollupOutcome {
  /** Events added to the hour and day figures. */
  events: number;
  /** Of those, events whose type was past their site's limit: counted as `other`. */
  otherTyped: number;
}

/** A closing window whose events are all new to the membership, as the flush copied it. */
export interface ClosingWindow {
  row: WindowRow;
  membership: WindowMembership;
}

/** The hour and day a window lies in, in its site's zone. */
interface WindowPeriods {
  hourStart: number;
  dayStart: number;
  dayEnd: number;
}

const HOUR_MS = 3_600_000;
/** Windows whose periods are remembered (a pure function of start and zone); then forgotten. */
const MAX_REMEMBERED_WINDOWS = 10_000;
const windowPeriods = new Map<string, WindowPeriods>();
const encoder = new TextEncoder();

/**
 * Adds the newly stored events — every event of the `closing` windows, and those `rollup_source`
 * lists — to the hour and day figures of their sites, with the users new to each period, and
 * empties the list. `epochs` are the flushed partitions' ownership epochs.
 */
export async function rollUp(
  client: ClientBase,
  settings: RollupSettings,
  windowSeconds: number,
  closing: readonly ClosingWindow[],
  epochs: ReadonlyMap<number, number>,
  progress: readonly PartitionProgress[],
): Promise<RollupOutcome> {
  const cache = settings.periodUsers ?? new PeriodUserCache();
  for (const [partition, epoch] of epochs) cache.claim(partition, epoch);
  const stored = await client.query<{
    site: string;
    window_ms: string;
    source_partition: number;
    time_zone: string;
    user_id: string;
    activity_type: string;
    page_view: boolean;
  }>(
    `SELECT s.site, (extract(epoch FROM s.window_start) * 1000)::bigint AS window_ms,
            s.source_partition, m.time_zone, s.user_id, s.activity_type, s.page_view
       FROM rollup_source s
       JOIN user_activity_metrics m
         ON m."timestamp" = s.window_start AND m.source_partition = s.source_partition
        AND m.site = s.site AND m.window_seconds = $1`,
    [windowSeconds],
  );
  const types = await countedTypes(client, cache, settings.maxActivityTypes, [
    ...closing.flatMap(({ row, membership }) =>
      membership.typeNames.map((type) => ({ site: row.site, type })),
    ),
    ...stored.rows.map((row) => ({ site: row.site, type: row.activity_type })),
  ]);
  const periodsOf = await periodsOfWindows(client, [
    ...closing.map(({ row }) => ({ start: row.windowStart, timeZone: row.timeZone })),
    ...stored.rows.map((row) => ({ start: Number(row.window_ms), timeZone: row.time_zone })),
  ]);
  /** The four periods an event of a window and type counts in. */
  const periodsFor = (
    partition: number,
    site: string,
    windowStart: number,
    timeZone: string,
    type: string,
  ): HeldPeriod[] => {
    const { hourStart, dayStart, dayEnd } = periodsOf(windowStart, timeZone);
    const counted = types(site, type);
    const hold = (period: 'hour' | 'day', start: number, end: number, activityType: string) =>
      cache.period({ partition, site, period, start, activityType }, end, timeZone);
    return [
      hold('hour', hourStart, hourStart + HOUR_MS, EVERY_TYPE),
      hold('day', dayStart, dayEnd, EVERY_TYPE),
      hold('hour', hourStart, hourStart + HOUR_MS, counted),
      hold('day', dayStart, dayEnd, counted),
    ];
  };
  // Every period first, so that their stored users are read in one query.
  const closingPeriods = closing.map(({ row, membership }) =>
    membership.typeNames.map((type) =>
      periodsFor(row.partition, row.site, row.windowStart, row.timeZone, type),
    ),
  );
  const storedPeriods = stored.rows.map((row) =>
    periodsFor(
      row.source_partition,
      row.site,
      Number(row.window_ms),
      row.time_zone,
      row.activity_type,
    ),
  );
  await cache.load(client);

  /** A type its site has no room for: counted as `other`. */
  const pastLimit = (site: string, type: string) =>
    type !== OTHER_TYPE && types(site, type) === OTHER_TYPE;
  let events = 0;
  let otherTyped = 0;
  closing.forEach(({ row, membership }, w) => {
    const byType = closingPeriods[w] as HeldPeriod[][];
    const others = membership.typeNames.map((type) => pastLimit(row.site, type));
    const users = membership.users;
    const arena = users.arenaBytes;
    const count = membership.pageViews.length;
    for (let i = 0; i < count; i++) {
      const user = membership.eventUsers[i] as number;
      const start = users.entryStart(user);
      const end = users.entryEnd(user);
      const hash = hashBytes(arena, start, end);
      const pageView = membership.pageViews[i] === 1;
      const type = membership.eventTypes[i] as number;
      for (const period of byType[type] as HeldPeriod[]) {
        period.count(arena, start, end, hash, pageView);
      }
      if (others[type]) otherTyped++;
    }
    events += count;
  });
  stored.rows.forEach((row, r) => {
    const bytes = encoder.encode(row.user_id);
    const hash = hashBytes(bytes, 0, bytes.length);
    for (const period of storedPeriods[r] as HeldPeriod[]) {
      period.count(bytes, 0, bytes.length, hash, row.page_view);
    }
    if (pastLimit(row.site, row.activity_type)) otherTyped++;
    events++;
  });

  const touched = cache.touched();
  if (touched.length > 0) await writePeriods(client, touched);
  await sealSketches(client, progress);
  await client.query('TRUNCATE rollup_source');
  return { events, otherTyped };
}

/**
 * Adds what this flush counted to each touched period's row, stores the users new to each
 * period as one list, and grows the sketches of sealed periods by them.
 */
async function writePeriods(client: ClientBase, touched: readonly HeldPeriod[]): Promise<void> {
  const upserted = await client.query<{
    source_partition: number;
    site: string;
    period: string;
    period_start: Date;
    activity_type: string;
    sealed: boolean;
  }>(
    `INSERT INTO period_metrics AS m
       (site, period, period_start, activity_type, source_partition, time_zone, period_end,
        unique_users, page_view_count, event_count)
     SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::int[],
                          $6::text[], $7::timestamptz[], $8::bigint[], $9::bigint[], $10::bigint[])
     ON CONFLICT (site, period, period_start, activity_type, source_partition) DO UPDATE SET
       unique_users    = m.unique_users + EXCLUDED.unique_users,
       page_view_count = m.page_view_count + EXCLUDED.page_view_count,
       event_count     = m.event_count + EXCLUDED.event_count,
       updated_at      = now()
     RETURNING source_partition, site, period, period_start, activity_type,
               users_hll IS NOT NULL AS sealed`,
    [
      touched.map((p) => p.key.site),
      touched.map((p) => p.key.period),
      touched.map((p) => new Date(p.key.start).toISOString()),
      touched.map((p) => p.key.activityType),
      touched.map((p) => p.key.partition),
      touched.map((p) => p.timeZone),
      touched.map((p) => new Date(p.end).toISOString()),
      touched.map((p) => p.added.length),
      touched.map((p) => p.pageViews),
      touched.map((p) => p.events),
    ],
  );
  const withUsers = touched.filter((period) => period.added.length > 0);
  if (withUsers.length === 0) return;
  await pipeline(
    Readable.from(encodeAddedUsers(withUsers)),
    client.query(
      copyFrom(
        'COPY period_users (source_partition, site, period, period_start, activity_type, user_ids) FROM STDIN',
      ),
    ),
  );
  // A sealed period (late users) grows its sketch by its new users; the others are sealed from
  // their lists once their windows have closed.
  const sealed = new Set(
    upserted.rows
      .filter((row) => row.sealed)
      .map((row) =>
        periodKeyId({
          partition: row.source_partition,
          site: row.site,
          period: row.period as PeriodKey['period'],
          start: row.period_start.getTime(),
          activityType: row.activity_type,
        }),
      ),
  );
  for (const period of withUsers) {
    const { key } = period;
    if (!sealed.has(periodKeyId(key))) continue;
    await client.query(
      `UPDATE period_metrics SET users_hll = hll_union(users_hll,
         (SELECT ${hllAddAggSql('u')} FROM unnest($6::text[]) AS u))
        WHERE source_partition = $1 AND site = $2 AND period = $3 AND period_start = $4
          AND activity_type = $5`,
      [
        key.partition,
        key.site,
        key.period,
        new Date(key.start).toISOString(),
        key.activityType,
        period.addedUserIds(),
      ],
    );
  }
}

/**
 * The hour and day of each window in its zone, as PostgreSQL's time-zone rules place them (a
 * day of 23 or 25 hours, an hour starting at :15 UTC): asked once per window and zone.
 */
async function periodsOfWindows(
  client: ClientBase,
  windows: ReadonlyArray<{ start: number; timeZone: string }>,
): Promise<(start: number, timeZone: string) => WindowPeriods> {
  const missing = new Map<string, { start: number; timeZone: string }>();
  for (const window of windows) {
    const id = `${window.start}|${window.timeZone}`;
    if (!windowPeriods.has(id)) missing.set(id, window);
  }
  if (missing.size > 0) {
    if (windowPeriods.size + missing.size > MAX_REMEMBERED_WINDOWS) windowPeriods.clear();
    const asked = [...missing.values()];
    const result = await client.query<{ hour_ms: string; day_ms: string; day_end_ms: string }>(
      `SELECT (extract(epoch FROM w - ((w AT TIME ZONE z) - date_trunc('hour', w AT TIME ZONE z)))
                * 1000)::bigint AS hour_ms,
              (extract(epoch FROM date_trunc('day', w AT TIME ZONE z) AT TIME ZONE z)
                * 1000)::bigint AS day_ms,
              (extract(epoch FROM (date_trunc('day', w AT TIME ZONE z) + interval '1 day')
                AT TIME ZONE z) * 1000)::bigint AS day_end_ms
         FROM unnest($1::timestamptz[], $2::text[]) WITH ORDINALITY AS k(w, z, i)
        ORDER BY k.i`,
      [asked.map((w) => new Date(w.start).toISOString()), asked.map((w) => w.timeZone)],
    );
    result.rows.forEach((row, i) => {
      const window = asked[i] as { start: number; timeZone: string };
      windowPeriods.set(`${window.start}|${window.timeZone}`, {
        hourStart: Number(row.hour_ms),
        dayStart: Number(row.day_ms),
        dayEnd: Number(row.day_end_ms),
      });
    });
  }
  return (start, timeZone) => windowPeriods.get(`${start}|${timeZone}`) as WindowPeriods;
}

/**
 * What each (site, type) counts as: its own name, or `other` once its site has no room. Types
 * not known yet are registered first (`registerActivityTypes`); a type once registered stays.
 */
async function countedTypes(
  client: ClientBase,
  cache: PeriodUserCache,
  maxActivityTypes: number,
  seen: ReadonlyArray<{ site: string; type: string }>,
): Promise<(site: string, type: string) => string> {
  const unknown = new Map<string, Set<string>>();
  for (const { site, type } of seen) {
    if (type === OTHER_TYPE || cache.activityTypes.get(site)?.has(type)) continue;
    const types = unknown.get(site) ?? new Set<string>();
    unknown.set(site, types);
    types.add(type);
  }
  if (unknown.size > 0) {
    const sites = [...unknown.keys()].sort();
    await registerActivityTypes(
      client,
      maxActivityTypes,
      sites.flatMap((site) => [...(unknown.get(site) as Set<string>)].map((type) => [site, type])),
    );
    const registered = await client.query<{ site: string; activity_type: string }>(
      'SELECT site, activity_type FROM activity_types WHERE site = ANY($1::text[])',
      [sites],
    );
    for (const site of sites) cache.activityTypes.set(site, new Set());
    for (const row of registered.rows) cache.activityTypes.get(row.site)?.add(row.activity_type);
  }
  return (site, type) =>
    type !== OTHER_TYPE && cache.activityTypes.get(site)?.has(type) ? type : OTHER_TYPE;
}

/**
 * Registers `candidates` (site, type) that their site does not count by name yet, while it has
 * room (in name order, so that one flush decides the same whatever its order). A site's types are
 * registered under a lock of its own: two instances never both take its last free place.
 */
async function registerActivityTypes(
  client: ClientBase,
  maxActivityTypes: number,
  candidates: ReadonlyArray<readonly [string, string]>,
): Promise<void> {
  const sites = [...new Set(candidates.map(([site]) => site))].sort();
  // In site order, so that two flushes never wait for each other in a cycle.
  await client.query(
    `SELECT pg_advisory_xact_lock(hashtext('activity_types'), hashtext(site))
       FROM unnest($1::text[]) WITH ORDINALITY AS u(site, n) ORDER BY n`,
    [sites],
  );
  await client.query(
    `WITH candidates AS (
       SELECT DISTINCT c.site, c.activity_type
         FROM unnest($1::text[], $2::text[]) AS c(site, activity_type)
        WHERE c.activity_type <> $4
          AND NOT EXISTS (SELECT 1 FROM activity_types t
                           WHERE t.site = c.site AND t.activity_type = c.activity_type)
     ), ranked AS (
       SELECT site, activity_type,
              row_number() OVER (PARTITION BY site ORDER BY activity_type) AS n
         FROM candidates
     )
     INSERT INTO activity_types (site, activity_type)
     SELECT r.site, r.activity_type FROM ranked r
      WHERE r.n <= $3 - (SELECT count(*) FROM activity_types t WHERE t.site = r.site)
     ON CONFLICT DO NOTHING`,
    [
      candidates.map(([site]) => site),
      candidates.map(([, type]) => type),
      maxActivityTypes,
      OTHER_TYPE,
    ],
  );
}

/** The sketch of a `period_metrics` row `m`, from its users. */
const SKETCH_OF_USERS = `(
  SELECT coalesce(${hllAddAggSql('u.user_id')}, ${HLL_EMPTY_SQL})
    FROM period_users l CROSS JOIN LATERAL unnest(l.user_ids) AS u(user_id)
   WHERE l.source_partition = m.source_partition AND l.site = m.site
     AND l.period = m.period AND l.period_start = m.period_start
     AND l.activity_type = m.activity_type)`;

/**
 * Builds the sketch of each period whose windows have all closed in its partition, from the
 * period's users: once per period, so that a flush does not rewrite a growing sketch (up to
 * 80 KB) every time. Later users (late events) grow it (`growSketches`). Retention seals the
 * rest before their users are dropped (`sealSketchesBefore`).
 */
async function sealSketches(
  client: ClientBase,
  progress: readonly PartitionProgress[],
): Promise<void> {
  if (progress.length === 0) return;
  await client.query(
    `UPDATE period_metrics m SET users_hll = ${SKETCH_OF_USERS}
       FROM unnest($1::int[], $2::timestamptz[]) AS p(partition, complete_before)
      WHERE m.users_hll IS NULL AND m.source_partition = p.partition
        AND m.period_end <= p.complete_before`,
    [
      progress.map((entry) => entry.partition),
      progress.map((entry) => new Date(entry.completeBefore).toISOString()),
    ],
  );
}

/** Seals every period that ended before `beforeMs`, whatever its partition's progress. */
export async function sealSketchesBefore(client: ClientBase, beforeMs: number): Promise<number> {
  const result = await client.query(
    `UPDATE period_metrics m SET users_hll = ${SKETCH_OF_USERS}
      WHERE m.users_hll IS NULL AND m.period_end <= $1`,
    [new Date(beforeMs).toISOString()],
  );
  return result.rowCount ?? 0;
}
