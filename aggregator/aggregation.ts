import type { PackedRecords } from './batch-aggregator.js';
import {
  type FlushOutcome,
  type PauseBeforeCommit,
  type RollupSettings,
  writeFlush,
} from './copy-writer.js';
import type { Database } from './database.js';
import type { DeadLetter, DeadLetterProducer } from './dead-letter.js';
import type { AggregatorMetrics } from './metrics.js';
import type { PartitionCheckpoint } from './partition-recovery.js';
import { membershipHorizon } from './retention.js';
import { type PartitionFlush, PartitionWindows } from './window-state.js';
import type { WorkerPool } from './worker-pool.js';

/** One partition's consumed records, packed as they were consumed (`RecordPacker`). */
export interface PackedBatch {
  records: PackedRecords;
  count: number;
  firstOffset: number;
  lastOffset: number;
  /** The last record's Kafka timestamp (ingest's receive time), -1 if it has none. */
  lastTimestampMs: number;
}

export interface AggregationOptions {
  windowMs: number;
  allowedLatenessMs: number;
  /** Events older than this at their receive time are invalid (ingest refuses them too). */
  maxAgeMs: number;
  /** A partition without records for this long lets wall-clock time finalize its windows. */
  idleAfterMs: number;
  /**
   * ...provided the broker's end offsets, read no longer ago than this, show nothing unread
   * (the consumer watchdog reads them every few seconds).
   */
  endOffsetsFreshMs: number;
  /** How flushes keep the hour and day figures; null: they keep none. */
  rollups: RollupSettings | null;
  /** Fault injection only: hold every flush between the upsert and COMMIT. */
  pauseBeforeCommit?: PauseBeforeCommit;
}

/**
 * The aggregation of every assigned partition, and its flushes to PostgreSQL.
 *
 * A batch goes: pack → worker (parse, validate, window) → dead-letter what cannot be counted
 * (acknowledged before anything else) → merge into the partition's windows, or set aside for
 * closed windows. Flushes never overlap: a flush requested while one runs waits for it and then
 * writes whatever changed in the meantime.
 */
export class Aggregation {
  private readonly partitions = new Map<number, PartitionWindows>();
  private recordsSinceFlush = 0;
  private flushing: Promise<unknown> = Promise.resolve();
  /** Told when a flush finds a partition claimed by another instance (its state is dropped). */
  onLost: ((partition: number) => void) | undefined;
  /** Receive time of the newest record applied, per partition: for the freshness metric. */
  private readonly newestReceiveMs = new Map<number, number>();

  constructor(
    private readonly db: Database,
    private readonly pool: WorkerPool,
    private readonly deadLetters: DeadLetterProducer,
    private readonly options: AggregationOptions,
    private readonly metrics: AggregatorMetrics,
  ) {}

  /** Records applied since the last successful flush. */
  get pendingRecords(): number {
    return this.recordsSinceFlush;
  }

  /** User ids and event ids held across every partition's open windows: the memory bound. */
  get heldIds(): number {
    let ids = 0;
    for (const windows of this.partitions.values()) ids += windows.heldUsers + windows.heldEventIds;
    return ids;
  }

  /** Starts tracking a newly assigned partition from its checkpoint in PostgreSQL. */
  assign(partition: number, checkpoint: PartitionCheckpoint): void {
    this.partitions.set(
      partition,
      new PartitionWindows(
        partition,
        this.options.windowMs,
        this.options.allowedLatenessMs,
        this.options.maxAgeMs,
        checkpoint,
      ),
    );
    this.updateGauges();
  }

  /** Forgets revoked partitions (flush first: their state is not written anywhere else). */
  drop(partitions: readonly number[]): void {
    for (const partition of partitions) {
      this.partitions.delete(partition);
      this.newestReceiveMs.delete(partition);
      this.options.rollups?.periodUsers?.release(partition);
    }
    this.updateGauges();
  }

  isAssigned(partition: number): boolean {
    return this.partitions.has(partition);
  }

  /**
   * The last offset applied to `partition`'s windows, -1 before any (undefined: not assigned).
   * The consumer packs only records past it: the client can deliver records again that were
   * already applied, and applying them twice would count them twice.
   */
  appliedThrough(partition: number): number | undefined {
    return this.partitions.get(partition)?.throughOffset;
  }

