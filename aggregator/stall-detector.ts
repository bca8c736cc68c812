/**
 * Tells when records wait and nothing moves: the pure part of `ConsumerWatchdog`, which keeps
 * two detectors (batches delivered from the assigned partitions; offsets stored for partitions
 * no consumer reads), asks them after each look at the partitions' end offsets, and replaces
 * the consumer when one says so.
 */

/** One look at the consumer and the broker. */
export interface StallObservation {
  nowMs: number;
  /**
   * A counter that moves whenever what is watched makes progress: the batches the consumer has
   * delivered, or (for the partitions no consumer reads) the offsets stored in PostgreSQL.
   */
  progress: number;
  /**
   * Nothing is expected from the consumer now: consumption is paused, a rebalance is being
   * handled, or a batch or flush is in hand (a slow database holds deliveries back).
   */
  excused: boolean;
  /**
   * Some assigned partition ends past the consumer's position. Undefined when unknown (the
   * broker did not answer): silence while the broker is away is not the consumer's fault.
   */
  recordsWaiting: boolean | undefined;
}

/** Replacements in a row without a delivery between them double the timeout, up to this. */
const MAX_BACKOFF = 16;

export class StallDetector {
  /** When records were first seen waiting with no progress since; undefined when not waiting. */
  private waitingSince: number | undefined;
  private progressSeen: number | undefined;
  private timeoutMs: number;
  /** Progress counted at the last replacement. */
  private progressAtReplacement: number | undefined;

  constructor(private readonly baseTimeoutMs: number) {
    this.timeoutMs = baseTimeoutMs;
  }

  /** The current timeout: the base one, or longer after replacements that did not help. */
  get currentTimeoutMs(): number {
    return this.timeoutMs;
  }

  /**
   * True once records have waited, with no progress and no excuse, for `timeoutMs` across
   * consecutive observations. Progress, an excuse or an unknown answer starts the wait over.
   */
  observe(observation: StallObservation): boolean {
    const progressed = observation.progress !== this.progressSeen;
    this.progressSeen = observation.progress;
    if (
      this.progressAtReplacement !== undefined &&
      observation.progress !== this.progressAtReplacement
    ) {
      this.timeoutMs = this.baseTimeoutMs;
      this.progressAtReplacement = undefined;
    }
    if (progressed || observation.excused || observation.recordsWaiting !== true) {
      this.waitingSince = undefined;
      return false;
    }
    this.waitingSince ??= observation.nowMs;
    return observation.nowMs - this.waitingSince >= this.timeoutMs;
  }

  /**
   * The consumer was replaced. If the one before it was a replacement too and nothing
   * progressed since, the records "waiting" may never be deliverable (the end of an aborted
   * transaction): the timeout doubles rather than replacing consumers every few seconds.
   */
  replaced(progress: number): void {
    if (this.progressAtReplacement === progress) {
      this.timeoutMs = Math.min(this.timeoutMs * 2, this.baseTimeoutMs * MAX_BACKOFF);
    }
    this.progressAtReplacement = progress;
    this.waitingSince = undefined;
    this.progressSeen = undefined;
  }
}

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
