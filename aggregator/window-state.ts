import {
  type BatchInput,
  type BatchResult,
  type PackedRecords,
  type WindowPartial,
  windowStartOf,
} from './batch-aggregator.js';
import { ByteStringSet } from './byte-string-set.js';
import { withCapacity } from './packed-strings.js';
import type { PartitionCheckpoint } from './partition-recovery.js';

/** The figures of one site in one event-time window of one partition, as written to PostgreSQL. */
export interface WindowRow {
  /** Window start, epoch ms, aligned to the epoch. */
  windowStart: number;
  windowSeconds: number;
  partition: number;
  site: string;
  /** The site's time zone: the window's hour and day (rollups) are the zone's. */
  timeZone: string;
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
  /** The window is closing: its membership is written with this row, and it leaves memory. */
  membershipStored: boolean;
}

/**
 * The users and events of a site's window held in memory: written beside its row when it closes,
 * or when PostgreSQL turns out to hold the window closed already (another instance closed it).
 */
export interface WindowMembership {
  windowStart: number;
  site: string;
  users: ByteStringSet;
  eventIds: ByteStringSet;
  /** The users as of the snapshot: the set's first `userCount` entries. */
  userCount: number;
  /**
   * 1 where the event id at the same position (in the set's insertion order) is a page view; its
   * length is the number of event ids as of the snapshot.
   */
  pageViews: Uint8Array;
  /** The user of each event id, by position: its arena position in `users`. */
  eventUsers: Int32Array;
  /** The activity type of each event id, by position: an index into `typeNames`. */
  eventTypes: Uint32Array;
  typeNames: readonly string[];
}

/**
 * Events for a window that is closed (its membership stored): counted at the flush, in SQL,
 * for those of their ids and users the stored membership does not hold yet.
 */
export interface ClosedWindowEvents {
  windowStart: number;
  site: string;
  timeZone: string;
  firstOffset: number;
  isFinal: boolean;
  /** The batches' lists, as the worker returned them (each id once per list, not across lists). */
  parts: WindowPartial[];
  events: number;
}

/** What one flush writes for one partition. */
export interface PartitionFlush {
  partition: number;
  /** The ownership epoch the state was built under: written only while it is still current. */
  epoch: number;
  windowSeconds: number;
  throughOffset: number;
  watermark: number;
  /** Every window starting at or before this is closed once the flush commits. */
  closedThrough: number;
  /** Cumulative figures of the windows held in memory that changed (closing ones included). */
  rows: WindowRow[];
  /** The membership of each of `rows`, by position (sets shared with memory, not copies). */
  memberships: WindowMembership[];
  /** Events for closed windows. */
  closedWindowEvents: ClosedWindowEvents[];
  /** Closed windows that have become final since their last write. */
  finals: number[];
  /**
   * Open windows (as PostgreSQL holds them) whose records are gone from the topic: closed with
   * their stored figures as they are (see `PartitionWindows.noteReplayStart`).
   */
  unrebuilt: number[];
}

/** One site's events in a window held in memory. */
interface SiteAggregate {
  timeZone: string;
  /** The distinct user ids, as UTF-8 bytes (see `byte-string-set.ts`). */
  users: ByteStringSet;
  /** The ids of the events counted: an event seen again is not counted twice. */
  eventIds: ByteStringSet;
  /** Per event id, in insertion order: 1 for a page view. */
  pageViewFlags: Uint8Array;
  /** Per event id, in insertion order: its user's arena position in `users`. */
  eventUsers: Int32Array;
  /** Per event id, in insertion order: its activity type, an index into `typeNames`. */
  eventTypes: Uint32Array;
  typeNames: string[];
  typeIndexes: Map<string, number>;
  events: number;
  pageViews: number;
  firstOffset: number;
  dirty: boolean;
}

interface WindowAggregate {
  /** Per site: users and events are a site's own (one user id in two sites is two users). */
  sites: Map<string, SiteAggregate>;
  /** Being written with its membership, then dropped: nothing is merged into it any more. */
  closing: boolean;
}

