import kafkaJavascript, { type KafkaJS } from '@confluentinc/kafka-javascript';
import type { Kafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { Aggregation } from './aggregation.js';
import type { Database } from './database.js';
import type { AggregatorMetrics } from './metrics.js';
import { loadCheckpoint } from './partition-recovery.js';
import {
  backlog,
  type PartitionEnd,
  type Position,
  QuietClock,
  recordsWaiting,
  StallDetector,
} from './stall-detector.js';

const { ErrorCodes, IsolationLevel, PartitionAssigners } = kafkaJavascript.KafkaJS;
type Consumer = ReturnType<Kafka['consumer']>;
type Admin = ReturnType<Kafka['admin']>;
type TopicPartition = { topic: string; partition: number; offset?: number };

/** librdkafka's logical offset for "the beginning of the partition". */
const OFFSET_BEGINNING = -2;
/** How long a clean stop waits for the last monitoring commit. */
const COMMIT_WAIT_ON_CLOSE_MS = 3_000;
/** The seed's write policy: 3 attempts with backoff, then pause and keep trying. */
const WRITE_BACKOFF_MS = [500, 1000, 2000];
/** How long a stalled consumer may take to leave the group before the process gives up. */
const REPLACE_DISCONNECT_DEADLINE_MS = 15_000;
/** The watchdog's end-offset query: the client's own timeout, and ours around it. */
const END_OFFSETS_TIMEOUT_MS = 5_000;
const END_OFFSETS_DEADLINE_MS = 10_000;
/** A consumer quiet for twice the stall timeout, yet not replaced, is reported this often. */
const QUIET_REPORT_EVERY_MS = 30_000;

export interface ActivityConsumerOptions {
  topic: string;
  consumerGroup: string;
  /** A member silent for this long (crashed, stopped) loses its partitions to the others. */
  sessionTimeoutMs: number;
  windowSeconds: number;
  flushIntervalMs: number;
  batchSize: number;
  /** Batches of different partitions aggregated at once (one per worker). */
  concurrency: number;
  /** Consumption pauses while open windows hold more user ids and event ids than this. */
  maxHeldUserIds: number;
  /**
   * The consumer is replaced when it delivers nothing for this long while records wait and
   * nothing excuses it (see `StallDetector`).
   */
  stallTimeoutMs: number;
}

/**
 * Consumes the activity topic in a consumer group (cooperative-sticky assignment) and feeds the
 * aggregation. Positions come from PostgreSQL on every assignment; revoked partitions are
 * flushed before they go. Flushes run every `flushIntervalMs`, after `batchSize` records and on
 * shutdown; offsets are committed to Kafka after each flush, for lag monitoring only.
 *
 * When writes keep failing, consumption pauses with the state kept, the consumer reports
 * unhealthy (not ready) and the flush is retried every interval until it succeeds: nothing is
 * ever skipped.
 */
export class ActivityConsumer {
  private consumer: Consumer;
  /** Reads the partitions' end offsets for the stall watchdog and the lag gauge. */
  private readonly admin: Admin;
  /** Counts consumers made: batches of a replaced one are ignored. */
  private generation = 0;
  private timer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private readonly stall: StallDetector;
  /** Batches delivered so far, and each assigned partition's next offset to deliver. */
  private deliveries = 0;
  private readonly positions = new Map<number, Position>();
  /** Rebalance callbacks running (they read checkpoints, flush): deliveries wait meanwhile. */
  private rebalancing = 0;
  /** The replacement of a stalled consumer, while it runs. */
  private replacing: Promise<void> | undefined;
  private readonly quiet: QuietClock;
  private writesOk = true;
  private pausedFor = new Set<'database' | 'memory'>();
  private readonly batchesInHand = new Set<Promise<void>>();
  /** The timer's flush while it runs: a tick during a slow flush is skipped, not queued. */
  private timedFlush: Promise<void> | undefined;
  private stopping = false;
  /** The monitoring commit in flight, if any (see `commitForMonitoring`). */
  private commit: Promise<void> | undefined;

  constructor(
    private readonly kafka: Kafka,
    private readonly aggregation: Aggregation,
    private readonly db: Database,
    private readonly options: ActivityConsumerOptions,
    private readonly metrics: AggregatorMetrics,
    private readonly logger: Logger,
  ) {
    this.consumer = this.createConsumer();
    this.admin = kafka.admin();
    this.stall = new StallDetector(options.stallTimeoutMs);
    this.quiet = new QuietClock(options.stallTimeoutMs * 2, QUIET_REPORT_EVERY_MS);
  }

  private createConsumer(): Consumer {
    return this.kafka.consumer({
      kafkaJS: {
        groupId: this.options.consumerGroup,
        autoCommit: false,
        partitionAssigners: [PartitionAssigners.cooperativeSticky],
        sessionTimeout: this.options.sessionTimeoutMs,
        // Several heartbeats per session, as the broker expects (librdkafka's default is 3 s).
        heartbeatInterval: Math.min(3000, Math.floor(this.options.sessionTimeoutMs / 3)),
      },
      // The default of 32 is too small to be worth a worker round trip.
      'js.consumer.max.batch.size': 2000,
      // librdkafka's prefetch, at most (default 64 MiB): 16 MiB is tens of thousands of events,
      // seconds of work at the aggregator's rate, and 48 MiB less resident memory when catching up.
      'queued.max.messages.kbytes': 16_384,
      // The client fetches ahead into a cache of JavaScript message objects sized for this much
      // consumption (default 1,500 ms: about 100,000 objects when catching up). Objects that wait
      // that long outlive the young generation and are promoted, so a catch-up fills the old
      // generation and the allocator with garbage; 200 ms of messages keeps that small.
      'js.consumer.max.cache.size.per.worker.ms': 200,
      rebalance_cb: async (err: KafkaJS.LibrdKafkaError, assignment: TopicPartition[]) => {
        this.rebalancing++;
        try {
          return await this.onRebalance(err, assignment);
        } finally {
          this.rebalancing--;
        }
      },
    });
  }

  /** False while writes to PostgreSQL keep failing. */
  get healthy(): boolean {
    return this.writesOk;
  }

  async start(): Promise<void> {
    await this.admin.connect();
    await this.runConsumer();
    this.scheduleWatchdog();
    this.timer = setInterval(() => {
      // A paused consumer is not reading its partitions: their silence is not idleness.
      if (this.pausedFor.size === 0) this.aggregation.finalizeIdle(Date.now());
      // During an outage one flush (with its retries) takes longer than the interval: ticks
      // meanwhile would pile up flushes without bound.
      if (this.timedFlush !== undefined) return;
      this.timedFlush = this.flush()
        .catch(() => {})
        .finally(() => {
          this.timedFlush = undefined;
        });
    }, this.options.flushIntervalMs);
  }

  /** Connects the current consumer, subscribes and starts delivering batches. */
  private async runConsumer(): Promise<void> {
    const generation = ++this.generation;
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [this.options.topic] });
    await this.consumer.run({
      partitionsConsumedConcurrently: Math.max(1, this.options.concurrency),
      eachBatch: async ({ batch }) => {
        if (this.stopping || generation !== this.generation) return;
        this.deliveries++;
        const last = batch.messages.at(-1);
        if (last !== undefined) this.positions.set(batch.partition, Number(last.offset) + 1);
        const work = this.applyBatch(batch);
        this.batchesInHand.add(work);
        try {
          await work;
        } finally {
          this.batchesInHand.delete(work);
        }
      },
    });
  }

  private async applyBatch(batch: KafkaJS.Batch): Promise<void> {
    await this.aggregation.apply(
      batch.partition,
      batch.messages.map((message) => ({
        offset: Number(message.offset),
        key: message.key,
        value: message.value,
        timestampMs: Number(message.timestamp),
      })),
    );
    const last = batch.messages.at(-1);
    if (last !== undefined) {
      const lag = Math.max(0, Number(batch.highWatermark) - Number(last.offset) - 1);
      this.metrics.partitionLag.set({ partition: String(batch.partition) }, lag);
      this.aggregation.noteBacklog(batch.partition, lag);
    }
    if (this.aggregation.heldIds > this.options.maxHeldUserIds) this.pause('memory');
    if (this.aggregation.pendingRecords >= this.options.batchSize) {
      await this.flush().catch(() => {});
    }
  }

  /**
   * Flushes with the write-retry policy and commits the offsets the rows reflect. On lasting
   * failure: pause, keep the state, report unhealthy; the flush timer keeps retrying.
   */
  async flush(only?: readonly number[]): Promise<void> {
    let reflected: Map<number, number> | undefined;
    let lastError: unknown;
    for (let attempt = 0; attempt <= WRITE_BACKOFF_MS.length; attempt++) {
      try {
        reflected = await this.aggregation.flush(only);
        break;
      } catch (err) {
        lastError = err;
        if (attempt === WRITE_BACKOFF_MS.length) break;
        this.metrics.databaseRetries.inc({ operation: 'flush' });
        await sleep(WRITE_BACKOFF_MS[attempt] as number);
      }
    }
    if (reflected === undefined) {
      if (this.writesOk) {
        this.logger.error({ err: lastError }, 'flushes keep failing; pausing consumption');
      }
      this.writesOk = false;
      this.pause('database');
      throw lastError;
    }
    if (!this.writesOk) this.logger.info('flush succeeded again; resuming consumption');
    this.writesOk = true;
    this.resume('database');
    if (this.aggregation.heldIds <= this.options.maxHeldUserIds * 0.9) this.resume('memory');
    if (reflected.size > 0) this.commitForMonitoring(reflected);
  }

  /**
   * Commits the offsets the rows reflect, for lag monitoring only (positions on assignment come
   * from PostgreSQL). Never awaited: the client's commit is synchronous librdkafka on a libuv
   * thread, and with the coordinator gone (a broker frozen and fenced on resumption) it can wait
   * for minutes. Awaited, it held the flush, the batch that triggered the flush, and with it all
   * consumption — a chaos run saw the aggregator stop for good after a broker stall. At most one
   * commit is in flight; a newer one waits for the next flush.
   */
  private commitForMonitoring(reflected: Map<number, number>): void {
    if (this.commit !== undefined) return;
    this.commit = this.consumer
      .commitOffsets(
        [...reflected].map(([partition, offset]) => ({
          topic: this.options.topic,
          partition,
          offset: String(offset + 1),
        })),
      )
      .catch((err: unknown) => this.logger.debug({ err }, 'offset commit for monitoring failed'))
      .finally(() => {
        this.commit = undefined;
      });
  }

  /** Looks for a stall every third of the timeout (at most every 5 s), one look at a time. */
  private scheduleWatchdog(): void {
    const everyMs = Math.min(5_000, Math.ceil(this.options.stallTimeoutMs / 3));
    this.watchdog = setTimeout(() => {
      this.watch()
        .catch((err: unknown) => this.logger.warn({ err }, 'stall watchdog failed'))
        .finally(() => {
          if (!this.stopping) this.scheduleWatchdog();
        });
    }, everyMs);
  }

  /**
   * One look: the partitions' end offsets from the broker refresh the lag gauge (which batches
   * alone leave frozen when nothing is delivered) and tell the stall detector whether records
   * wait. A consumer stalled past the timeout is replaced.
   */
  private async watch(): Promise<void> {
    const positions = new Map(this.positions);
    let ends: Map<number, PartitionEnd> | undefined;
    if (positions.size > 0) {
      try {
        const offsets = await withDeadline(
          this.admin.fetchTopicOffsets(this.options.topic, {
            timeout: END_OFFSETS_TIMEOUT_MS,
            isolationLevel: IsolationLevel.READ_UNCOMMITTED,
          }),
          END_OFFSETS_DEADLINE_MS,
          'the end offsets',
        );
        ends = new Map(
          offsets.map((o) => [o.partition, { high: Number(o.high), low: Number(o.low) }]),
        );
      } catch (err) {
        this.logger.debug({ err }, 'end offsets unavailable');
      }
    }
    if (ends !== undefined) {
      for (const [partition, position] of positions) {
        const end = ends.get(partition);
        if (end === undefined || !this.positions.has(partition)) continue;
        this.metrics.partitionLag.set(
          { partition: String(partition) },
          Math.max(0, backlog(position, end)),
        );
      }
    }
    const excuses = {
      stopping: this.stopping,
      paused: this.pausedFor.size > 0,
      rebalancing: this.rebalancing > 0,
      batchInHand: this.batchesInHand.size > 0,
      flushing: this.timedFlush !== undefined,
    };
    const waiting = ends === undefined ? undefined : recordsWaiting(positions, ends);
    this.reportQuiet(positions, ends, waiting, excuses);
    const stalled = this.stall.observe({
      nowMs: Date.now(),
      deliveries: this.deliveries,
      excused: Object.values(excuses).some(Boolean),
      recordsWaiting: waiting,
    });
    if (stalled) {
      this.replacing = this.replaceConsumer();
      await this.replacing.finally(() => {
        this.replacing = undefined;
      });
    }
  }

  /**
   * Says (every 30 s) that the consumer has delivered nothing for longer than the stall timeout
   * without being replaced, with what the watchdog saw: whether records wait, which excuse held,
   * the positions and the ends. A quiet consumer with nothing to read says nothing. This is the
   * evidence for a stop the watchdog does not, or should not, act on.
   */
  private reportQuiet(
    positions: ReadonlyMap<number, Position>,
    ends: ReadonlyMap<number, PartitionEnd> | undefined,
    waiting: boolean | undefined,
    excuses: Record<string, boolean>,
  ): void {
    const quietMs = this.quiet.observe(Date.now(), this.deliveries, positions.size > 0, waiting);
    if (quietMs === undefined) return;
    this.logger.warn(
      {
        quietMs,
        recordsWaiting: waiting ?? 'unknown (the end offsets did not come)',
        excuses: Object.keys(excuses).filter((name) => excuses[name]),
        positions: Object.fromEntries(positions),
        ends: ends === undefined ? undefined : Object.fromEntries(ends),
      },
      'the consumer has delivered nothing for a while',
    );
  }

  /**
   * Replaces a consumer that stopped delivering: the stalled one leaves the group (its
   * partitions are flushed on revocation, as on any rebalance) and a new one joins and resumes
   * from the checkpoints in PostgreSQL. Exactly-once is kept by the checkpoints, not by the
   * consumer. A stalled consumer that cannot even leave the group ends the process, for its
   * supervisor to restart: nothing is lost either way, what was not flushed is read again from
   * the topic.
   */
  private async replaceConsumer(): Promise<void> {
    const stalled = this.consumer;
    this.logger.error(
      { timeoutMs: this.stall.currentTimeoutMs, partitions: [...this.positions.keys()] },
      'the consumer delivered nothing while records waited; replacing it',
    );
    this.metrics.consumerReplacements.inc();
    this.generation++;
    await Promise.allSettled(this.batchesInHand);
    // Written while the partitions are still ours; the revocation that leaving causes has
    // nothing left to write then.
    await this.flush().catch(() => {});
    try {
      await withDeadline(stalled.disconnect(), REPLACE_DISCONNECT_DEADLINE_MS, 'leaving the group');
    } catch (err) {
      this.logger.fatal({ err }, 'the stalled consumer cannot leave the group; exiting');
      process.exit(1);
    }
    // Revocation dropped what it flushed; anything left belongs to no consumer now.
    this.forget([...this.positions.keys()]);
    this.stall.replaced(this.deliveries);
    if (this.stopping) return;
    this.consumer = this.createConsumer();
    await this.runConsumer();
    if (this.pausedFor.size > 0) this.consumer.pause([{ topic: this.options.topic }]);
    this.logger.info('consumer replaced');
  }

  /** Stops consuming, waits for the batches in hand, final flush, commit, leave the group. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    clearTimeout(this.watchdog);
    this.stopping = true;
    // A replacement under way ends with the new consumer not started (see `replaceConsumer`).
    await this.replacing?.catch(() => {});
    this.consumer.pause([{ topic: this.options.topic }]);
    await Promise.allSettled(this.batchesInHand);
    try {
      await this.flush();
      // The last monitoring commit, so that lag reads 0 after a clean stop; bounded, as above.
      if (this.commit !== undefined) {
        await withDeadline(this.commit, COMMIT_WAIT_ON_CLOSE_MS, 'the last offset commit').catch(
          () => {},
        );
      }
    } finally {
      try {
        await this.consumer.disconnect();
      } finally {
        await this.admin.disconnect().catch(() => {});
      }
    }
  }

  private pause(reason: 'database' | 'memory'): void {
    if (this.pausedFor.has(reason)) return;
    this.pausedFor.add(reason);
    this.logger.warn({ reason }, 'consumption paused');
    this.consumer.pause([{ topic: this.options.topic }]);
    this.metrics.consumptionPaused.set(1);
  }

  private resume(reason: 'database' | 'memory'): void {
    if (!this.pausedFor.delete(reason) || this.pausedFor.size > 0 || this.stopping) return;
    this.logger.info('consumption resumed');
    this.aggregation.restartIdleClocks(Date.now());
    this.consumer.resume([{ topic: this.options.topic }]);
    this.metrics.consumptionPaused.set(0);
  }

  /**
   * Assignment: read each partition's checkpoint from PostgreSQL and start reading where its
   * open windows began (replay) — never from Kafka's committed offsets. Revocation: flush the
   * revoked partitions, then forget them.
   */
  private async onRebalance(
    err: KafkaJS.LibrdKafkaError,
    assignment: TopicPartition[],
  ): Promise<TopicPartition[] | undefined> {
    if (err.code === ErrorCodes.ERR__ASSIGN_PARTITIONS) {
      this.metrics.rebalances.inc({ type: 'assign' });
      const positioned: TopicPartition[] = [];
      for (const tp of assignment) {
        const checkpoint = await this.loadCheckpointOrExit(tp.partition);
        this.aggregation.assign(tp.partition, checkpoint);
        positioned.push({ ...tp, offset: checkpoint.replayFrom ?? OFFSET_BEGINNING });
        this.positions.set(tp.partition, checkpoint.replayFrom ?? 'beginning');
        this.logger.info({ partition: tp.partition, ...checkpoint }, 'partition assigned');
      }
      return positioned;
    }
    if (err.code === ErrorCodes.ERR__REVOKE_PARTITIONS) {
      this.metrics.rebalances.inc({ type: 'revoke' });
      const partitions = assignment.map((tp) => tp.partition);
      // Batches of these partitions still in a worker finish first; their flush follows.
      await Promise.allSettled(this.batchesInHand);
      await this.flush(partitions).catch((flushErr: unknown) =>
        // Not lost: the next owner rebuilds from PostgreSQL and the topic.
        this.logger.warn({ err: flushErr, partitions }, 'flush on revoke failed'),
      );
      this.forget(partitions);
      this.logger.info({ partitions }, 'partitions revoked');
    }
    return undefined;
  }

  /** Drops the state, position and lag series of partitions this consumer no longer owns. */
  private forget(partitions: readonly number[]): void {
    this.aggregation.drop(partitions);
    for (const partition of partitions) {
      this.positions.delete(partition);
      this.metrics.partitionLag.remove({ partition: String(partition) });
    }
  }

  /**
   * A partition without its checkpoint cannot be consumed exactly: after the database's own
   * retries, give up the process (a supervisor restarts it) rather than guess a position.
   */
  private async loadCheckpointOrExit(partition: number) {
    try {
      return await this.db.use((client) =>
        loadCheckpoint(client, partition, this.options.windowSeconds),
      );
    } catch (err) {
      this.logger.fatal({ err, partition }, 'cannot read the partition checkpoint; exiting');
      process.exit(1);
    }
  }
}