  /** Applies one partition's batch (offset order, every record past `appliedThrough`). */
  async apply(partition: number, batch: PackedBatch): Promise<void> {
    const windows = this.partitions.get(partition);
    if (windows === undefined || batch.count === 0) return;
    if (batch.firstOffset <= windows.throughOffset) {
      throw new Error(
        `partition ${partition}: batch from ${batch.firstOffset} overlaps what was applied (${windows.throughOffset})`,
      );
    }
    windows.noteReplayStart(batch.firstOffset);
    const stopTimer = this.metrics.workerTaskDuration.startTimer();
    const result = await this.pool.run(
      windows.batchInput(batch.records, membershipHorizon(Date.now(), this.options.maxAgeMs)),
    );
    stopTimer();

    const letters: DeadLetter[] = [];
    if (result.rejected.length > 0) {
      const codes = new Map<number, string>();
      for (const { index, code } of result.invalid) {
        codes.set(index, code);
        this.metrics.recordsInvalid.inc({ reason: code });
      }
      for (const record of result.rejected) {
        letters.push({
          key: record.key === null ? null : bufferOf(record.key),
          value: record.value === null ? null : bufferOf(record.value),
          reason: codes.get(record.index) ?? 'late',
          partition,
          offset: record.offset,
        });
      }
    }
    this.metrics.recordsLate.inc(result.late.length);
    // The broker must have them before their offsets can be flushed as consumed.
    await this.deadLetters.send(letters);
    this.metrics.deadLettered.inc(letters.length);

    // The partition may have been revoked while the worker ran: its state is gone, drop the batch.
    if (this.partitions.get(partition) !== windows) return;
    const merged = windows.merge(result, batch.lastOffset);
    const duplicates = result.duplicates + merged.duplicates;
    this.metrics.closedWindowRecords.inc(merged.closed);
    this.newestReceiveMs.set(partition, batch.lastTimestampMs);
    this.recordsSinceFlush += batch.count;
    this.metrics.recordsConsumed.inc(batch.count);
    this.metrics.batchSize.observe(batch.count);
    this.metrics.replaySkipped.inc(result.skipped);
    this.metrics.duplicates.inc(duplicates);
  }

  /** Lets wall-clock time finalize the windows of partitions that stopped receiving records. */
  finalizeIdle(nowMs: number): void {
    for (const windows of this.partitions.values()) {
      windows.finalizeIdle(nowMs, this.options.idleAfterMs, this.options.endOffsetsFreshMs);
    }
  }

  /** The partitions' end offsets (high), read from the broker at `observedAtMs`. */
  noteEnds(highs: ReadonlyMap<number, number>, observedAtMs: number): void {
    for (const [partition, high] of highs) {
      this.partitions.get(partition)?.noteEnd(high, observedAtMs);
    }
  }

  /**
   * Held ids passed the bound: closes the oldest windows in memory, across partitions, until
   * those left hold at most half of `limit`. The next flush writes them with their membership
   * and drops them; later events for them are counted through the stored membership.
   */
  closeOldest(limit: number): void {
    const live: Array<{ windows: PartitionWindows; start: number; ids: number }> = [];
    let held = 0;
    for (const windows of this.partitions.values()) {
      for (const window of windows.liveWindows()) {
        live.push({ windows, ...window });
        held += window.ids;
      }
    }
    live.sort((a, b) => a.start - b.start);
    let closed = 0;
    for (const window of live) {
      if (held <= limit / 2) break;
      window.windows.closeThrough(window.start);
      held -= window.ids;
      closed++;
    }
    this.metrics.windowsClosedEarly.inc(closed);
  }

  /** Records left to read in `partition` after the batch just applied. */
  noteBacklog(partition: number, records: number): void {
    this.partitions.get(partition)?.noteBacklog(records);
  }

  /** After a pause: no partition counts as idle until `idleAfterMs` from now. */
  restartIdleClocks(nowMs: number): void {
    for (const windows of this.partitions.values()) windows.restartIdleClock(nowMs);
  }

