import type { Logger } from '../shared/logger.js';
import type { AggregatorMetrics } from './metrics.js';
import type { PartitionEnd, Position } from './partition-backlog.js';

/**
 * Finds partitions whose position is no longer in the topic, and counts records skipped because
 * of it (docs: OPERATIONS, "AggregatorOffsetsMissing"). A partition it stops waits, paused and
 * loudly, until it is revoked or an operator restarts the process.
 */
export class MissingPositions {
  /**
   * Each assigned partition's stored position (the checkpoint's `resumeFrom`): the first offset
   * PostgreSQL does not reflect. Reading starts earlier when open windows are rebuilt, so the
   * reading position can be behind it.
   */
  private readonly stored = new Map<number, number>();
  /** When each partition was assigned: ends read before that say nothing about its positions. */
  private readonly assignedAtMs = new Map<number, number>();
  /** Partitions stopped because their position is no longer in the topic. */
  readonly stopped = new Set<number>();

  constructor(
    private readonly offsetReset: 'stop' | 'earliest',
    private readonly metrics: AggregatorMetrics,
    private readonly logger: Logger,
  ) {}

  /** A partition assigned at `nowMs` with its stored position (null: PostgreSQL has none). */
  assigned(partition: number, resumeFrom: number | null, nowMs: number): void {
    this.assignedAtMs.set(partition, nowMs);
    if (resumeFrom === null) this.stored.delete(partition);
    else this.stored.set(partition, resumeFrom);
  }

  forget(partition: number): void {
    this.stored.delete(partition);
    this.assignedAtMs.delete(partition);
  }

  /**
   * Checks the reading positions taken before `ends` were asked for against them, and returns
   * the partitions newly stopped. A partition stops when
   * - its reading position is below the earliest offset (retention removed records it needs),
   *   with OFFSET_RESET=stop; with OFFSET_RESET=earliest librdkafka moves on to the earliest
   *   offset and `noteSkipped` counts the gap;
   * - its stored position lies past the end, whatever OFFSET_RESET says: the topic was recreated
   *   and its offsets belong to a new log. The reading position can be inside the new log (it is
   *   where open windows are rebuilt from), so librdkafka would read the new records as a replay
   *   of the old ones and count none of them.
   *
   * Partitions no longer `held` leave the stopped set.
   */
  check(
    ends: ReadonlyMap<number, PartitionEnd>,
    observedAtMs: number,
    positionsBefore: ReadonlyMap<number, Position>,
    held: (partition: number) => boolean,
  ): number[] {
    const newlyStopped: number[] = [];
    // Positions taken before the ends were asked for: a position read later can lie past an end
    // read earlier without anything being wrong.
    for (const [partition, position] of positionsBefore) {
      const end = ends.get(partition);
      if (
        end === undefined ||
        position === 'beginning' ||
        this.stopped.has(partition) ||
        !held(partition)
      ) {
        continue;
      }
      // The stop lasts until a restart: only evidence counts. Ends asked for before the
      // assignment are older than its stored position (another instance wrote it meanwhile:
      // seen with two replicas, stored 309 against an end of 307 read a moment before); an
      // answer that is no offset is a partition's error.
      const assignedAtMs = this.assignedAtMs.get(partition);
      if (assignedAtMs === undefined || assignedAtMs >= observedAtMs) continue;
      if (end.low < 0 || end.high < end.low) continue;
      // The stored position, not the reading one: that one moves with every batch and can pass
      // an end read a moment ago (seen in a chaos run: every partition of a fresh topic stopped).
      const stored = this.stored.get(partition);
      const pastEnd = stored !== undefined && stored > end.high;
      const gone = position < end.low && this.offsetReset === 'stop';
      if (!pastEnd && !gone) continue;
      this.stopped.add(partition);
      newlyStopped.push(partition);
      this.metrics.offsetsMissing.set({ partition: String(partition) }, 1);
      this.logger.error(
        {
          partition,
          position,
          stored,
          earliest: end.low,
          end: end.high,
          cause: pastEnd
            ? 'the stored position lies past the end: the topic was recreated?'
            : stored === undefined || stored < end.low
              ? 'retention removed records that were never counted'
              : 'retention removed records of windows still open: they cannot be rebuilt',
        },
        'stored position is no longer in the topic; partition stopped (see OFFSET_RESET)',
      );
    }
    for (const partition of this.stopped) {
      if (!held(partition)) {
        this.stopped.delete(partition);
        this.metrics.offsetsMissing.remove({ partition: String(partition) });
      }
    }
    return newlyStopped;
  }

  /**
   * A record past the partition's stored position that does not follow the one before skipped
   * records that were never counted: librdkafka moved on to the earliest offset
   * (OFFSET_RESET=earliest) because retention had removed them. Records between the reading
   * position and the stored position were counted already (they were only to rebuild open
   * windows): losing them skips nothing.
   */
  noteSkipped(partition: number, expected: number, offset: number): void {
    const from = Math.max(expected, this.stored.get(partition) ?? expected);
    const skipped = offset - from;
    // One offset can be a transaction's commit marker; more is a gap.
    if (skipped <= 1) return;
    this.metrics.offsetsSkipped.inc({ partition: String(partition) }, skipped);
    this.logger.error(
      { partition, position: from, resumedAt: offset, skipped },
      'records were skipped: the stored position was no longer in the topic',
    );
  }
}
