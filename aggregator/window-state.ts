import type { BatchInput, BatchResult, PackedRecords } from './batch-aggregator.js';
import { ByteStringSet } from './byte-string-set.js';
import type { PartitionCheckpoint } from './partition-recovery.js';

/** The figures of one event-time window in one partition, as written to PostgreSQL. */
export interface WindowRow {
  /** Window start, epoch ms, aligned to the epoch. */
  windowStart: number;
  windowSeconds: number;
  partition: number;
  uniqueUsers: number;
  pageViews: number;
  events: number;
  /** First partition offset that contributed to this window. */
  firstOffset: number;
  /** The partition was consumed up to and including this offset when the figures were taken. */
  throughOffset: number;
  /** The partition's event-time watermark at `throughOffset` (restored on assignment). */
  watermark: number;
  isFinal: boolean;
}

interface WindowAggregate {
  /** The window's distinct user ids, as UTF-8 bytes (see `byte-string-set.ts`). */
  users: ByteStringSet;
  /** The `event_id`s counted in this window: an event seen again is not counted twice. */
  eventIds: ByteStringSet;
  events: number;
  pageViews: number;
  firstOffset: number;
  dirty: boolean;
  final: boolean;
}

/**
 * The open event-time windows of one partition: exact user sets and counts.
 *
 * Windows are tumbling, `windowMs` long and aligned to the epoch. The partition's watermark is
 * the highest event time seen; a window is final once the watermark passes its end plus the
 * allowed lateness, or, when the partition is idle, once wall-clock time does. Which records are
 * late is decided per record in `batch-aggregator.ts` from the state this class hands it.
 *
 * After an assignment the state starts from the partition's checkpoint in PostgreSQL: records up
 * to the checkpoint are replayed only to rebuild the windows that were still open.
 */
export class PartitionWindows {
  private readonly windows = new Map<number, WindowAggregate>();
  private currentWatermark: number;
  /** Every window starting at or before this is final (written, or about to be, and dropped). */
  private finalStartsThrough: number;
  private consumedThrough: number;
  private readonly replayUntil: number;
  private replaying: Float64Array;
  private lastRecordWallMs = Date.now();
  /** Records behind the partition's end as of the newest batch: a partition with any is not idle. */
  private backlog = 0;

  constructor(
    readonly partition: number,
    readonly windowMs: number,
    readonly allowedLatenessMs: number,
    checkpoint?: PartitionCheckpoint,
  ) {
    this.currentWatermark = checkpoint?.watermark ?? Number.NEGATIVE_INFINITY;
    this.finalStartsThrough = checkpoint?.finalThrough ?? Number.NEGATIVE_INFINITY;
    this.replayUntil = (checkpoint?.resumeFrom ?? 0) - 1;
    this.consumedThrough = (checkpoint?.replayFrom ?? 0) - 1;
    this.replaying = Float64Array.from(checkpoint?.openWindows ?? []);
  }

  get watermark(): number {
    return this.currentWatermark;
  }

  get finalThrough(): number {
    return this.finalStartsThrough;
  }

  /** Records at or below this offset are being replayed (already reflected in PostgreSQL). */
  get replayThrough(): number {
    return this.replaying.length === 0 ? -1 : this.replayUntil;
  }

  /** The windows the replay rebuilds. */
  get replayWindows(): Float64Array {
    return this.replaying;
  }

  get throughOffset(): number {
    return this.consumedThrough;
  }

  /** True until the replay has rebuilt the open windows: nothing is flushed meanwhile. */
  get isReplaying(): boolean {
    return this.replaying.length > 0;
  }

  /** Windows currently held in memory. */
  get openWindows(): number {
    return this.windows.size;
  }

  /** User ids held across this partition's windows. */
  get heldUsers(): number {
    let total = 0;
    for (const window of this.windows.values()) total += window.users.size;
    return total;
  }

  /** Event ids held across this partition's windows (for de-duplication). */
  get heldEventIds(): number {
    let total = 0;
    for (const window of this.windows.values()) total += window.eventIds.size;
    return total;
  }

  /** The worker input for a batch of this partition: its records plus the state they need. */
  batchInput(packed: PackedRecords): BatchInput {
    return {
      partition: this.partition,
      ...packed,
      windowMs: this.windowMs,
      allowedLatenessMs: this.allowedLatenessMs,
      watermarkIn: this.currentWatermark,
      finalThrough: this.finalStartsThrough,
      replayThrough: this.replayThrough,
      replayWindows: this.replaying,
    };
  }

