import type { ClientBase } from 'pg';

/** PostgreSQL's code for a lock not granted within `lock_timeout`. */
const LOCK_NOT_AVAILABLE = '55P03';
/** One wait for the epoch row's lock: well within any DATABASE_QUERY_TIMEOUT_SEC allowed. */
const CLAIM_LOCK_STEP_MS = 1_000;
/** How long a claim waits for a frozen owner's last transaction: twice its idle timeout. */
const CLAIM_LOCK_WAIT_MS = 60_000;

/** What PostgreSQL says about one partition: where to resume and what to rebuild. */
export interface PartitionCheckpoint {
  /** First offset not yet reflected in PostgreSQL; null when the partition has no rows. */
  resumeFrom: number | null;
  /** Where to start reading: the first offset of the oldest window to rebuild, or `resumeFrom`. */
  replayFrom: number | null;
  /** Starts of the windows that were held in memory: rebuilt by replaying from `replayFrom`. */
  openWindows: number[];
  /** Closed windows (membership stored) that are not final yet. */
  closedOpenWindows: number[];
  /** Every window starting at or before this is closed: its membership is stored. */
  closedThrough: number;
  /** Every window starting at or before this is final. */
  finalThrough: number;
  /** Every window starting at or before this was made final by a version that stored no membership. */
  legacyFinalThrough: number;
  /** The partition's event-time watermark when its newest rows were written. */
  watermark: number;
  /** The ownership epoch: flushes write this partition only while it is still the current one. */
  epoch: number;
}

/**
 * Takes ownership of a partition and reads its checkpoint, in one transaction: the next epoch
 * (see `partition_epochs`) and the rows as they stand. A flush of the previous owner holds the
 * epoch row while it writes, so the new epoch waits for it and the checkpoint includes it; any
 * later flush of the previous owner finds the epoch moved and writes nothing.
 */
export async function claimPartition(
  client: ClientBase,
  partition: number,
  windowSeconds: number,
  lockWaitMs = CLAIM_LOCK_WAIT_MS,
): Promise<PartitionCheckpoint> {
  const deadline = Date.now() + lockWaitMs;
  for (;;) {
    await client.query('BEGIN');
    try {
      // The previous owner locks the epoch row for a moment before each COMMIT. If it froze in
      // that moment, its transaction ends within idle_in_transaction_session_timeout (30 s, set
      // on every aggregator session): wait for that in short steps, each within the client's
      // query deadline.
      await client.query(`SET LOCAL lock_timeout = '${CLAIM_LOCK_STEP_MS}ms'`);
      const claimed = await client.query<{ epoch: string }>(
        `INSERT INTO partition_epochs AS e (window_seconds, source_partition, epoch)
         VALUES ($1, $2, 1)
         ON CONFLICT (window_seconds, source_partition)
         DO UPDATE SET epoch = e.epoch + 1, claimed_at = now()
         RETURNING epoch`,
        [windowSeconds, partition],
      );
      const checkpoint = await loadCheckpoint(client, partition, windowSeconds);
      await client.query('COMMIT');
      return { ...checkpoint, epoch: Number(claimed.rows[0]?.epoch) };
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE || Date.now() > deadline) {
        throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
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
  const summary = await client.query<{
    through: string | null;
    watermark_ms: string | null;
    final_ms: string | null;
    closed_ms: string | null;
    legacy_ms: string | null;
  }>(
    `SELECT (SELECT through_offset FROM user_activity_metrics
              WHERE source_partition = $1 AND window_seconds = $2
              ORDER BY through_offset DESC LIMIT 1) AS through,
            (SELECT watermark_ms FROM user_activity_metrics
              WHERE source_partition = $1 AND window_seconds = $2
              ORDER BY through_offset DESC, watermark_ms DESC NULLS LAST LIMIT 1) AS watermark_ms,
            (extract(epoch FROM max("timestamp") FILTER (WHERE is_final)) * 1000)::bigint AS final_ms,
            (extract(epoch FROM max("timestamp") FILTER (WHERE membership_stored)) * 1000)::bigint
              AS closed_ms,
            (extract(epoch FROM max("timestamp") FILTER (WHERE is_final AND NOT membership_stored))
              * 1000)::bigint AS legacy_ms
       FROM user_activity_metrics
      WHERE source_partition = $1 AND window_seconds = $2`,
    [partition, windowSeconds],
  );
  const open = await client.query<{
    start_ms: string;
    first_offset: string;
    membership_stored: boolean;
  }>(
    `SELECT (extract(epoch FROM "timestamp") * 1000)::bigint AS start_ms, first_offset,
            membership_stored
       FROM user_activity_metrics
      WHERE source_partition = $1 AND window_seconds = $2 AND NOT is_final`,
    [partition, windowSeconds],
  );
  const epoch = await client.query<{ epoch: string }>(
    'SELECT epoch FROM partition_epochs WHERE window_seconds = $1 AND source_partition = $2',
    [windowSeconds, partition],
  );
  const row = summary.rows[0];
  const orMinusInfinity = (value: string | null | undefined): number =>
    value === null || value === undefined ? Number.NEGATIVE_INFINITY : Number(value);
  const finalThrough = orMinusInfinity(row?.final_ms);
  const legacyFinalThrough = orMinusInfinity(row?.legacy_ms);
  // A window has a row per site: it is open (rebuilt from the topic) when any of them is.
  const firstOffsets = new Map<number, number>();
  const closedOpen = new Set<number>();
  for (const window of open.rows) {
    const start = Number(window.start_ms);
    if (window.membership_stored) {
      closedOpen.add(start);
    } else {
      const firstOffset = Number(window.first_offset);
      firstOffsets.set(start, Math.min(firstOffset, firstOffsets.get(start) ?? firstOffset));
    }
  }
  const openWindows = [...firstOffsets.keys()];
  const closedOpenWindows = [...closedOpen].filter((start) => !firstOffsets.has(start));
  const oldestOpenFirstOffset = Math.min(Number.POSITIVE_INFINITY, ...firstOffsets.values());
  const common = {
    openWindows,
    closedOpenWindows,
    closedThrough: Math.max(orMinusInfinity(row?.closed_ms), legacyFinalThrough),
    finalThrough,
    legacyFinalThrough,
    watermark: orMinusInfinity(row?.watermark_ms),
    epoch: Number(epoch.rows[0]?.epoch ?? 0),
  };
  if (row?.through === null || row?.through === undefined) {
    return { resumeFrom: null, replayFrom: null, ...common };
  }
  const resumeFrom = Number(row.through) + 1;
  return {
    resumeFrom,
    replayFrom: openWindows.length > 0 ? Math.min(oldestOpenFirstOffset, resumeFrom) : resumeFrom,
    ...common,
  };
}
