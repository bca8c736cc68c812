/**
 * Each assigned partition's records between `consume` and a worker: the consumed records packed
 * into the partition's buffers (`RecordPacker`), which partition goes to a worker next, and the
 * bookkeeping that keeps every partition's records contiguous and in offset order across
 * rebalances and seeks. It holds no client: the consumer (`activity-consumer.ts`) seeks where
 * `take` says.
 */
import type { Message } from '@confluentinc/kafka-javascript';
import { type PackerSizes, RecordPacker } from './batch-aggregator.js';

/** librdkafka's logical offset for "the beginning of the partition". */
export const OFFSET_BEGINNING = -2;

/** A partition's records on their way from `consume` to a worker. */
export interface Feed {
  /** Records consumed and packed, waiting for the partition's turn at a worker. */
  packer: RecordPacker | undefined;
  /** When `packer` was started (a sequence): the longest waiting goes first. */
  waitingSince: number;
  /** The last offset packed (or applied): records up to it that come again are dropped. */
  lastPacked: number;
  /** Until the first record: the partition is read from its beginning (no position to check). */
  fromBeginning: boolean;
  /** The partition had no position in PostgreSQL: read from its beginning, wherever that is. */
  readFromBeginning: boolean;
  /** The partition's batch at a worker, if any: one at a time, so records apply in order. */
  inHand: Promise<void> | undefined;
  /** A failed batch is read again from here on, not before. */
  retryAtMs: number;
  /** What the partition's last batch held: its next packer is sized for as much. */
  lastBatch: PackerSizes | undefined;
  /**
   * A gap seen after `lastPacked`: the record at `at` came next. Its records were dropped and the
   * partition sought back; only when the same gap comes again once that seek has completed (no
   * seek pending) is it taken as the log's (retention moved the earliest offset past it, with
   * OFFSET_RESET=earliest).
   */
  gap: { after: number; at: number } | undefined;
  /**
   * Records of the partition were dropped and it must be sought back: until a seek to
   * `seekOffset` has completed, whatever librdkafka delivers for it comes from the old position.
   */
  seekPending: boolean;
}

/** What `take` found besides the records it packed. */
export interface Taken {
  /** Records at or before their feed's last offset: delivered again, dropped. */
  redelivered: number;
  /**
   * Partitions whose records were dropped: they came from a `consume` call that started before
   * their position was set anew, or after a gap not yet confirmed by a seek, or while a seek was
   * pending. Each must be sought to `seekOffset`, the seek completed before the next `consume`
   * call (`sought`), so that none is skipped; until then its records are dropped.
   */
  stale: number[];
  /** Of those, the partitions dropped at a gap: each gap's expected offset and the one seen. */
  gaps: Array<{ partition: number; expected: number; offset: number }>;
}

export class PartitionFeeds {
  private readonly feeds = new Map<number, Feed>();
  private waiting = 0;
  private waitingSequence = 0;
  /**
   * Bumped whenever a partition's reading position is set anew (assignment, revocation, a seek);
   * `resetAt` holds, per partition, the value of its latest. Records from a `consume` call that
   * started before that are not taken: they may belong to the old position.
   */
  private resetSequence = 0;
  private readonly resetAt = new Map<number, number>();

  /** Bytes packed and not yet handed to a worker. */
  get waitingBytes(): number {
    return this.waiting;
  }

  /** The reset sequence now: pass it to `take` for the records of a call started now. */
  get sequence(): number {
    return this.resetSequence;
  }

  get partitions(): number[] {
    return [...this.feeds.keys()];
  }

  get(partition: number): Feed | undefined {
    return this.feeds.get(partition);
  }

  has(partition: number): boolean {
    return this.feeds.has(partition);
  }

  /** A newly assigned partition: the next record taken must follow `lastApplied`. */
  assign(partition: number, lastApplied: number, fromBeginning: boolean): void {
    this.markReset(partition);
    this.feeds.set(partition, {
      packer: undefined,
      waitingSince: 0,
      lastPacked: lastApplied,
      fromBeginning,
      readFromBeginning: fromBeginning,
      inHand: undefined,
      retryAtMs: 0,
      lastBatch: undefined,
      gap: undefined,
      seekPending: false,
    });
  }

  /** A partition no longer assigned: what waits for it is dropped. */
  delete(partition: number): void {
    this.dropWaiting(partition);
    this.feeds.delete(partition);
    this.markReset(partition);
  }

  /** Drops what waits for a worker in the partition's feed (it is read again, or not ours). */
  dropWaiting(partition: number): void {
    const feed = this.feeds.get(partition);
    if (feed?.packer === undefined) return;
    this.waiting -= feed.packer.bytes;
    feed.packer = undefined;
  }

  /** Drops what waits in every feed. */
  dropAllWaiting(): void {
    for (const partition of this.feeds.keys()) this.dropWaiting(partition);
  }