  /**
   * Merges a batch's partial figures; the partition is now consumed through `lastOffset`.
   * Returns how many identified events were skipped because their window had counted their
   * `event_id` already (in an earlier batch; the worker skips repeats within its batch).
   */
  merge(result: BatchResult, lastOffset: number): number {
    let duplicates = 0;
    for (const partial of result.windows) {
      let window = this.windows.get(partial.start);
      if (window === undefined) {
        window = {
          users: new ByteStringSet(partial.users.ends.length + partial.eventIdUsers.ends.length),
          eventIds: new ByteStringSet(partial.eventIds.ends.length),
          events: 0,
          pageViews: 0,
          firstOffset: partial.firstOffset,
          dirty: true,
          final: false,
        };
        this.windows.set(partial.start, window);
      } else if (partial.firstOffset < window.firstOffset) {
        window.firstOffset = partial.firstOffset;
      }
      const { users, eventIds, eventIdUsers, eventIdPageViews } = partial;
      let userStart = 0;
      for (const userEnd of users.ends) {
        window.users.add(users.bytes, userStart, userEnd);
        userStart = userEnd;
      }
      window.events += partial.events;
      window.pageViews += partial.pageViews;
      let idStart = 0;
      userStart = 0;
      for (let i = 0; i < eventIds.ends.length; i++) {
        const idEnd = eventIds.ends[i] as number;
        const userEnd = eventIdUsers.ends[i] as number;
        if (window.eventIds.add(eventIds.bytes, idStart, idEnd)) {
          window.users.add(eventIdUsers.bytes, userStart, userEnd);
          window.events++;
          window.pageViews += eventIdPageViews[i] as number;
        } else {
          duplicates++;
        }
        idStart = idEnd;
        userStart = userEnd;
      }
      window.dirty = true;
    }
    if (lastOffset > this.consumedThrough) this.consumedThrough = lastOffset;
    if (this.consumedThrough >= this.replayUntil && this.replaying.length > 0) {
      this.replaying = new Float64Array(0);
    }
    this.lastRecordWallMs = Date.now();
    if (result.watermarkOut > this.currentWatermark) {
      this.currentWatermark = result.watermarkOut;
      this.markFinal(
        (start) => this.currentWatermark >= this.endOf(start) + this.allowedLatenessMs,
      );
    }
    return duplicates;
  }

  /** Records left to read behind the newest batch (its high watermark minus its last offset). */
  noteBacklog(records: number): void {
    this.backlog = records;
  }

  /**
   * Starts the idle clock again: consumption resumed after a pause, and records that were waiting
   * meanwhile are about to arrive.
   */
  restartIdleClock(nowMs: number): void {
    this.lastRecordWallMs = nowMs;
  }

  /**
   * An idle partition (no records for `idleAfterMs`, and none left to read) lets wall-clock time
   * finalize its windows, so that a window's figures become final even when no later event
   * arrives to move the watermark. Not during a replay: those windows' records are still being
   * read. A partition with a backlog is not idle but behind: its records are on their way, and
   * closing their windows by the clock would turn them late (the caller also skips this while
   * consumption is paused).
   */
  finalizeIdle(nowMs: number, idleAfterMs: number): void {
    if (this.isReplaying || this.backlog > 0 || nowMs - this.lastRecordWallMs < idleAfterMs) return;
    this.markFinal((start) => nowMs >= this.endOf(start) + this.allowedLatenessMs);
  }

  /**
   * The rows that changed since the last snapshot, with their current cumulative figures.
   * Call `settle` with the same rows once they are durably written.
   */
  snapshotDirty(): WindowRow[] {
    const rows: WindowRow[] = [];
    // Mid-replay figures are older than the rows PostgreSQL holds (the fence would refuse them).
    if (this.isReplaying) return rows;
    for (const [start, window] of this.windows) {
      if (!window.dirty) continue;
      rows.push({
        windowStart: start,
        windowSeconds: this.windowMs / 1000,
        partition: this.partition,
        uniqueUsers: window.users.size,
        pageViews: window.pageViews,
        events: window.events,
        firstOffset: window.firstOffset,
        throughOffset: this.consumedThrough,
        watermark: this.currentWatermark,
        isFinal: window.final,
      });
    }
    return rows;
  }

  /**
   * Marks `rows` as written: windows unchanged since the snapshot become clean, and final ones
   * are dropped from memory.
   */
  settle(rows: readonly WindowRow[]): void {
    for (const row of rows) {
      const window = this.windows.get(row.windowStart);
      if (window === undefined) continue;
      if (window.events !== row.events || window.final !== row.isFinal) continue;
      window.dirty = false;
      if (window.final) this.windows.delete(row.windowStart);
    }
  }

  private endOf(start: number): number {
    return start + this.windowMs;
  }

  private markFinal(isPast: (start: number) => boolean): void {
    for (const [start, window] of this.windows) {
      if (window.final || !isPast(start)) continue;
      window.final = true;
      window.dirty = true;
      if (start > this.finalStartsThrough) this.finalStartsThrough = start;
    }
  }
}