/**
 * The windows of one partition: the recent ones in memory with exact user and event-id sets,
 * the older ones closed, their membership stored in PostgreSQL.
 *
 * Windows are tumbling, `windowMs` long and aligned to the epoch. A window *closes* — its
 * membership and figures are written in one transaction and it leaves memory — when it becomes
 * final (the partition's watermark passes its end plus the allowed lateness, or, for a partition
 * idle and caught up, wall-clock time does), or earlier when memory runs short (`closeThrough`).
 * Closing is for memory, not correctness: an event for a closed window is still counted, through
 * the stored membership, at the next flush (`ClosedWindowEvents`). Windows close oldest first, so
 * the closed ones are always a prefix: every window starting at or before `closedThrough`.
 *
 * After an assignment the state starts from the partition's checkpoint in PostgreSQL: records up
 * to the checkpoint are replayed only to rebuild the windows that were still in memory.
 */
export class PartitionWindows {
  private readonly windows = new Map<number, WindowAggregate>();
  private currentWatermark: number;
  /** Every window starting at or before this is closed: in PostgreSQL, or closing. */
  private closedThroughStart: number;
  /** Every window starting at or before this is final. */
  private finalThroughStart: number;
  /** Windows closed before this version stored membership: they take no more events. */
  readonly legacyFinalThrough: number;
  /** Closed windows that are not final yet: their rows become final when the watermark passes. */
  private readonly closedOpen = new Set<number>();
  /** Closed windows that became final since their rows were last written. */
  private readonly newlyFinal = new Set<number>();
  /**
   * Windows PostgreSQL holds open (the checkpoint's), not rebuilt in memory yet: rebuilt whatever
   * `closedThrough` says, so that an open row below a closed one (rows written before membership
   * was stored) is still rebuilt and closed rather than counted around.
   */
  private readonly toRebuild: Set<number>;
  /** Events for closed windows, counted at the next flush; by `closedEventsKey`. */
  private closedEvents = new Map<string, ClosedWindowEvents>();
  private closedEventCount = 0;
  private consumedThrough: number;
  private readonly replayUntil: number;
  private replaying: Float64Array;
  /** Replayed records up to here are skipped, none rebuilt: see `noteReplayStart`. */
  private skipThrough = -1;
  /** Windows that cannot be rebuilt, to be written closed at the next flush. */
  private unrebuilt: number[] = [];
  private lastRecordWallMs = Date.now();
  /** Records behind the partition's end as of the newest batch: a partition with any is not idle. */
  private backlog = 0;
  /** When the broker's end offsets last showed nothing unread past what was consumed. */
  private caughtUpAtMs: number | undefined;

  /** The ownership epoch this state was claimed under (`claimPartition`). */
  readonly epoch: number;

  constructor(
    readonly partition: number,
    readonly windowMs: number,
    readonly allowedLatenessMs: number,
    readonly maxAgeMs: number,
    checkpoint?: PartitionCheckpoint,
  ) {
    this.epoch = checkpoint?.epoch ?? 0;
    this.currentWatermark = checkpoint?.watermark ?? Number.NEGATIVE_INFINITY;
    this.closedThroughStart = checkpoint?.closedThrough ?? Number.NEGATIVE_INFINITY;
    this.finalThroughStart = checkpoint?.finalThrough ?? Number.NEGATIVE_INFINITY;
    this.legacyFinalThrough = checkpoint?.legacyFinalThrough ?? Number.NEGATIVE_INFINITY;
    for (const start of checkpoint?.closedOpenWindows ?? []) this.closedOpen.add(start);
    this.replayUntil = (checkpoint?.resumeFrom ?? 0) - 1;
    this.consumedThrough = (checkpoint?.replayFrom ?? 0) - 1;
    this.replaying = Float64Array.from(checkpoint?.openWindows ?? []);
    this.toRebuild = new Set(checkpoint?.openWindows ?? []);
  }

  get watermark(): number {
    return this.currentWatermark;
  }

