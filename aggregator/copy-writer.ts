import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ClientBase } from 'pg';
import pgCopyStreams from 'pg-copy-streams';
import {
  encodeClosedEvents,
  encodeClosedWindows,
  encodeMembership,
  encodeRows,
} from './copy-text.js';
import {
  type ClosingWindow,
  prepareRollupSource,
  type RollupOutcome,
  type RollupSettings,
  rollUp,
} from './rollups.js';
import type { PartitionFlush, WindowMembership, WindowRow } from './window-state.js';

const { from: copyFrom } = pgCopyStreams;

/**
 * Fault injection only (`make chaos`, `CHAOS_PAUSE_BEFORE_COMMIT_MS`): the write waits `ms`
 * between the upsert and COMMIT, after calling `onPause`, so that a kill or a terminated backend
 * lands in that gap.
 */
export interface PauseBeforeCommit {
  ms: number;
  onPause: () => void;
}

export type { RollupSettings } from './rollups.js';

/** The activity-type limit of rollups on the defaults. */
export const DEFAULT_ROLLUPS: RollupSettings = { maxActivityTypes: 100 };

/** What one flush wrote. */
export interface FlushOutcome {
  /** Window rows written (cumulative rows accepted by the fence, and closed windows updated). */
  rows: number;
  /** Cumulative rows the fence refused: PostgreSQL holds figures from further in the partition. */
  fenced: number;
  /** Events for closed windows that their stored membership did not hold yet (now counted). */
  closedCounted: number;
  /**
   * Partitions another instance has claimed since (their epoch moved): this instance no longer
   * owns them. When any is found only at the end, the whole transaction is rolled back and
   * nothing is written (`committed` false): write the others again without them.
   */
  lost: number[];
  committed: boolean;
  /** What the hour and day figures gained. */
  rollups: RollupOutcome;
}

const COLUMNS = [
  '"timestamp"',
  'window_seconds',
  'source_partition',
  'site',
  'time_zone',
  'unique_users',
  'page_view_count',
  'event_count',
  'first_offset',
  'through_offset',
  'watermark_ms',
  'is_final',
  'membership_stored',
].join(', ');

const USER_COLUMNS = 'window_start, window_seconds, source_partition, site, user_id';
const EVENT_COLUMNS =
  'window_start, window_seconds, source_partition, site, page_view, user_id, activity_type, event_id';
/** The row key: one row per (window, partition, site). */
const ROW_KEY = '"timestamp", window_seconds, source_partition, site';
const UNIQUE_VIOLATION = '23505';

/** A window's row with the membership that goes with it. */
interface RowWithMembership {
  row: WindowRow;
  membership: WindowMembership;
}

/**
 * Writes one flush in one transaction.
 *
 * A partition is written only while this instance owns it: its epoch in `partition_epochs` is
 * still the one it claimed (`claimPartition`). The epoch rows are locked (`FOR SHARE`) only at
 * the end, right before COMMIT, so that a new claim waits for this commit or this write sees the
 * new epoch and rolls back — and so that an instance frozen mid-write (SIGSTOP, a paused VM)
 * holds no lock a new owner's claim waits on, except in that last moment.
 *
 * Within a partition the invariant is: a row whose membership is stored (`membership_stored`)
 * always equals the counts of that membership.
 * 1. Windows in memory, still open: their cumulative rows, fenced — a row is only replaced by
 *    figures that reflect the partition consumed at least as far (`through_offset` not older),
 *    and never once its membership is stored.
 * 2. Windows closing: their cumulative rows and their users and event ids, straight COPY — a
 *    window closes once, so its ids are new there.
 * 3. Unless some are there already (a retry after a COMMIT whose answer was lost, or events
 *    counted into the window as closed before it closed here): then step 2 is undone to a
 *    savepoint, the ids are merged (`ON CONFLICT DO NOTHING`) and each row is recounted from
 *    the stored membership.
 * 4. Open windows whose records are gone from the topic (they cannot be rebuilt): closed as
 *    they stand, their membership empty. The one exception to the invariant above: their
 *    counts hold events whose ids were lost with the records.
 * 5. Events for closed windows: those whose id the window's stored membership lacks are counted,
 *    their users too when new to the window, and the row grows by exactly that. Inserting into
 *    the membership is what decides, so a repeat — a replay, a producer retry, a client's
 *    resend — adds nothing.
 * 6. Closed windows that became final.
 * 7. The events new to the membership in steps 2, 3 and 5: added to the hour and day figures.
 * The offsets the rows reflect are in the rows themselves: the same transaction.
 */
