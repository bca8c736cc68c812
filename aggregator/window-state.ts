import { PAGE_VIEW } from '../shared/event-schema.js';

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
  isFinal: boolean;
}

interface WindowAggregate {
  users: Set<string>;
  events: number;
  pageViews: number;
  firstOffset: number;
  dirty: boolean;
  final: boolean;
}

/** What happened to one applied event. */
export type ApplyOutcome = 'counted' | 'late';

/**
 * The open event-time windows of one partition: exact user sets and counts.
 *
 * Windows are tumbling, `windowMs` long and aligned to the epoch. The partition's watermark is
 * the highest event time seen; a window is final once the watermark passes its end plus the
 * allowed lateness, and an event for a final window is late (the caller decides where it goes:
 * it is never counted into a final window).
 */
export class PartitionWindows {
  private readonly windows = new Map<number, WindowAggregate>();
  private watermark = Number.NEGATIVE_INFINITY;
  /** Highest window start already evicted as final: anything at or before it is late. */
  private finalThrough = Number.NEGATIVE_INFINITY;
  private consumedThrough = -1;

  constructor(
    readonly partition: number,
    private readonly windowMs: number,
    private readonly allowedLatenessMs: number,
  ) {}

  /** Start of the window holding `timestampMs`. */
  windowStartOf(timestampMs: number): number {
    return timestampMs - (((timestampMs % this.windowMs) + this.windowMs) % this.windowMs);
  }

  /** Records that the partition was consumed through `offset` (valid or not, counted or not). */
  advance(offset: number): void {
    if (offset > this.consumedThrough) this.consumedThrough = offset;
  }

  apply(
    event: { user_id: string; activity_type: string; timestamp: number },
    offset: number,
  ): ApplyOutcome {
    this.advance(offset);
    const start = this.windowStartOf(event.timestamp);
    if (start <= this.finalThrough || this.isPastLateness(start)) {
      if (!this.windows.has(start)) return 'late';
    }
    let window = this.windows.get(start);
    if (window === undefined) {
      window = {
        users: new Set(),
        events: 0,
        pageViews: 0,
        firstOffset: offset,
        dirty: true,
        final: false,
      };
      this.windows.set(start, window);
    } else if (window.final) {
      return 'late';
    }
    window.users.add(event.user_id);
    window.events++;
    if (event.activity_type === PAGE_VIEW) window.pageViews++;
    window.dirty = true;
    if (event.timestamp > this.watermark) {
      this.watermark = event.timestamp;
      this.markFinalWindows();
    }
    return 'counted';
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

  get throughOffset(): number {
    return this.consumedThrough;
  }

  /**
   * The rows that changed since the last snapshot, with their current cumulative figures.
   * Call `settle` with the same rows once they are durably written.
   */
  snapshotDirty(): WindowRow[] {
    const rows: WindowRow[] = [];
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
      const unchanged = window.events === row.events && window.final === row.isFinal;
      if (!unchanged) continue;
      window.dirty = false;
      if (window.final) {
        this.windows.delete(row.windowStart);
        if (row.windowStart > this.finalThrough) this.finalThrough = row.windowStart;
      }
    }
  }

  private isPastLateness(windowStart: number): boolean {
    return this.watermark >= windowStart + this.windowMs + this.allowedLatenessMs;
  }

  private markFinalWindows(): void {
    for (const [start, window] of this.windows) {
      if (!window.final && this.isPastLateness(start)) {
        window.final = true;
        window.dirty = true;
      }
    }
  }
}
