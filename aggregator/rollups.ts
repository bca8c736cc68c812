import type { ClientBase } from 'pg';
import { HLL_EMPTY_SQL, hllAddAggSql } from '../shared/hll.js';

/**
 * Hour and day figures (`period_metrics`), kept up to date from the membership as a flush stores
 * it, in the same transaction: every event stored in `window_events` for the first time — a
 * closing window's events, or a late event counted through a closed window's membership — is
 * added to its site's hour and day, once for every type and once for its own activity type. The
 * period's users (`period_users`) decide which of its users are new there, so the unique counts
 * are exact and a replay, which stores no event twice, adds nothing.
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
 * Creates the transaction's list of newly stored events (the rollups' input) and of the users
 * new to their periods, both emptied at COMMIT.
 */
export async function prepareRollupSource(client: ClientBase): Promise<void> {
  await client.query(
    `CREATE TEMP TABLE IF NOT EXISTS rollup_source (
       site TEXT, window_start TIMESTAMPTZ, source_partition INTEGER, user_id TEXT,
       activity_type TEXT, page_view BOOLEAN) ON COMMIT DELETE ROWS`,
  );
  await client.query(
    `CREATE TEMP TABLE IF NOT EXISTS rollup_new_users (
       source_partition INTEGER, site TEXT, period TEXT, period_start TIMESTAMPTZ,
       activity_type TEXT, user_id TEXT) ON COMMIT DELETE ROWS`,
  );
}

/**
 * Where each flushed partition stands: every window ending at or before `completeBefore` (epoch
 * ms) is closed once the flush commits, so its periods ending by then have all their users.
 */
export interface PartitionProgress {
  partition: number;
  completeBefore: number;
}

/** What `rollUp` added. */
export interface RollupOutcome {
  /** Events added to the hour and day figures. */
  events: number;
  /** Of those, events whose type was past their site's limit: counted as `other`. */
  otherTyped: number;
}

/**
 * Adds the events listed in `rollup_source` to the hour and day figures of their sites, and
 * empties the list.
 */
export async function rollUp(
  client: ClientBase,
  windowSeconds: number,
  maxActivityTypes: number,
  progress: readonly PartitionProgress[],
): Promise<RollupOutcome> {
  await registerActivityTypes(client, maxActivityTypes);
  const result = await client.query<{ events: string; other_typed: string }>(
    `WITH events AS (
       SELECT s.site, s.source_partition, m.time_zone, s.user_id, s.page_view,
              CASE WHEN t.activity_type IS NULL THEN $2 ELSE s.activity_type END AS activity_type,
              t.activity_type IS NULL AND s.activity_type <> $2 AS other_typed,
              -- The window's hour and day in the site's zone, as instants.
              s.window_start - ((s.window_start AT TIME ZONE m.time_zone)
                                - date_trunc('hour', s.window_start AT TIME ZONE m.time_zone))
                AS hour_start,
              date_trunc('day', s.window_start AT TIME ZONE m.time_zone) AT TIME ZONE m.time_zone
                AS day_start,
              (date_trunc('day', s.window_start AT TIME ZONE m.time_zone) + interval '1 day')
                AT TIME ZONE m.time_zone AS day_end
         FROM rollup_source s
         JOIN user_activity_metrics m
           ON m."timestamp" = s.window_start AND m.window_seconds = $1
          AND m.source_partition = s.source_partition AND m.site = s.site
         LEFT JOIN activity_types t ON t.site = s.site AND t.activity_type = s.activity_type
     ), keyed AS (
       SELECT e.site, e.source_partition, e.time_zone, e.user_id, e.page_view,
              p.period, p.period_start, p.period_end, p.activity_type
         FROM events e
        CROSS JOIN LATERAL (
               VALUES ('hour', e.hour_start, e.hour_start + interval '1 hour', $3),
                      ('day', e.day_start, e.day_end, $3),
                      ('hour', e.hour_start, e.hour_start + interval '1 hour', e.activity_type),
                      ('day', e.day_start, e.day_end, e.activity_type))
            AS p(period, period_start, period_end, activity_type)
     ), new_users AS (
       INSERT INTO period_users
         (source_partition, site, period, period_start, activity_type, user_id)
       SELECT DISTINCT source_partition, site, period, period_start, activity_type, user_id
         FROM keyed
       ON CONFLICT DO NOTHING
       RETURNING source_partition, site, period, period_start, activity_type, user_id
     ), kept_new_users AS (
       INSERT INTO rollup_new_users SELECT * FROM new_users
     ), user_counts AS (
       SELECT source_partition, site, period, period_start, activity_type, count(*) AS users
         FROM new_users GROUP BY 1, 2, 3, 4, 5
     ), event_counts AS (
       SELECT source_partition, site, period, period_start, activity_type,
              min(time_zone) AS time_zone, min(period_end) AS period_end, count(*) AS events,
              count(*) FILTER (WHERE page_view) AS page_views
         FROM keyed GROUP BY 1, 2, 3, 4, 5
     ), upserted AS (
       INSERT INTO period_metrics AS m
         (site, period, period_start, activity_type, source_partition, time_zone, period_end,
          unique_users, page_view_count, event_count)
       SELECT e.site, e.period, e.period_start, e.activity_type, e.source_partition, e.time_zone,
              e.period_end, coalesce(u.users, 0), e.page_views, e.events
         FROM event_counts e
         LEFT JOIN user_counts u
           USING (source_partition, site, period, period_start, activity_type)
       ON CONFLICT (site, period, period_start, activity_type, source_partition) DO UPDATE SET
         unique_users    = m.unique_users + EXCLUDED.unique_users,
         page_view_count = m.page_view_count + EXCLUDED.page_view_count,
         event_count     = m.event_count + EXCLUDED.event_count,
         updated_at      = now()
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM events) AS events,
            (SELECT count(*) FROM events WHERE other_typed) AS other_typed,
            (SELECT count(*) FROM upserted) AS rows`,
    [windowSeconds, OTHER_TYPE, EVERY_TYPE],
  );
  await growSketches(client);
  await sealSketches(client, progress);
  await client.query('TRUNCATE rollup_source, rollup_new_users');
  const row = result.rows[0];
  return { events: Number(row?.events ?? 0), otherTyped: Number(row?.other_typed ?? 0) };
}