export async function writeFlush(
  client: ClientBase,
  allFlushes: readonly PartitionFlush[],
  rollups: RollupSettings | null = DEFAULT_ROLLUPS,
  pauseBeforeCommit?: PauseBeforeCommit,
): Promise<FlushOutcome> {
  const outcome: FlushOutcome = {
    rows: 0,
    fenced: 0,
    closedCounted: 0,
    lost: [],
    committed: true,
    rollups: { events: 0, otherTyped: 0 },
  };
  const hasWork = (flush: PartitionFlush) =>
    flush.rows.length +
      flush.closedWindowEvents.length +
      flush.finals.length +
      flush.unrebuilt.length >
    0;
  if (!allFlushes.some(hasWork)) return outcome;
  await client.query('BEGIN');
  try {
    await prepareRollupSource(client);
    // Partitions already lost are left out; the check that counts is the one before COMMIT.
    const owned = await currentEpochs(client, allFlushes, false);
    const flushes = allFlushes.filter((flush) => {
      if (owned.get(flush.partition) === flush.epoch) return true;
      outcome.lost.push(flush.partition);
      outcome.fenced += flush.rows.length + flush.closedWindowEvents.length;
      return false;
    });
    const open: RowWithMembership[] = [];
    const closing: RowWithMembership[] = [];
    for (const flush of flushes) {
      flush.rows.forEach((row, i) => {
        const entry = { row, membership: flush.memberships[i] as WindowMembership };
        (row.membershipStored ? closing : open).push(entry);
      });
    }
    if (open.length > 0) {
      const written = await upsertOpenRows(
        client,
        open.map((entry) => entry.row),
      );
      outcome.rows += written;
      outcome.fenced += open.length - written;
    }
    /** Closing windows stored by COPY: every event of theirs goes to the rollups. */
    let copied: ClosingWindow[] = [];
    if (closing.length > 0) {
      await client.query('SAVEPOINT closing');
      if (await closeWindows(client, closing)) {
        await client.query('RELEASE SAVEPOINT closing');
        outcome.rows += closing.length;
        copied = closing;
      } else {
        await client.query('ROLLBACK TO SAVEPOINT closing');
        outcome.rows += await mergeAndRecount(client, closing);
      }
    }
    for (const flush of flushes) {
      if (flush.unrebuilt.length === 0) continue;
      // Their records are gone: closed as they stand, so that events for them are counted
      // through the stored membership (empty) and the checkpoint no longer rebuilds them.
      const closed = await client.query(
        `UPDATE user_activity_metrics SET membership_stored = true, updated_at = now()
          WHERE source_partition = $1 AND window_seconds = $2
            AND "timestamp" = ANY($3::timestamptz[]) AND NOT membership_stored`,
        [
          flush.partition,
          flush.windowSeconds,
          flush.unrebuilt.map((start) => new Date(start).toISOString()),
        ],
      );
      outcome.rows += closed.rowCount ?? 0;
    }
    const closedEvents = flushes.filter((flush) => flush.closedWindowEvents.length > 0);
    if (closedEvents.length > 0) {
      const counted = await countClosedWindowEvents(client, closedEvents);
      outcome.rows += counted.rows;
      outcome.closedCounted += counted.events;
    }
    for (const flush of flushes) {
      if (flush.finals.length === 0) continue;
      await client.query(
        `UPDATE user_activity_metrics
            SET is_final = true, through_offset = GREATEST(through_offset, $4), updated_at = now()
          WHERE source_partition = $1 AND window_seconds = $2
            AND "timestamp" = ANY($3::timestamptz[]) AND NOT is_final`,
        [
          flush.partition,
          flush.windowSeconds,
          flush.finals.map((start) => new Date(start).toISOString()),
          flush.throughOffset,
        ],
      );
    }
    const progress = flushes
      .filter((flush) => Number.isFinite(flush.closedThrough))
      .map((flush) => ({
        partition: flush.partition,
        completeBefore: flush.closedThrough + flush.windowSeconds * 1000,
      }));
    if (rollups !== null) {
      outcome.rollups = await rollUp(
        client,
        rollups,
        allFlushes[0]?.windowSeconds ?? 0,
        copied,
        new Map(flushes.map((flush) => [flush.partition, flush.epoch])),
        progress,
      );
    }
    if (pauseBeforeCommit !== undefined) {
      pauseBeforeCommit.onPause();
      await new Promise((resolve) => setTimeout(resolve, pauseBeforeCommit.ms));
    }
    const held = await currentEpochs(client, flushes, true);
    const lostMeanwhile = flushes.filter((flush) => held.get(flush.partition) !== flush.epoch);
    if (lostMeanwhile.length > 0) {
      await client.query('ROLLBACK');
      rollups?.periodUsers?.clear();
      return {
        rows: 0,
        fenced: 0,
        closedCounted: 0,
        lost: [...outcome.lost, ...lostMeanwhile.map((flush) => flush.partition)],
        committed: false,
        rollups: { events: 0, otherTyped: 0 },
      };
    }
    // The query service's stream (query/window-stream.ts): delivered only if this commits.
    await client.query(
      `SELECT pg_notify('activity_flush', (extract(epoch FROM now()) * 1000000)::bigint::text)`,
    );
    await client.query('COMMIT');
    rollups?.periodUsers?.committed(progress);
    return outcome;
  } catch (err) {
    // Committed or not, the held period users may no longer match PostgreSQL's.
    rollups?.periodUsers?.clear();
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/** The current epoch of each flushed partition; with `lock`, share-locked until COMMIT. */
async function currentEpochs(
  client: ClientBase,
  flushes: readonly PartitionFlush[],
  lock: boolean,
): Promise<Map<number, number>> {
  const windowSeconds = flushes[0]?.windowSeconds ?? 0;
  const result = await client.query<{ source_partition: number; epoch: string }>(
    `SELECT source_partition, epoch FROM partition_epochs
      WHERE window_seconds = $1 AND source_partition = ANY($2::int[])
      ${lock ? 'FOR SHARE' : ''}`,
    [windowSeconds, flushes.map((flush) => flush.partition)],
  );
  return new Map(result.rows.map((row) => [row.source_partition, Number(row.epoch)]));
}

async function stageRows(client: ClientBase, rows: readonly WindowRow[]): Promise<void> {
  await client.query(
    `CREATE TEMP TABLE IF NOT EXISTS window_rows_staging
       (LIKE user_activity_metrics INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`,
  );
  await client.query('TRUNCATE window_rows_staging');
  await copyInto(client, `window_rows_staging (${COLUMNS})`, encodeRows(rows));
}

/**
 * The fenced cumulative upsert: a row is replaced only by figures from at least as far in the
 * partition, and never once its membership is stored. Returns the keys of the rows written.
 */
async function upsertOpenRows(
  client: ClientBase,
  rows: readonly WindowRow[],
  closingNow = false,
): Promise<number> {
  await stageRows(client, rows);
  const result = await client.query(
    `INSERT INTO user_activity_metrics AS m (${COLUMNS})
     SELECT ${COLUMNS} FROM window_rows_staging
     ON CONFLICT (${ROW_KEY}) DO UPDATE SET
       unique_users      = EXCLUDED.unique_users,
       page_view_count   = EXCLUDED.page_view_count,
       event_count       = EXCLUDED.event_count,
       first_offset      = LEAST(m.first_offset, EXCLUDED.first_offset),
       through_offset    = EXCLUDED.through_offset,
       watermark_ms      = EXCLUDED.watermark_ms,
       is_final          = EXCLUDED.is_final,
       membership_stored = ${closingNow ? 'true' : 'false'},
       updated_at        = now()
     WHERE m.through_offset <= EXCLUDED.through_offset AND NOT m.membership_stored`,
  );
  return result.rowCount ?? 0;
}

/**
 * The common case of closing windows: their rows (cumulative, fenced, not closed elsewhere) and
 * their membership by straight COPY. False when another instance was there first: a row refused,
 * or an id already stored (the caller undoes this to its savepoint and merges instead).
 */
async function closeWindows(
  client: ClientBase,
  closing: readonly RowWithMembership[],
): Promise<boolean> {
  const accepted = await upsertOpenRows(
    client,
    closing.map((entry) => entry.row),
    true,
  );
  if (accepted < closing.length) return false;
  // Ids stored for these windows already (events another instance counted into them as closed)
  // would not be in the rows: merge and recount instead.
  const stored = await client.query(
    `SELECT 1 FROM ${ROW_KEYS_UNNEST}
      WHERE EXISTS (SELECT 1 FROM window_events e
                     WHERE e.source_partition = r.part AND e.window_seconds = r.seconds
                       AND e.window_start = r.start AND e.site = r.site)
      LIMIT 1`,
    rowKeyParameters(closing.map((entry) => entry.row)),
  );
  if ((stored.rowCount ?? 0) > 0) return false;
  try {
    await copyMembership(client, `window_users (${USER_COLUMNS})`, closing, false);
    await copyMembership(client, `window_events (${EVENT_COLUMNS})`, closing, true);
  } catch (err) {
    if ((err as { code?: string }).code === UNIQUE_VIOLATION) return false;
    throw err;
  }
  return true;
}

/** The keys of rows, as `r(start, seconds, part, site)`, from `rowKeyParameters`. */
const ROW_KEYS_UNNEST =
  'unnest($1::timestamptz[], $2::int[], $3::int[], $4::text[]) AS r(start, seconds, part, site)';

function rowKeyParameters(rows: readonly WindowRow[]): unknown[] {
  return [
    rows.map((row) => new Date(row.windowStart).toISOString()),
    rows.map((row) => row.windowSeconds),
    rows.map((row) => row.partition),
    rows.map((row) => row.site),
  ];
}

/**
 * Merges the membership of `entries` into the stored one (ids already there stay as they are)
 * and sets each row to the counts of the stored membership, which also hold what other instances
 * stored. Returns how many rows were written.
 */
async function mergeAndRecount(
  client: ClientBase,
  entries: readonly RowWithMembership[],
): Promise<number> {
  for (const [table, columns, withPageViews] of [
    ['window_users', USER_COLUMNS, false],
    ['window_events', EVENT_COLUMNS, true],
  ] as const) {
    await client.query(
      `CREATE TEMP TABLE IF NOT EXISTS ${table}_staging (LIKE ${table}) ON COMMIT DELETE ROWS`,
    );
    await client.query(`TRUNCATE ${table}_staging`);
    await copyMembership(client, `${table}_staging (${columns})`, entries, withPageViews);
    // The events new to the membership go to the rollups; those stored already were counted.
    await client.query(
      withPageViews
        ? `WITH added AS (
             INSERT INTO ${table} (${columns}) SELECT ${columns} FROM ${table}_staging
             ON CONFLICT DO NOTHING
             RETURNING site, window_start, source_partition, user_id, activity_type, page_view)
           INSERT INTO rollup_source
             (site, window_start, source_partition, user_id, activity_type, page_view)
           SELECT * FROM added`
        : `INSERT INTO ${table} (${columns}) SELECT ${columns} FROM ${table}_staging
           ON CONFLICT DO NOTHING`,
    );
  }
  const rows = entries.map((entry) => entry.row);
  const result = await client.query(
    `INSERT INTO user_activity_metrics AS m (${COLUMNS})
     SELECT r.start, r.seconds, r.part, r.site, r.time_zone, counts.users, counts.page_views,
            counts.events, r.first_offset, r.through_offset, r.watermark_ms, r.is_final, true
       FROM unnest($1::timestamptz[], $2::int[], $3::int[], $4::text[], $5::text[],
                   $6::bigint[], $7::bigint[], $8::bigint[], $9::bool[])
              AS r(start, seconds, part, site, time_zone, first_offset, through_offset,
                   watermark_ms, is_final)
      CROSS JOIN LATERAL (
        SELECT (SELECT count(*) FROM window_users u
                 WHERE u.source_partition = r.part AND u.window_seconds = r.seconds
                   AND u.window_start = r.start AND u.site = r.site) AS users,
               e.events, e.page_views
          FROM (SELECT count(*) AS events, count(*) FILTER (WHERE page_view) AS page_views
                  FROM window_events
                 WHERE source_partition = r.part AND window_seconds = r.seconds
                   AND window_start = r.start AND site = r.site) e
      ) counts
     ON CONFLICT (${ROW_KEY}) DO UPDATE SET
       unique_users      = EXCLUDED.unique_users,
       page_view_count   = EXCLUDED.page_view_count,
       event_count       = EXCLUDED.event_count,
       first_offset      = LEAST(m.first_offset, EXCLUDED.first_offset),
       through_offset    = GREATEST(m.through_offset, EXCLUDED.through_offset),
       watermark_ms      = GREATEST(m.watermark_ms, EXCLUDED.watermark_ms),
       is_final          = m.is_final OR EXCLUDED.is_final,
       membership_stored = true,
       updated_at        = now()`,
    [
      rows.map((r) => new Date(r.windowStart).toISOString()),
      rows.map((r) => r.windowSeconds),
      rows.map((r) => r.partition),
      rows.map((r) => r.site),
      rows.map((r) => r.timeZone),
      rows.map((r) => r.firstOffset),
      rows.map((r) => r.throughOffset),
      rows.map((r) => (Number.isFinite(r.watermark) ? r.watermark : null)),
      rows.map((r) => r.isFinal),
    ],
  );
  return result.rowCount ?? 0;
}

async function countClosedWindowEvents(
  client: ClientBase,
  flushes: readonly PartitionFlush[],
): Promise<{ rows: number; events: number }> {
  await client.query(
    `CREATE TEMP TABLE IF NOT EXISTS closed_events_staging (
       ord BIGINT, window_start TIMESTAMPTZ, source_partition INTEGER, site TEXT,
       page_view SMALLINT, user_id TEXT, activity_type TEXT, event_id TEXT)
     ON COMMIT DELETE ROWS`,
  );
  await client.query(
    `CREATE TEMP TABLE IF NOT EXISTS closed_windows_staging (
       window_start TIMESTAMPTZ, source_partition INTEGER, site TEXT, time_zone TEXT,
       first_offset BIGINT, through_offset BIGINT, watermark_ms BIGINT, is_final BOOLEAN)
     ON COMMIT DELETE ROWS`,
  );
  await copyInto(client, 'closed_windows_staging', encodeClosedWindows(flushes));
  await copyInto(client, 'closed_events_staging', encodeClosedEvents(flushes));
  const windowSeconds = flushes[0]?.windowSeconds ?? 0;
  const result = await client.query<{ events: string }>(
    `WITH candidates AS (
       SELECT DISTINCT ON (window_start, source_partition, site, event_id)
              window_start, source_partition, site, event_id, user_id, activity_type, page_view
         FROM closed_events_staging
        ORDER BY window_start, source_partition, site, event_id, ord
     ), new_events AS (
       INSERT INTO window_events (${EVENT_COLUMNS})
       SELECT window_start, $1, source_partition, site, page_view = 1, user_id, activity_type,
              event_id
         FROM candidates
       ON CONFLICT DO NOTHING
       RETURNING window_start, source_partition, site, event_id
     ), counted AS (
       SELECT c.window_start, c.source_partition, c.site, c.user_id, c.activity_type, c.page_view
         FROM candidates c
         JOIN new_events n USING (window_start, source_partition, site, event_id)
     ), to_rollups AS (
       INSERT INTO rollup_source
         (site, window_start, source_partition, user_id, activity_type, page_view)
       SELECT site, window_start, source_partition, user_id, activity_type, page_view = 1
         FROM counted
     ), new_users AS (
       INSERT INTO window_users (${USER_COLUMNS})
       SELECT DISTINCT window_start, $1, source_partition, site, user_id FROM counted
       ON CONFLICT DO NOTHING
       RETURNING window_start, source_partition, site
     ), event_counts AS (
       SELECT window_start, source_partition, site, count(*) AS events,
              sum(page_view) AS page_views
         FROM counted GROUP BY 1, 2, 3
     ), user_counts AS (
       SELECT window_start, source_partition, site, count(*) AS users
         FROM new_users GROUP BY 1, 2, 3
     ), upserted AS (
       INSERT INTO user_activity_metrics AS m (${COLUMNS})
       SELECT w.window_start, $1, w.source_partition, w.site, w.time_zone, coalesce(u.users, 0),
              coalesce(e.page_views, 0), coalesce(e.events, 0), w.first_offset, w.through_offset,
              w.watermark_ms, w.is_final, true
         FROM closed_windows_staging w
         LEFT JOIN event_counts e USING (window_start, source_partition, site)
         LEFT JOIN user_counts u USING (window_start, source_partition, site)
       ON CONFLICT (${ROW_KEY}) DO UPDATE SET
         unique_users      = m.unique_users + EXCLUDED.unique_users,
         page_view_count   = m.page_view_count + EXCLUDED.page_view_count,
         event_count       = m.event_count + EXCLUDED.event_count,
         first_offset      = LEAST(m.first_offset, EXCLUDED.first_offset),
         through_offset    = GREATEST(m.through_offset, EXCLUDED.through_offset),
         watermark_ms      = GREATEST(m.watermark_ms, EXCLUDED.watermark_ms),
         is_final          = m.is_final OR EXCLUDED.is_final,
         membership_stored = true,
         updated_at        = now()
       -- A row still open (another instance holds the window in memory) is left to its owner:
       -- the ids stored here make that owner's close merge and recount.
       WHERE m.membership_stored
       RETURNING 1
     )
     SELECT (SELECT coalesce(sum(events), 0) FROM event_counts) AS events,
            (SELECT count(*) FROM upserted) AS rows`,
    [windowSeconds],
  );
  const row = result.rows[0] as { events: string; rows?: string } | undefined;
  return { rows: Number(row?.rows ?? 0), events: Number(row?.events ?? 0) };
}

async function copyInto(
  client: ClientBase,
  target: string,
  chunks: Iterable<Uint8Array | string>,
): Promise<void> {
  const copy = client.query(copyFrom(`COPY ${target} FROM STDIN`));
  await pipeline(Readable.from(chunks), copy);
}

/** COPY of the users (or event ids, with their page-view flags) of each entry's window. */
async function copyMembership(
  client: ClientBase,
  target: string,
  entries: readonly RowWithMembership[],
  eventIds: boolean,
): Promise<void> {
  await copyInto(client, target, encodeMembership(entries, eventIds));
}