  /**
   * The partition is read again after `lastApplied` (a failed batch), not before `retryAtMs`;
   * returns where to seek.
   */
  rewind(partition: number, lastApplied: number, retryAtMs: number): number | undefined {
    const feed = this.feeds.get(partition);
    if (feed === undefined) return undefined;
    this.dropWaiting(partition);
    feed.lastPacked = lastApplied;
    feed.retryAtMs = retryAtMs;
    feed.seekPending = true;
    this.markReset(partition);
    return this.seekOffset(feed);
  }

  /** Where librdkafka must read the partition from: after its last record, or its beginning. */
  seekOffset(feed: Feed): number {
    return feed.readFromBeginning && feed.lastPacked < 0 ? OFFSET_BEGINNING : feed.lastPacked + 1;
  }

  markReset(partition: number): void {
    this.resetAt.set(partition, ++this.resetSequence);
  }

  /**
   * The consumer's seek of `feed` to `offset` completed. If it went to the feed's next record,
   * the partition's records are taken again, and a gap seen right before it is the log's if it
   * comes again.
   */
  sought(partition: number, feed: Feed, offset: number): void {
    if (this.feeds.get(partition) === feed && offset === this.seekOffset(feed)) {
      feed.seekPending = false;
    }
  }

  /**
   * Packs each record into its partition's feed: the main thread's only per-record work.
   * A record that does not follow its feed's last one by more than one offset (a transaction
   * marker takes one) is a gap. A librdkafka consumer can deliver one without the log having
   * it: records prefetched for a position given up, handed out by a `consume` call that ran
   * before the seek meant to discard them (seen in the chaos suite: 82 records skipped). So
   * a gap is never taken on first sight: the partition's records are dropped and it is sought
   * back (`stale`). Only the same gap after a completed seek is the log's: `onGap` hears of it,
   * and it is taken.
   */
  take(
    messages: readonly Message[],
    resetBefore: number,
    onGap: (partition: number, expected: number, offset: number) => void,
  ): Taken {
    let redelivered = 0;
    const stale: number[] = [];
    const gaps: Taken['gaps'] = [];
    let feed: Feed | undefined;
    let partition = -1;
    for (const message of messages) {
      if (message.partition !== partition || feed === undefined) {
        partition = message.partition;
        feed = this.feeds.get(partition);
        if (
          feed !== undefined &&
          ((this.resetAt.get(partition) ?? -1) > resetBefore ||
            feed.seekPending ||
            stale.includes(partition))
        ) {
          if (!stale.includes(partition)) stale.push(partition);
          feed.seekPending = true;
          feed = undefined;
        }
      }
      // Not assigned (any more), or stale: not taken.
      if (feed === undefined) continue;
      const offset = message.offset;
      if (offset <= feed.lastPacked) {
        redelivered++;
        continue;
      }
      if (offset > feed.lastPacked + 2 && !feed.fromBeginning) {
        // Records are taken only with no seek pending: the same gap again comes after the seek.
        if (feed.gap?.after !== feed.lastPacked || feed.gap.at !== offset) {
          // Not taken before a seek has brought it again: the partition's records are dropped.
          feed.gap = { after: feed.lastPacked, at: offset };
          feed.seekPending = true;
          stale.push(partition);
          gaps.push({ partition, expected: feed.lastPacked + 1, offset });
          feed = undefined;
          continue;
        }
        onGap(partition, feed.lastPacked + 1, offset);
      }
      feed.gap = undefined;
      feed.fromBeginning = false;
      if (feed.packer === undefined) {
        feed.packer = new RecordPacker(feed.lastBatch);
        feed.waitingSince = ++this.waitingSequence;
      }
      const before = feed.packer.bytes;
      const key = message.key;
      feed.packer.push(
        offset,
        message.timestamp,
        key === undefined || key === null ? null : typeof key === 'string' ? Buffer.from(key) : key,
        message.value,
      );
      this.waiting += feed.packer.bytes - before;
      feed.lastPacked = offset;
    }
    for (const partition of stale) this.markReset(partition);
    return { redelivered, stale, gaps };
  }

  /**
   * The feed that has waited longest among those with records, none in hand and no retry
   * pending, with its packed records taken out; undefined when there is none.
   */
  next(nowMs: number): { partition: number; feed: Feed; packer: RecordPacker } | undefined {
    let next: [number, Feed] | undefined;
    for (const entry of this.feeds) {
      const feed = entry[1];
      if (feed.packer === undefined || feed.inHand !== undefined || feed.retryAtMs > nowMs) {
        continue;
      }
      if (next === undefined || feed.waitingSince < next[1].waitingSince) next = entry;
    }
    if (next === undefined) return undefined;
    const [partition, feed] = next;
    const packer = feed.packer as RecordPacker;
    feed.packer = undefined;
    feed.lastBatch = packer.sizes;
    this.waiting -= packer.bytes;
    return { partition, feed, packer };
  }
}