  /**
   * Writes every changed window and returns the offsets now durably reflected, per partition
   * (for committing to Kafka). Throws when the write fails; the state is kept for the next try.
   * `only` restricts the flush to some partitions (revocation).
   */
  async flush(only?: readonly number[]): Promise<Map<number, number>> {
    const run = this.flushing.then(() => this.flushOnce(only));
    this.flushing = run.catch(() => undefined);
    return run;
  }

  private async flushOnce(only?: readonly number[]): Promise<Map<number, number>> {
    const flushes: Array<{ windows: PartitionWindows; flush: PartitionFlush }> = [];
    let outcome: FlushOutcome | undefined;
    const reflected = new Map<number, number>();
    for (const windows of this.partitions.values()) {
      if (only !== undefined && !only.includes(windows.partition)) continue;
      flushes.push({ windows, flush: windows.snapshot() });
      if (windows.throughOffset >= 0 && !windows.isReplaying) {
        reflected.set(windows.partition, windows.throughOffset);
      }
    }
    const pendingAtSnapshot = this.recordsSinceFlush;
    const stopTimer = this.metrics.flushDuration.startTimer();
    try {
      // One connect attempt: the caller's write-retry policy decides what happens next.
      outcome = await this.db.use(
        (client) =>
          writeFlush(
            client,
            flushes.map(({ flush }) => flush),
            this.options.rollups,
            this.options.pauseBeforeCommit,
          ),
        1,
      );
    } catch (err) {
      for (const { windows, flush } of flushes) windows.restore(flush);
      this.metrics.flushes.inc({ result: 'error' });
      throw err;
    } finally {
      stopTimer();
    }
    if (!outcome.committed) {
      // Another instance claimed some partition while this flush ran: nothing was written.
      // Forget the lost ones and write the rest again.
      const lost = outcome.lost;
      for (const { windows, flush } of flushes) windows.restore(flush);
      this.forgetLost(lost);
      return this.flushOnce(only?.filter((partition) => !lost.includes(partition)));
    }
    this.metrics.flushRows.inc(outcome.rows);
    this.metrics.fenceRefused.inc(outcome.fenced);
    this.metrics.closedWindowCounted.inc(outcome.closedCounted);
    this.metrics.rolledUp.inc(outcome.rollups.events);
    this.metrics.otherTyped.inc(outcome.rollups.otherTyped);
    // Events for closed windows whose id the stored membership held already: repeats.
    const lost = new Set(outcome.lost);
    let offered = 0;
    for (const { flush } of flushes) {
      if (lost.has(flush.partition)) continue;
      for (const pending of flush.closedWindowEvents) offered += pending.events;
    }
    this.metrics.duplicates.inc(Math.max(0, offered - outcome.closedCounted));
    this.metrics.flushes.inc({ result: 'ok' });
    this.forgetLost(outcome.lost);
    for (const { windows, flush } of flushes) {
      if (lost.has(windows.partition)) {
        reflected.delete(windows.partition);
        continue;
      }
      windows.settle(flush);
      const receivedMs = this.newestReceiveMs.get(windows.partition);
      const wrote = flush.rows.length + flush.closedWindowEvents.length > 0;
      if (receivedMs !== undefined && wrote) {
        this.metrics.freshness.observe(Math.max(0, Date.now() - receivedMs) / 1000);
      }
    }
    if (only === undefined) this.recordsSinceFlush -= pendingAtSnapshot;
    this.updateGauges();
    return reflected;
  }

  /** Drops partitions another instance claimed: what this one holds is not its to write. */
  private forgetLost(partitions: readonly number[]): void {
    const held = partitions.filter((partition) => this.partitions.has(partition));
    this.drop(held);
    for (const partition of held) this.onLost?.(partition);
  }

  private updateGauges(): void {
    let open = 0;
    let users = 0;
    let eventIds = 0;
    for (const windows of this.partitions.values()) {
      open += windows.openWindows;
      users += windows.heldUsers;
      eventIds += windows.heldEventIds;
    }
    this.metrics.openWindows.set(open);
    this.metrics.heldUsers.set(users);
    this.metrics.heldEventIds.set(eventIds);
    this.metrics.heldPeriodUsers.set(this.options.rollups?.periodUsers?.heldUsers ?? 0);
    this.metrics.assignedPartitions.set(this.partitions.size);
  }
}

/** A worker's bytes as the `Buffer` the producer takes, without copying them. */
function bufferOf(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