  /** Every window starting at or before this is closed (counted through stored membership). */
  get closedThrough(): number {
    return this.closedThroughStart;
  }

  /** Every window starting at or before this is final. */
  get finalThrough(): number {
    return this.finalThroughStart;
  }

  /** Records at or below this offset are being replayed (already reflected in PostgreSQL). */
  get replayThrough(): number {
    if (this.replaying.length > 0) return this.replayUntil;
    return this.consumedThrough < this.skipThrough ? this.skipThrough : -1;
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

  /** User ids held: in the windows in memory, and one per event waiting for a closed window. */
  get heldUsers(): number {
    let total = this.closedEventCount;
    for (const window of this.windows.values()) {
      for (const site of window.sites.values()) total += site.users.size;
    }
    return total;
  }

  /** Event ids held: in the windows in memory, and one per event waiting for a closed window. */
  get heldEventIds(): number {
    let total = this.closedEventCount;
    for (const window of this.windows.values()) {
      for (const site of window.sites.values()) total += site.eventIds.size;
    }
    return total;
  }

  /** Windows in memory that are not closing yet, with the ids each holds (oldest first). */
  liveWindows(): Array<{ start: number; ids: number }> {
    const live: Array<{ start: number; ids: number }> = [];
    for (const [start, window] of this.windows) {
      if (window.closing) continue;
      let ids = 0;
      for (const site of window.sites.values()) ids += site.users.size + site.eventIds.size;
      live.push({ start, ids });
    }
    return live.sort((a, b) => a.start - b.start);
  }

  /**
   * The replay's next record is at `offset`. Past the next offset expected (one offset can be a
   * transaction's commit marker), records of the windows being rebuilt are gone from the topic:
   * retention removed them and the consumer moved on to the earliest offset
   * (OFFSET_RESET=earliest). Those windows cannot be rebuilt, and rebuilding them from what is
   * left would replace their stored figures with smaller ones. Instead they close as PostgreSQL
   * holds them (counted events stay counted); the rest of the replay is skipped, and later events
   * for them are counted through their stored membership — empty, so their users count as new
   * there: the cost of the records lost.
   */
  noteReplayStart(offset: number): void {
    if (!this.isReplaying || offset - (this.consumedThrough + 1) <= 1) return;
    const unrebuilt = [...this.toRebuild, ...this.windows.keys()];
    this.toRebuild.clear();
    // Windows in memory during a replay are rebuilt from part of their records only.
    this.windows.clear();
    this.unrebuilt.push(...unrebuilt);
    this.skipThrough = this.replayUntil;
    this.replaying = new Float64Array(0);
    const newest = Math.max(...unrebuilt);
    if (newest > this.closedThroughStart) this.closedThroughStart = newest;
  }

  /**
   * The worker input for a batch of this partition: its records plus the state they need.
   * Windows starting before `membershipFrom` may have lost their membership to retention
   * (`membershipHorizon`): their events are dead-lettered as late, never counted against it.
   */
  batchInput(packed: PackedRecords, membershipFrom = Number.NEGATIVE_INFINITY): BatchInput {
    return {
      partition: this.partition,
      ...packed,
      windowMs: this.windowMs,
      maxAgeMs: this.maxAgeMs,
      watermarkIn: this.currentWatermark,
      // Windows whose membership retention may have dropped take events no more than those.
      legacyFinalThrough: Math.max(this.legacyFinalThrough, membershipFrom - this.windowMs),
      replayThrough: this.replayThrough,
      replayWindows: this.replaying,
    };
  }

  /**
   * Merges a batch's partial figures; the partition is now consumed through `lastOffset`.
   * Returns how many events were skipped because their window had counted their id already (in
   * an earlier batch; the worker skips repeats within its batch), and how many went to closed
   * windows.
   */
  merge(result: BatchResult, lastOffset: number): { duplicates: number; closed: number } {
    let duplicates = 0;
    let closed = 0;
    for (const partial of result.windows) {
      let window = this.windows.get(partial.start);
      if (window?.closing) {
        // Being written with its membership: what comes now is counted through that membership.
        closed += this.addClosedWindowEvents(partial);
        continue;
      }
      if (window === undefined) {
        const rebuild = this.toRebuild.delete(partial.start);
        if (!rebuild && partial.start <= this.closedThroughStart) {
          closed += this.addClosedWindowEvents(partial);
          continue;
        }
        window = { sites: new Map(), closing: false };
        this.windows.set(partial.start, window);
      }
      let site = window.sites.get(partial.site);
      if (site === undefined) {
        site = newSiteAggregate(partial);
        window.sites.set(partial.site, site);
      } else if (partial.firstOffset < site.firstOffset) {
        site.firstOffset = partial.firstOffset;
      }
      duplicates += mergePartial(site, partial);
      site.dirty = true;
    }
    if (lastOffset > this.consumedThrough) this.consumedThrough = lastOffset;
    if (this.consumedThrough >= this.replayUntil && this.replaying.length > 0) {
      this.replaying = new Float64Array(0);
    }
    this.lastRecordWallMs = Date.now();
    if (result.watermarkOut > this.currentWatermark) {
      this.currentWatermark = result.watermarkOut;
      this.finalizeThrough(this.lastStartPast(this.currentWatermark));
    }
    return { duplicates, closed };
  }

  private addClosedWindowEvents(partial: WindowPartial): number {
    const count = partial.eventIds.ends.length;
    const key = closedEventsKey(partial.start, partial.site);
    let pending = this.closedEvents.get(key);
    if (pending === undefined) {
      pending = {
        windowStart: partial.start,
        site: partial.site,
        timeZone: partial.timeZone,
        firstOffset: partial.firstOffset,
        isFinal: false,
        parts: [],
        events: 0,
      };
      this.closedEvents.set(key, pending);
    }
    pending.parts.push(partial);
    pending.events += count;
    this.closedEventCount += count;
    return count;
  }

  /** Records left to read behind the newest batch (its high watermark minus its last offset). */
  noteBacklog(records: number): void {
    this.backlog = records;
  }

  /**
   * What the broker's end offsets (read at `observedAtMs`) say: whether anything is unread past
   * what was consumed. Only a look that shows nothing unread lets the clock close windows.
   */
  noteEnd(high: number, observedAtMs: number): void {
    // One offset past the last consumed is a transaction's commit marker at most.
    const unread = high - (this.consumedThrough + 1);
    this.caughtUpAtMs = unread <= 1 ? observedAtMs : undefined;
  }

  /**
   * Starts the idle clock again: consumption resumed after a pause, and records that were waiting
   * meanwhile are about to arrive.
   */
  restartIdleClock(nowMs: number): void {
    this.lastRecordWallMs = nowMs;
    this.caughtUpAtMs = undefined;
  }

  /**
   * An idle partition lets wall-clock time finalize its windows, so that a window's figures
   * become final even when no later event arrives to move the watermark. Idle means: no records
   * for `idleAfterMs`, the newest batch left none behind, and the broker's end offsets, read
   * within `freshMs` and after the newest record arrived, show nothing unread. A consumer that
   * stalls while caught up, or a process frozen and resumed, sees records waiting (or no fresh
   * look) and closes nothing by the clock. Not during a replay: those windows' records are still
   * being read.
   */
  finalizeIdle(nowMs: number, idleAfterMs: number, freshMs: number): void {
    if (this.isReplaying || this.backlog > 0 || nowMs - this.lastRecordWallMs < idleAfterMs) return;
    const lookedAt = this.caughtUpAtMs;
    if (lookedAt === undefined || lookedAt < this.lastRecordWallMs || nowMs - lookedAt > freshMs) {
      return;
    }
    this.finalizeThrough(this.lastStartPast(nowMs));
  }

  /**
   * Closes every window in memory starting at or before `start` (memory ran short): they are
   * written with their membership at the next flush and leave memory; later events for them are
   * counted through the stored membership.
   */
  closeThrough(start: number): void {
    if (this.isReplaying) return;
    if (start > this.closedThroughStart) this.closedThroughStart = start;
    for (const [windowStart, window] of this.windows) {
      if (windowStart <= start && !window.closing) markClosing(window);
    }
  }

  /**
   * What the next flush writes for this partition. Events for closed windows move into the flush:
   * hand it back with `restore` if the write fails, or to `settle` once it is committed.
   */
  snapshot(): PartitionFlush {
    const flush: PartitionFlush = {
      partition: this.partition,
      epoch: this.epoch,
      windowSeconds: this.windowMs / 1000,
      throughOffset: this.consumedThrough,
      watermark: this.currentWatermark,
      closedThrough: this.closedThroughStart,
      rows: [],
      memberships: [],
      closedWindowEvents: [],
      finals: [],
      unrebuilt: this.unrebuilt,
    };
    this.unrebuilt = [];
    // Mid-replay figures are older than the rows PostgreSQL holds (the fence would refuse them).
    if (this.isReplaying) return flush;
    for (const [start, window] of this.windows) {
      for (const [name, site] of window.sites) {
        if (!site.dirty) continue;
        flush.rows.push({
          windowStart: start,
          windowSeconds: flush.windowSeconds,
          partition: this.partition,
          site: name,
          timeZone: site.timeZone,
          uniqueUsers: site.users.size,
          pageViews: site.pageViews,
          events: site.events,
          firstOffset: site.firstOffset,
          throughOffset: this.consumedThrough,
          watermark: this.currentWatermark,
          isFinal: start <= this.finalThroughStart,
          membershipStored: window.closing,
        });
        flush.memberships.push({
          windowStart: start,
          site: name,
          users: site.users,
          eventIds: site.eventIds,
          userCount: site.users.size,
          pageViews: site.pageViewFlags.slice(0, site.events),
          eventUsers: site.eventUsers.slice(0, site.events),
          eventTypes: site.eventTypes.slice(0, site.events),
          typeNames: site.typeNames.slice(),
        });
      }
    }
    for (const pending of this.closedEvents.values()) {
      pending.isFinal = pending.windowStart <= this.finalThroughStart;
      flush.closedWindowEvents.push(pending);
    }
    this.closedEvents = new Map();
    this.closedEventCount = 0;
    flush.finals = [...this.newlyFinal];
    return flush;
  }

  /** Takes back the events for closed windows of a flush that failed, for the next one. */
  restore(flush: PartitionFlush): void {
    this.unrebuilt.push(...flush.unrebuilt);
    for (const pending of flush.closedWindowEvents) {
      const key = closedEventsKey(pending.windowStart, pending.site);
      const newer = this.closedEvents.get(key);
      if (newer !== undefined) {
        pending.parts.push(...newer.parts);
        pending.events += newer.events;
        pending.firstOffset = Math.min(pending.firstOffset, newer.firstOffset);
      }
      this.closedEvents.set(key, pending);
      this.closedEventCount += pending.events - (newer?.events ?? 0);
    }
  }

  /**
   * Marks a flush as committed: windows unchanged since the snapshot become clean, closing ones
   * leave memory, and closed windows not final yet are remembered so that their rows become
   * final in time.
   */
  settle(flush: PartitionFlush): void {
    for (const row of flush.rows) {
      const window = this.windows.get(row.windowStart);
      if (window === undefined) continue;
      if (row.membershipStored) {
        // Closing since the snapshot: nothing was merged into it after, so all of it (every
        // site's row) is written.
        this.windows.delete(row.windowStart);
        this.rememberClosed(row.windowStart, row.isFinal);
        continue;
      }
      const site = window.sites.get(row.site);
      if (
        site !== undefined &&
        !window.closing &&
        site.events === row.events &&
        row.isFinal === row.windowStart <= this.finalThroughStart
      ) {
        site.dirty = false;
      }
    }
    for (const pending of flush.closedWindowEvents) {
      this.rememberClosed(pending.windowStart, pending.isFinal);
    }
    for (const start of flush.finals) this.newlyFinal.delete(start);
    for (const start of flush.unrebuilt) this.rememberClosed(start, false);
  }

  /** A closed window was written (final or not): make sure its row becomes final in time. */
  private rememberClosed(start: number, writtenFinal: boolean): void {
    if (start > this.finalThroughStart) {
      this.closedOpen.add(start);
    } else if (!writtenFinal) {
      // It became final while the flush was running.
      this.closedOpen.delete(start);
      this.newlyFinal.add(start);
    }
  }

  /** The newest window start whose end plus the allowed lateness is at or before `timeMs`. */
  private lastStartPast(timeMs: number): number {
    return windowStartOf(timeMs - this.allowedLatenessMs - this.windowMs, this.windowMs);
  }

  /** Every window starting at or before `start` is final, and closes. */
  private finalizeThrough(start: number): void {
    if (start <= this.finalThroughStart) return;
    this.finalThroughStart = start;
    if (start > this.closedThroughStart) this.closedThroughStart = start;
    for (const [windowStart, window] of this.windows) {
      if (windowStart <= start) markClosing(window);
    }
    for (const windowStart of this.closedOpen) {
      if (windowStart <= start) {
        this.closedOpen.delete(windowStart);
        this.newlyFinal.add(windowStart);
      }
    }
  }
}

function closedEventsKey(windowStart: number, site: string): string {
  return `${site} ${windowStart}`;
}

function markClosing(window: WindowAggregate): void {
  window.closing = true;
  for (const site of window.sites.values()) site.dirty = true;
}

function newSiteAggregate(partial: WindowPartial): SiteAggregate {
  const expected = partial.eventIds.ends.length;
  const capacity = Math.max(16, expected);
  return {
    timeZone: partial.timeZone,
    users: new ByteStringSet(partial.eventIdUsers.ends.length),
    eventIds: new ByteStringSet(expected),
    pageViewFlags: new Uint8Array(capacity),
    eventUsers: new Int32Array(capacity),
    eventTypes: new Uint32Array(capacity),
    typeNames: [],
    typeIndexes: new Map(),
    events: 0,
    pageViews: 0,
    firstOffset: partial.firstOffset,
    dirty: true,
  };
}

/** Merges a partial's events into its site's window; returns how many it had counted already. */
function mergePartial(site: SiteAggregate, partial: WindowPartial): number {
  const { eventIds, eventIdUsers, eventIdPageViews, eventIdTypes } = partial;
  // The partial's type indexes, as this window's.
  const types = partial.types.map((name) => {
    let index = site.typeIndexes.get(name);
    if (index === undefined) {
      index = site.typeNames.length;
      site.typeNames.push(name);
      site.typeIndexes.set(name, index);
    }
    return index;
  });
  let duplicates = 0;
  let idStart = 0;
  let userStart = 0;
  for (let i = 0; i < eventIds.ends.length; i++) {
    const idEnd = eventIds.ends[i] as number;
    const userEnd = eventIdUsers.ends[i] as number;
    if (site.eventIds.add(eventIds.bytes, idStart, idEnd, eventIds.hashes[i])) {
      const user =
        Math.abs(
          site.users.insert(eventIdUsers.bytes, userStart, userEnd, eventIdUsers.hashes[i]),
        ) - 1;
      if (site.events === site.pageViewFlags.length) growEventArrays(site);
      const pageView = eventIdPageViews[i] as number;
      site.pageViewFlags[site.events] = pageView;
      site.eventUsers[site.events] = user;
      site.eventTypes[site.events] = types[eventIdTypes[i] as number] as number;
      site.events++;
      site.pageViews += pageView;
    } else {
      duplicates++;
    }
    idStart = idEnd;
    userStart = userEnd;
  }
  return duplicates;
}

function growEventArrays(site: SiteAggregate): void {
  const capacity = site.pageViewFlags.length * 2;
  site.pageViewFlags = withCapacity(site.pageViewFlags, capacity);
  site.eventUsers = withCapacity(site.eventUsers, capacity);
  site.eventTypes = withCapacity(site.eventTypes, capacity);
}
