import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ClientBase } from 'pg';
import pgCopyStreams from 'pg-copy-streams';
import type { WindowRow } from './window-state.js';

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

const COLUMNS = [
  '"timestamp"',
  'window_seconds',
  'source_partition',
  'unique_users',
  'page_view_count',
  'event_count',
  'first_offset',
  'through_offset',
  'watermark_ms',
  'is_final',
].join(', ');

/**
 * Writes window rows in one transaction: COPY into a session-local staging table, then one
 * upsert into `user_activity_metrics`.
 *
 * The upsert is fenced: a row is only replaced by figures that reflect the partition consumed at
 * least as far (`through_offset` not older), so a stalled instance that wakes up after its
 * partitions moved cannot overwrite newer figures. Returns how many rows were written; rows the
 * fence refused are not counted.
 */
export async function writeWindowRows(
  client: ClientBase,
  rows: readonly WindowRow[],
  pauseBeforeCommit?: PauseBeforeCommit,
): Promise<number> {
  if (rows.length === 0) return 0;
  await client.query('BEGIN');
  try {
    await client.query(
      `CREATE TEMP TABLE IF NOT EXISTS window_rows_staging
         (LIKE user_activity_metrics INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`,
    );
    const copy = client.query(copyFrom(`COPY window_rows_staging (${COLUMNS}) FROM STDIN`));
    await pipeline(Readable.from(encodeRows(rows)), copy);
    const result = await client.query(
      `INSERT INTO user_activity_metrics AS m (${COLUMNS})
       SELECT ${COLUMNS} FROM window_rows_staging
       ON CONFLICT ("timestamp", window_seconds, source_partition) DO UPDATE SET
         unique_users    = EXCLUDED.unique_users,
         page_view_count = EXCLUDED.page_view_count,
         event_count     = EXCLUDED.event_count,
         first_offset    = LEAST(m.first_offset, EXCLUDED.first_offset),
         through_offset  = EXCLUDED.through_offset,
         watermark_ms    = EXCLUDED.watermark_ms,
         is_final        = EXCLUDED.is_final,
         updated_at      = now()
       WHERE m.through_offset <= EXCLUDED.through_offset`,
    );
    if (pauseBeforeCommit !== undefined) {
      pauseBeforeCommit.onPause();
      await new Promise((resolve) => setTimeout(resolve, pauseBeforeCommit.ms));
    }
    await client.query('COMMIT');
    return result.rowCount ?? 0;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/** COPY text format, one chunk per 1,000 rows. Every field is a number or a boolean: no escaping. */
function* encodeRows(rows: readonly WindowRow[]): Generator<string> {
  let chunk = '';
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as WindowRow;
    chunk += `${new Date(r.windowStart).toISOString()}\t${r.windowSeconds}\t${r.partition}\t${r.uniqueUsers}\t${r.pageViews}\t${r.events}\t${r.firstOffset}\t${r.throughOffset}\t${Number.isFinite(r.watermark) ? r.watermark : '\\N'}\t${r.isFinal ? 't' : 'f'}\n`;
    if (i % 1000 === 999) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk.length > 0) yield chunk;
}
