import type { ClientBase } from 'pg';

/** What PostgreSQL says about one partition: where to resume and what to rebuild. */
export interface PartitionCheckpoint {
  /** First offset not yet reflected in PostgreSQL; null when the partition has no rows. */
  resumeFrom: number | null;
  /** Where to start reading: the first offset of the oldest open window, or `resumeFrom`. */
  replayFrom: number | null;
  /** Starts of the windows that are not final: rebuilt by replaying from `replayFrom`. */
  openWindows: number[];
  /** Every window starting at or before this is final. */
  finalThrough: number;
  /** The partition's event-time watermark when its newest rows were written. */
  watermark: number;
}

/**
 * Reads a partition's checkpoint from its rows in `user_activity_metrics`: the rows are the only
 * bookkeeping (no offsets table), and the positions come from here, not from Kafka.
 */
export async function loadCheckpoint(
  client: ClientBase,
  partition: number,
  windowSeconds: number,
): Promise<PartitionCheckpoint> {
  const result = await client.query<{
    start_ms: string;
    first_offset: string;
    through_offset: string;
    watermark_ms: string | null;
    is_final: boolean;
  }>(
    `SELECT (extract(epoch FROM "timestamp") * 1000)::bigint AS start_ms,
            first_offset, through_offset, watermark_ms, is_final
       FROM user_activity_metrics
      WHERE source_partition = $1 AND window_seconds = $2
        AND (NOT is_final OR "timestamp" = (
              SELECT max("timestamp") FROM user_activity_metrics
               WHERE source_partition = $1 AND window_seconds = $2 AND is_final)
          OR through_offset = (
              SELECT max(through_offset) FROM user_activity_metrics
               WHERE source_partition = $1 AND window_seconds = $2))`,
    [partition, windowSeconds],
  );
  let through = -1;
  let watermark = Number.NEGATIVE_INFINITY;
  let finalThrough = Number.NEGATIVE_INFINITY;
  const openWindows: number[] = [];
  let oldestOpenFirstOffset = Number.POSITIVE_INFINITY;
  for (const row of result.rows) {
    const start = Number(row.start_ms);
    through = Math.max(through, Number(row.through_offset));
    if (row.watermark_ms !== null) watermark = Math.max(watermark, Number(row.watermark_ms));
    if (row.is_final) {
      finalThrough = Math.max(finalThrough, start);
    } else {
      openWindows.push(start);
      oldestOpenFirstOffset = Math.min(oldestOpenFirstOffset, Number(row.first_offset));
    }
  }
  if (through < 0) {
    return {
      resumeFrom: null,
      replayFrom: null,
      openWindows: [],
      finalThrough,
      watermark,
    };
  }
  const resumeFrom = through + 1;
  return {
    resumeFrom,
    replayFrom: openWindows.length > 0 ? Math.min(oldestOpenFirstOffset, resumeFrom) : resumeFrom,
    openWindows,
    finalThrough,
    watermark,
  };
}

/**
 * Each partition's first offset not yet reflected in PostgreSQL, or `'beginning'` when it has no
 * rows: where the group as a whole stands, whoever consumes each partition. One index lookup
 * per partition (`user_activity_metrics_partition_offset`), so it is cheap to ask every few
 * seconds.
 */
export async function loadStoredPositions(
  client: ClientBase,
  partitions: readonly number[],
  windowSeconds: number,
): Promise<Map<number, number | 'beginning'>> {
  const result = await client.query<{ partition: number; through: string | null }>(
    `SELECT p AS partition,
            (SELECT max(through_offset) FROM user_activity_metrics
              WHERE source_partition = p AND window_seconds = $2) AS through
       FROM unnest($1::int[]) AS p`,
    [partitions, windowSeconds],
  );
  return new Map(
    result.rows.map((row) => [
      row.partition,
      row.through === null ? 'beginning' : Number(row.through) + 1,
    ]),
  );
}
