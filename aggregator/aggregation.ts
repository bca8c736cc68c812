import type { ClientBase } from 'pg';
import { decodeEvent } from '../shared/event-schema.js';
import type { Logger } from '../shared/logger.js';
import { writeWindowRows } from './copy-writer.js';
import type { AggregatorMetrics } from './metrics.js';
import { PartitionWindows, type WindowRow } from './window-state.js';

/** One consumed record, as the aggregation needs it. */
export interface ConsumedRecord {
  offset: number;
  value: Buffer | null;
}

/**
 * The aggregation of every assigned partition, and its flushes to PostgreSQL.
 *
 * Flushes never overlap: a flush requested while one runs waits for it and then writes whatever
 * changed in the meantime.
 */
export class Aggregation {
  private readonly partitions = new Map<number, PartitionWindows>();
  private recordsSinceFlush = 0;
  private flushing: Promise<void> = Promise.resolve();
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private readonly db: ClientBase,
    private readonly options: { windowMs: number; allowedLatenessMs: number },
    private readonly metrics: AggregatorMetrics,
    private readonly logger: Logger,
  ) {}

  /** Records applied since the last successful flush. */
  get pendingRecords(): number {
    return this.recordsSinceFlush;
  }

  /** Applies a batch of one partition's records, in offset order. */
  apply(partition: number, records: readonly ConsumedRecord[]): void {
    const windows = this.windowsOf(partition);
    for (const record of records) {
      const outcome = this.decode(record);
      if (!outcome.ok) {
        windows.advance(record.offset);
        this.metrics.recordsInvalid.inc({ reason: outcome.code });
        this.logger.warn(
          { partition, offset: record.offset, reason: outcome.code },
          'invalid record skipped',
        );
        continue;
      }
      if (windows.apply(outcome.event, record.offset) === 'late') {
        this.metrics.recordsLate.inc();
      }
    }
    this.recordsSinceFlush += records.length;
    this.metrics.recordsConsumed.inc(records.length);
    this.metrics.batchSize.observe(records.length);
  }

  /**
   * Writes every changed window and returns the offsets now durably reflected, per partition
   * (for committing to Kafka). Throws when the write fails; the state is kept for the next try.
   */
  async flush(): Promise<Map<number, number>> {
    const run = this.flushing.then(() => this.flushOnce());
    this.flushing = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async flushOnce(): Promise<Map<number, number>> {
    const rows: WindowRow[] = [];
    const reflected = new Map<number, number>();
    for (const windows of this.partitions.values()) {
      rows.push(...windows.snapshotDirty());
      if (windows.throughOffset >= 0) reflected.set(windows.partition, windows.throughOffset);
    }
    const pendingAtSnapshot = this.recordsSinceFlush;
    const stopTimer = this.metrics.flushDuration.startTimer();
    try {
      const written = await writeWindowRows(this.db, rows);
      this.metrics.flushRows.inc(written);
      this.metrics.flushes.inc({ result: 'ok' });
    } catch (err) {
      this.metrics.flushes.inc({ result: 'error' });
      throw err;
    } finally {
      stopTimer();
    }
    for (const windows of this.partitions.values()) {
      windows.settle(rows.filter((row) => row.partition === windows.partition));
    }
    this.recordsSinceFlush -= pendingAtSnapshot;
    this.updateGauges();
    return reflected;
  }

  private windowsOf(partition: number): PartitionWindows {
    let windows = this.partitions.get(partition);
    if (windows === undefined) {
      windows = new PartitionWindows(
        partition,
        this.options.windowMs,
        this.options.allowedLatenessMs,
      );
      this.partitions.set(partition, windows);
    }
    return windows;
  }

  private decode(record: ConsumedRecord) {
    if (record.value === null) {
      return { ok: false as const, code: 'empty_record' };
    }
    let text: string;
    try {
      text = this.decoder.decode(record.value);
    } catch {
      return { ok: false as const, code: 'invalid_utf8' };
    }
    return decodeEvent(text, { nowMs: Date.now(), maxAgeMs: null, requireTimestamp: true });
  }

  private updateGauges(): void {
    let open = 0;
    let users = 0;
    for (const windows of this.partitions.values()) {
      open += windows.openWindows;
      users += windows.heldUsers;
    }
    this.metrics.openWindows.set(open);
    this.metrics.heldUsers.set(users);
  }
}