/**
 * Registers the types of `rollup_source` that their site does not count by name yet, while it has
 * room (in name order, so that one flush decides the same whatever its order). A site's types are
 * registered under a lock of its own: two instances never both take its last free place.
 */
async function registerActivityTypes(client: ClientBase, maxActivityTypes: number): Promise<void> {
  const unknown = await client.query<{ site: string }>(
    `SELECT DISTINCT s.site FROM rollup_source s
      WHERE s.activity_type <> $1
        AND NOT EXISTS (SELECT 1 FROM activity_types t
                         WHERE t.site = s.site AND t.activity_type = s.activity_type)
      ORDER BY 1`,
    [OTHER_TYPE],
  );
  if (unknown.rows.length === 0) return;
  const sites = unknown.rows.map((row) => row.site);
  // In site order, so that two flushes never wait for each other in a cycle.
  await client.query(
    `SELECT pg_advisory_xact_lock(hashtext('activity_types'), hashtext(site))
       FROM unnest($1::text[]) WITH ORDINALITY AS u(site, n) ORDER BY n`,
    [sites],
  );
  await client.query(
    `WITH candidates AS (
       SELECT DISTINCT s.site, s.activity_type FROM rollup_source s
        WHERE s.site = ANY($1::text[]) AND s.activity_type <> $3
          AND NOT EXISTS (SELECT 1 FROM activity_types t
                           WHERE t.site = s.site AND t.activity_type = s.activity_type)
     ), ranked AS (
       SELECT site, activity_type,
              row_number() OVER (PARTITION BY site ORDER BY activity_type) AS n
         FROM candidates
     )
     INSERT INTO activity_types (site, activity_type)
     SELECT r.site, r.activity_type FROM ranked r
      WHERE r.n <= $2 - (SELECT count(*) FROM activity_types t WHERE t.site = r.site)
     ON CONFLICT DO NOTHING`,
    [sites, maxActivityTypes, OTHER_TYPE],
  );
}

/** The sketch of a `period_metrics` row `m`, from its users. */
const SKETCH_OF_USERS = `(
  SELECT coalesce(${hllAddAggSql('u.user_id')}, ${HLL_EMPTY_SQL}) FROM period_users u
   WHERE u.source_partition = m.source_partition AND u.site = m.site
     AND u.period = m.period AND u.period_start = m.period_start
     AND u.activity_type = m.activity_type)`;

/** Adds the users new to a period to its sketch, where the period has one already. */
async function growSketches(client: ClientBase): Promise<void> {
  await client.query(
    `UPDATE period_metrics m SET users_hll = hll_union(m.users_hll, n.sketch)
       FROM (SELECT source_partition, site, period, period_start, activity_type,
                    ${hllAddAggSql('user_id')} AS sketch
               FROM rollup_new_users GROUP BY 1, 2, 3, 4, 5) n
      WHERE m.users_hll IS NOT NULL
        AND m.source_partition = n.source_partition AND m.site = n.site
        AND m.period = n.period AND m.period_start = n.period_start
        AND m.activity_type = n.activity_type`,
  );
}

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
