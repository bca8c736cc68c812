/**
 * Where the aggregator's consumer stands against the partitions' ends, for `ConsumerWatchdog`:
 * positions, backlogs, whether records wait, and how long the consumer has been quiet.
 */

/** A partition's position: the next offset to deliver, or its beginning (no checkpoint yet). */
export type Position = number | 'beginning';

/** A partition's end offsets, as the broker reports them. */
export interface PartitionEnd {
  high: number;
  low: number;
}

/** Offsets between a partition's position and its end (negative if the end is behind). */
export function backlog(position: Position, end: PartitionEnd): number {
  return end.high - (position === 'beginning' ? end.low : position);
}

/**
 * Whether records wait past some partition's position (`ends`: partition → high and low). One
 * offset past the position is not enough: a transaction's commit marker takes an offset and is
 * never delivered.
 */
export function recordsWaiting(
  positions: ReadonlyMap<number, Position>,
  ends: ReadonlyMap<number, PartitionEnd>,
): boolean {
  for (const [partition, position] of positions) {
    const end = ends.get(partition);
    if (end !== undefined && backlog(position, end) > 1) return true;
  }
  return false;
}

/**
 * Tells when a consumer has been quiet (no delivery while it has partitions and something may be
 * waiting) for `reportAfterMs`, at most once per `everyMs`: the watchdog then logs what it saw,
 * as evidence for a stop it does not, or should not, act on (an excuse that holds, end offsets
 * that do not come).
 */
export class QuietClock {
  private since: number | undefined;
  private deliveries: number | undefined;
  private reportedAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly reportAfterMs: number,
    private readonly everyMs: number,
  ) {}

  /** How long the consumer has been quiet, when that is to be reported now; else undefined. */
  observe(
    nowMs: number,
    deliveries: number,
    assigned: boolean,
    waiting: boolean | undefined,
  ): number | undefined {
    // A delivery, no partitions or nothing to read: not quiet.
    if (!assigned || waiting === false || deliveries !== this.deliveries) {
      this.since = nowMs;
      this.deliveries = deliveries;
      this.reportedAt = Number.NEGATIVE_INFINITY;
      return undefined;
    }
    const quietMs = nowMs - (this.since ?? nowMs);
    if (quietMs < this.reportAfterMs || nowMs - this.reportedAt < this.everyMs) return undefined;
    this.reportedAt = nowMs;
    return quietMs;
  }
}
