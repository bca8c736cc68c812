import type { Assignment, Message } from '@confluentinc/kafka-javascript';
import type { Kafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { Aggregation } from './aggregation.js';
import type { RecordPacker } from './batch-aggregator.js';
import { ConsumerWatchdog, type Excuses, type WatchedConsumer } from './consumer-watchdog.js';
import type { Database } from './database.js';
import type { AggregatorMetrics } from './metrics.js';
import { MissingPositions } from './missing-positions.js';
import {
  ASSIGN_PARTITIONS,
  CONSUME_MAX_MESSAGES,
  connectAndSubscribe,
  consumeBatch,
  createNativeConsumer,
  leave,
  type RdConsumer,
  REVOKE_PARTITIONS,
  seekPartition,
} from './native-consumer.js';
import type { PartitionEnd, Position } from './partition-backlog.js';
import { type Feed, OFFSET_BEGINNING, PartitionFeeds } from './partition-feeds.js';
import { claimPartition } from './partition-recovery.js';

type Consumer = RdConsumer;

/**
 * Bytes of consumed records packed and waiting for their partition's turn at a worker, at most:
 * past it the loop stops calling `consume` until a batch is done (librdkafka's own prefetch is
 * bounded by `FETCH_SETTINGS`). Twice a large batch's worth per worker: enough that a worker
 * never waits for the main thread, measured in bench/RESULTS.md.
 */
const MAX_WAITING_BYTES = 8 * 1024 * 1024;
/** After a failed `consume` call (the broker gone, a partition's error), before the next. */
const CONSUME_ERROR_BACKOFF_MS = 200;
/** A batch that failed (its dead letters could not be produced) is read again after this. */
const BATCH_RETRY_DELAY_MS = 1_000;
/**
 * How long a seek may take (the binding's seek waits for librdkafka's fetcher to take it). A seek
 * not done by then is tried again.
 */
const SEEK_TIMEOUT_MS = 2_000;
/** How long stopping waits for the consume call in flight (it returns within 200 ms). */
const CONSUME_CALL_DEADLINE_MS = 5_000;
/** The seed's write policy: 3 attempts with backoff, then pause and keep trying. */
const WRITE_BACKOFF_MS = [500, 1000, 2000];
/** Reads of a partition's checkpoint before the process gives up, and the pause between them. */
const CHECKPOINT_READ_ATTEMPTS = 3;
const CHECKPOINT_RETRY_DELAY_MS = 1_000;
/** How long a replaced consumer that holds partitions may take to leave the group. */
const REPLACE_DISCONNECT_DEADLINE_MS = 15_000;
/**
 * How long a replaced consumer that holds no partitions may take to leave, in the background,
 * before it counts as left behind. Its successor does not wait for it: it has nothing to hand
 * over, and the one that needs replacing is usually the one whose coordinator never answers.
 */
const REPLACE_EMPTY_HANDED_DEADLINE_MS = 3_000;
/**
 * How many replaced consumers that hold no partitions may be left behind at once, still trying
 * to leave; one more ends the process. Each keeps a few librdkafka threads and a connection. A
 * chaos run saw one still trying 6 minutes on, through broker freezes 30 s apart, when the next
 * replacement was due: with one allowed, the aggregator exited and, with no supervisor to
 * restart it, counted nothing more.
 */
const MAX_LEFT_BEHIND = 4;

export interface ActivityConsumerOptions {
  brokers: readonly string[];
  topic: string;
  consumerGroup: string;
  /** A member silent for this long (crashed, stopped) loses its partitions to the others. */
  sessionTimeoutMs: number;
  windowSeconds: number;
  flushIntervalMs: number;
  batchSize: number;
  /** Batches of different partitions aggregated at once (one per worker). */
  concurrency: number;
  /**
   * Above this many user ids and event ids held, the oldest windows are written with their
   * membership and leave memory (consumption never pauses for memory).
   */
  maxHeldUserIds: number;
  /** A stored position no longer in the topic: stop the partition, or resume at its earliest. */
  offsetReset: 'stop' | 'earliest';
  /**
   * The consumer is replaced when it delivers nothing for this long while records wait and
   * nothing excuses it (see `ConsumerWatchdog`).
   */
  stallTimeoutMs: number;
}

/**
 * Consumes the activity topic in a consumer group (cooperative-sticky assignment) and feeds the
 * aggregation, on the client's native API (`native-consumer.ts`): a loop calls `consume(n)`,
 * copies each record's key, value, offset and timestamp into its partition's packed buffers
 * (`RecordPacker`) and nothing more, and hands each partition's packed records to a worker, one
 * batch per partition at a time and up to `concurrency` partitions at once. Records packed but
 * not yet at a worker are bounded (`MAX_WAITING_BYTES`): past it the loop waits for a batch to
 * finish. Positions come from PostgreSQL on every assignment, given with it; revoked partitions
 * are flushed before they go. Flushes run every `flushIntervalMs`, after `batchSize` records and on
 * shutdown; offsets are committed to Kafka after each flush, for lag monitoring only.
 *
 * When writes keep failing, consumption pauses with the state kept, the consumer reports
 * unhealthy (not ready) and the flush is retried every interval until it succeeds: nothing is
 * ever skipped.
 *
 * A `ConsumerWatchdog` replaces the Kafka consumer when it stops: see `replace`.
 */
export class ActivityConsumer implements WatchedConsumer {
  private consumer: Consumer;
  /**
   * Counts consumers made, and is bumped when one is replaced: batches and rebalances of a
   * replaced one are ignored.
   */
  private generation = 0;
  /** The generation of `consumer`: behind `generation` once it has been replaced. */
  private consumerGeneration = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly watchdog: ConsumerWatchdog;
  /** Batches delivered so far, and each assigned partition's next offset to deliver. */
  deliveries = 0;
  readonly positions = new Map<number, Position>();
  /** Stored positions no longer in the topic: the partitions they stop, the records skipped. */
  private readonly missing: MissingPositions;
  /** Rebalance callbacks running (they read checkpoints, flush): deliveries wait meanwhile. */
  private rebalancing = 0;
  /** The replacement of a stopped consumer, while it runs. */
  private replacing: Promise<void> | undefined;
  /** Replaced consumers that did not manage to leave the group, while they keep trying. */
  private readonly leftBehind = new Set<Consumer>();
  /** Each assigned partition's records between `consume` and a worker. */
  private readonly feeds = new PartitionFeeds();
  /** Partitions whose records were dropped: sought back before the next `consume` call. */
  private readonly seekBeforeConsuming = new Set<number>();
  /** Rebalance callbacks run one after another, in the order librdkafka gave them. */
  private rebalances: Promise<void> = Promise.resolve();
  /** The current consumer's loop, and the `consume` call it waits for. */
  private loop: Promise<void> | undefined;
  private consuming: Promise<unknown> | undefined;
  private lastConsumeErrorLogMs = 0;
  private writesOk = true;
  private pausedFor = new Set<'database'>();
  private readonly batchesInHand = new Set<Promise<void>>();
  /**
   * The flush started by the timer or by BATCH_SIZE, while it runs in the background: another
   * trigger meanwhile is skipped, not queued.
   */
  private backgroundFlush: Promise<void> | undefined;
  private stopping = false;

  constructor(
    kafka: Kafka,
    private readonly aggregation: Aggregation,
    private readonly db: Database,
    private readonly options: ActivityConsumerOptions,
    private readonly metrics: AggregatorMetrics,
    private readonly logger: Logger,
  ) {
    this.missing = new MissingPositions(options.offsetReset, metrics, logger);
    this.consumer = this.createConsumer();
    aggregation.onLost = (partition) =>
      this.logger.warn(
        { partition },
        'another instance claimed this partition: its unwritten state is dropped (the new owner replays it)',
      );
    this.watchdog = new ConsumerWatchdog(
      this,
      kafka.admin(),
      db,
      {
        topic: options.topic,
        windowSeconds: options.windowSeconds,
        stallTimeoutMs: options.stallTimeoutMs,
        sessionTimeoutMs: options.sessionTimeoutMs,
      },
      metrics,
      logger,
    );
  }

  private createConsumer(): Consumer {
    const generation = ++this.generation;
    this.consumerGeneration = generation;
    const consumer: Consumer = createNativeConsumer(
      {
        brokers: this.options.brokers,
        clientId: 'aggregator',
        groupId: this.options.consumerGroup,
        sessionTimeoutMs: this.options.sessionTimeoutMs,
        offsetReset: this.options.offsetReset,
        onRebalance: (code, assignment) => {
          // A replaced consumer is leaving: what it is given or takes is no longer ours to track
          // (the client's default applies), and what it held was flushed and forgotten.
          if (generation !== this.generation) {
            applyAssignment(consumer, code, assignment);
            return;
          }
          this.rebalancing++;
          const run = this.rebalances.then(() =>
            // Replaced while earlier rebalances ran: as above.
            generation === this.generation
              ? this.onRebalance(consumer, code, assignment)
              : applyAssignment(consumer, code, assignment),
          );
          this.rebalances = run
            .catch((err: unknown) => this.logger.error({ err }, 'rebalance callback failed'))
            .finally(() => {
              this.rebalancing--;
            });
        },
      },
      this.logger,
    );
    return consumer;
  }

  /** False while writes to PostgreSQL keep failing. */
  get healthy(): boolean {
    return this.writesOk;
  }

  async start(): Promise<void> {
    await this.runConsumer();
    await this.watchdog.start();
    this.timer = setInterval(() => {
      // A paused consumer is not reading its partitions: their silence is not idleness.
      if (this.pausedFor.size === 0) this.aggregation.finalizeIdle(Date.now());
      this.flushInBackground();
    }, this.options.flushIntervalMs);
  }

  /**
   * Starts a flush without waiting for it, unless one started this way still runs: during an
   * outage one flush (with its retries) outlasts the interval, and closing windows write their
   * membership, so triggers meanwhile would pile up flushes without bound — or, awaited, hold
   * consumption while PostgreSQL writes.
   */
  private flushInBackground(): void {
    if (this.backgroundFlush !== undefined) return;
    this.backgroundFlush = this.flush()
      .catch(() => {})
      .finally(() => {
        this.backgroundFlush = undefined;
      });
  }

  /** Connects the current consumer, subscribes and starts its consume loop. */
  private async runConsumer(): Promise<void> {
    const generation = this.generation;
    const consumer = this.consumer;
    await connectAndSubscribe(consumer, this.options.topic);
    this.loop = this.consumeLoop(consumer, generation).catch((err: unknown) =>
      this.logger.error({ err }, 'the consume loop failed'),
    );
  }

  /**
   * `consume(n)` in a loop until the consumer is stopped or replaced. Each call's rebalance
   * callbacks (librdkafka serves them inside the call) run before its records are taken, so a
   * record is packed only into the feed of the assignment it was fetched under.
   */
  private async consumeLoop(consumer: Consumer, generation: number): Promise<void> {
    const current = () => !this.stopping && generation === this.generation;
    while (current()) {
      await this.roomToConsume(current);
      if (!current()) break;
      // Before the next call: records prefetched before a seek are discarded only once
      // librdkafka has it; a call started earlier could hand them out (PartitionFeeds.take).
      await this.seekWanted();
      if (!current()) break;
      const resetBefore = this.feeds.sequence;
      let messages: Message[];
      const call = consumeBatch(consumer, CONSUME_MAX_MESSAGES);
      this.consuming = call;
      try {
        messages = await call;
      } catch (err) {
        this.noteConsumeError(err);
        await sleep(CONSUME_ERROR_BACKOFF_MS);
        continue;
      } finally {
        this.consuming = undefined;
      }
      // The rebalance events of this call reach JavaScript on their own; let them in first.
      await new Promise((resolve) => setImmediate(resolve));
      await this.rebalances;
      if (!current()) break;
      if (messages.length === 0) {
        this.dispatch();
        continue;
      }
      this.deliveries++;
      this.take(messages, resetBefore);
      this.dispatch();
    }
  }

  /** Waits while the records packed and waiting for a worker pass MAX_WAITING_BYTES. */
  private async roomToConsume(current: () => boolean): Promise<void> {
    while (this.feeds.waitingBytes >= MAX_WAITING_BYTES && current()) {
      this.dispatch();
      if (this.batchesInHand.size > 0) await Promise.race(this.batchesInHand);
      else await sleep(50);
    }
  }

  /** Packs each record into its partition's feed (`PartitionFeeds.take`). */
  private take(messages: readonly Message[], resetBefore: number): void {
    const taken = this.feeds.take(messages, resetBefore, (partition, expected, offset) =>
      this.missing.noteSkipped(partition, expected, offset),
    );
    if (taken.redelivered > 0) this.metrics.redelivered.inc(taken.redelivered);
    // Dropped (fetched before their position was set anew, or after a gap): read again from the
    // feed's end.
    for (const partition of taken.stale) this.seekBeforeConsuming.add(partition);
    for (const gap of taken.gaps) {
      this.logger.info(
        gap,
        'records after a gap dropped; reading the partition again from the gap',
      );
    }
    for (const partition of this.feeds.partitions) {
      const feed = this.feeds.get(partition);
      if (feed?.packer !== undefined) this.positions.set(partition, feed.lastPacked + 1);
    }
  }

  /**
   * Hands waiting feeds to the workers, the longest waiting first, while fewer than
   * `concurrency` batches are in hand; one batch per partition at a time.
   */
  private dispatch(): void {
    const limit = Math.max(1, this.options.concurrency);
    const nowMs = Date.now();
    while (this.batchesInHand.size < limit) {
      const next = this.feeds.next(nowMs);
      if (next === undefined) return;
      const { partition, feed, packer } = next;
      const work: Promise<void> = this.applyBatch(partition, feed, packer).finally(() => {
        this.batchesInHand.delete(work);
        feed.inHand = undefined;
        if (!this.stopping) this.dispatch();
      });
      feed.inHand = work;
      this.batchesInHand.add(work);
    }
  }

  /** One partition's batch through the aggregation; never rejects. */
  private async applyBatch(partition: number, feed: Feed, packer: RecordPacker): Promise<void> {
    const lastOffset = packer.lastOffset;
    try {
      await this.aggregation.apply(partition, {
        count: packer.length,
        firstOffset: packer.firstOffset,
        lastOffset,
        lastTimestampMs: packer.lastTimestampMs,
        records: packer.finish(),
      });
    } catch (err) {
      // Nothing of the batch was applied (its dead letters could not be produced, say): it is
      // read again, from the first record not applied.
      if (this.feeds.get(partition) === feed) {
        this.logger.warn({ err, partition }, 'a batch failed; reading it again');
        const through = this.aggregation.appliedThrough(partition) ?? -1;
        this.feeds.rewind(partition, through, Date.now() + BATCH_RETRY_DELAY_MS);
        this.seekBeforeConsuming.add(partition);
      }
      return;
    }
    try {
      const { highOffset } = this.consumer.getWatermarkOffsets(this.options.topic, partition);
      const lag = Math.max(0, highOffset - lastOffset - 1);
      this.metrics.partitionLag.set({ partition: String(partition) }, lag);
      this.aggregation.noteBacklog(partition, lag);
    } catch {
      // No end known yet for this partition: the watchdog's look refreshes the gauge.
    }
    if (this.aggregation.heldIds > this.options.maxHeldUserIds) {
      // Write the oldest windows with their membership and let them go. The flush is awaited:
      // this partition's next batch waits for the memory, and nothing stops.
      this.aggregation.closeOldest(this.options.maxHeldUserIds);
      await this.flush().catch(() => {});
    } else if (this.aggregation.pendingRecords >= this.options.batchSize) {
      // Not awaited: consumption goes on while PostgreSQL writes. Memory stays bounded by
      // MAX_HELD_USER_IDS, whose flush (above) is awaited.
      this.flushInBackground();
    }
  }

  /** Seeks every partition in `seekBeforeConsuming` to its feed's next record, and waits. */
  private async seekWanted(): Promise<void> {
    if (this.seekBeforeConsuming.size === 0) return;
    const partitions = [...this.seekBeforeConsuming];
    this.seekBeforeConsuming.clear();
    const done = await Promise.all(partitions.map((partition) => this.seek(partition)));
    // A partition not sought keeps its records dropped, and asks again: not at once.
    if (done.includes(false)) await sleep(CONSUME_ERROR_BACKOFF_MS);
  }

  /**
   * Makes librdkafka read the partition from where its feed stands (`seekOffset`), and resolves
   * once it has taken the seek: from then on it discards what it fetched before.
   */
  private async seek(partition: number): Promise<boolean> {
    const feed = this.feeds.get(partition);
    if (feed === undefined) return true;
    const offset = this.feeds.seekOffset(feed);
    if (offset >= 0) this.positions.set(partition, offset);
    try {
      await seekPartition(this.consumer, this.options.topic, partition, offset, SEEK_TIMEOUT_MS);
    } catch (err) {
      // Not done: the partition's records still come from the old position; they are dropped
      // (the feed's seek is pending), which asks for a seek again.
      this.logger.warn({ err, partition, offset }, 'seek failed; trying again');
      return false;
    }
    this.feeds.sought(partition, feed, offset);
    return true;
  }

  /** A failed `consume` call: said at most every 30 s (the loop tries again at once). */
  private noteConsumeError(err: unknown): void {
    const nowMs = Date.now();
    if (nowMs - this.lastConsumeErrorLogMs < 30_000) return;
    this.lastConsumeErrorLogMs = nowMs;
    this.logger.warn({ err }, 'consume failed; trying again');
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
    if (reflected.size > 0) this.commitForMonitoring(reflected);
  }

  /**
   * Commits the offsets the rows reflect, for lag monitoring only (positions on assignment come
   * from PostgreSQL). librdkafka's asynchronous commit: nothing waits for it, so a coordinator
   * that is gone (a broker frozen and fenced on resumption) can hold no flush and no batch.
   */
  private commitForMonitoring(reflected: Map<number, number>): void {
    const offsets = [...reflected]
      .filter(([partition]) => this.feeds.has(partition))
      .map(([partition, offset]) => ({ topic: this.options.topic, partition, offset: offset + 1 }));
    if (offsets.length === 0) return;
    try {
      this.consumer.commit(offsets);
    } catch (err) {
      this.logger.debug({ err }, 'offset commit for monitoring failed');
    }
  }

  /**
   * The broker's ends, from the watchdog's look: they tell the aggregation which partitions are
   * caught up (the clock may close their windows), and they find positions that are no longer in
   * the topic, whose partitions stop, paused, until an operator restarts the process
   * (`MissingPositions`).
   */
  noteEnds(
    ends: ReadonlyMap<number, PartitionEnd>,
    observedAtMs: number,
    positionsBefore: ReadonlyMap<number, Position>,
  ): ReadonlySet<number> {
    const highs = new Map<number, number>();
    for (const [partition, end] of ends) highs.set(partition, end.high);
    this.aggregation.noteEnds(highs, observedAtMs);
    const stopped = this.missing.check(ends, observedAtMs, positionsBefore, (partition) =>
      this.positions.has(partition),
    );
    this.pausePartitions(stopped);
    return this.missing.stopped;
  }

  /** What excuses the consumer's silence now (see `ConsumerWatchdog`). */
  excuses(): Excuses {
    return {
      stopping: this.stopping,
      paused: this.pausedFor.size > 0,
      rebalancing: this.rebalancing > 0,
      batchInHand: this.batchesInHand.size > 0,
      flushing: this.backgroundFlush !== undefined,
    };
  }

  /** Replaces the Kafka consumer (see `replaceConsumer`), one replacement at a time. */
  async replace(): Promise<void> {
    this.replacing ??= this.replaceConsumer().finally(() => {
      this.replacing = undefined;
    });
    await this.replacing;
  }

  /**
   * Replaces the Kafka consumer: the old one leaves the group and a new one joins and resumes
   * from the checkpoints in PostgreSQL. Exactly-once is kept by the checkpoints, not by the
   * consumer: what the old one held is flushed first and forgotten after, and whatever was not
   * flushed is read again from the topic.
   *
   * An old consumer that holds partitions must leave before the new one starts; if it cannot
   * in time, the process ends, for its supervisor to restart (the group would keep them waiting
   * on it). One that holds none leaves in the background while the new one starts (see
   * `watchLeaving`): waiting for it cost 3 s of every recovery from a consumer stuck outside its
   * group, which chaos runs saw take up to 27.5 s of the 30-s target.
   */
  private async replaceConsumer(): Promise<void> {
    const old = this.consumer;
    const oldLoop = this.loop;
    // From here on, the old consumer's records and rebalances are ignored.
    this.generation++;
    this.feeds.dropAllWaiting();
    await Promise.allSettled(this.batchesInHand);
    await this.flush().catch(() => {});
    const held = [...this.positions.keys()];
    await this.loopEnded(oldLoop);
    const leaving = leave(old);
    if (held.length === 0) {
      this.watchLeaving(old, leaving);
    } else {
      try {
        await withDeadline(leaving, REPLACE_DISCONNECT_DEADLINE_MS, 'leaving the group');
      } catch (err) {
        this.logger.fatal({ err, held }, 'the replaced consumer cannot leave the group; exiting');
        process.exit(1);
      }
    }
    this.forget(held);
    if (this.stopping) return;
    this.consumer = this.createConsumer();
    // Paused for the database, it stays paused: its partitions are paused as they come.
    await this.runConsumer();
    this.logger.info('consumer replaced');
  }

  /**
   * Gives a replaced consumer that holds no partitions `REPLACE_EMPTY_HANDED_DEADLINE_MS` to
   * leave the group; past that it is left behind to keep trying on its own: nothing waits on
   * it, and its rebalances are ignored. Up to `MAX_LEFT_BEHIND` are left behind at a time; one
   * more ends the process.
   */
  private watchLeaving(old: Consumer, leaving: Promise<void>): void {
    withDeadline(leaving, REPLACE_EMPTY_HANDED_DEADLINE_MS, 'leaving the group').catch(
      (err: unknown) => {
        const leftBehind = this.leftBehind.size;
        if (leftBehind >= MAX_LEFT_BEHIND && !this.stopping) {
          this.logger.fatal(
            { err, leftBehind },
            'too many replaced consumers cannot leave the group; exiting',
          );
          process.exit(1);
        }
        this.leftBehind.add(old);
        this.logger.warn(
          { err, leftBehind: leftBehind + 1 },
          'the replaced consumer has not left the group; leaving it behind',
        );
        leaving
          .catch(() => {})
          .finally(() => {
            this.leftBehind.delete(old);
            this.logger.info(
              { leftBehind: this.leftBehind.size },
              'a consumer left behind has disconnected',
            );
          });
      },
    );
  }

  /** Stops consuming, waits for the batches in hand, final flush, commit, leave the group. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    this.stopping = true;
    await this.watchdog.close();
    // A replacement under way ends with the new consumer not started (see `replaceConsumer`),
    // and the old one gone or leaving on its own: there is no consumer to pause or disconnect.
    await this.replacing?.catch(() => {});
    const running = this.consumerGeneration === this.generation;
    if (running) this.pausePartitions(this.feeds.partitions);
    await this.loopEnded(this.loop);
    await Promise.allSettled(this.batchesInHand);
    try {
      // The final flush, and with it the last monitoring commit, so that lag reads 0.
      await this.flush();
    } finally {
      if (running) await leave(this.consumer);
    }
  }

  /** Waits (bounded) for a consume loop to see that it must stop, and for its last call. */
  private async loopEnded(loop: Promise<void> | undefined): Promise<void> {
    const call = this.consuming;
    await withDeadline(
      Promise.allSettled([loop, call]),
      CONSUME_CALL_DEADLINE_MS,
      'the last consume call',
    ).catch((err: unknown) => this.logger.warn({ err }, 'the consume loop did not stop in time'));
  }

  private pause(reason: 'database'): void {
    if (this.pausedFor.has(reason)) return;
    this.pausedFor.add(reason);
    this.logger.warn({ reason }, 'consumption paused');
    this.pausePartitions(this.feeds.partitions);
    this.metrics.consumptionPaused.set(1);
  }

  private resume(reason: 'database'): void {
    if (!this.pausedFor.delete(reason) || this.pausedFor.size > 0 || this.stopping) return;
    this.logger.info('consumption resumed');
    this.aggregation.restartIdleClocks(Date.now());
    // Stopped partitions stay paused: they wait for an operator, not for the database.
    const partitions = this.feeds.partitions.filter((p) => !this.missing.stopped.has(p));
    try {
      this.consumer.resume(
        partitions.map((partition) => ({ topic: this.options.topic, partition })),
      );
    } catch (err) {
      this.logger.warn({ err }, 'resume failed');
    }
    this.metrics.consumptionPaused.set(0);
  }

  /** Stops fetching these partitions (records already packed still go to the workers). */
  private pausePartitions(partitions: readonly number[]): void {
    if (partitions.length === 0) return;
    try {
      this.consumer.pause(
        partitions.map((partition) => ({ topic: this.options.topic, partition })),
      );
    } catch (err) {
      this.logger.warn({ err, partitions }, 'pause failed');
    }
  }

  /**
   * Assignment: read each partition's checkpoint from PostgreSQL and start reading where its
   * open windows began (replay) — never from Kafka's committed offsets. Revocation: flush the
   * revoked partitions, then forget them.
   */
  private async onRebalance(
    consumer: Consumer,
    code: number,
    assignment: Assignment[],
  ): Promise<void> {
    if (code === ASSIGN_PARTITIONS) {
      this.metrics.rebalances.inc({ type: 'assign' });
      const positioned: Assignment[] = [];
      for (const tp of assignment) {
        const checkpoint = await this.loadCheckpointOrExit(tp.partition);
        this.aggregation.assign(tp.partition, checkpoint);
        positioned.push({
          topic: tp.topic,
          partition: tp.partition,
          offset: checkpoint.replayFrom ?? OFFSET_BEGINNING,
        });
        this.feeds.assign(
          tp.partition,
          this.aggregation.appliedThrough(tp.partition) ?? -1,
          checkpoint.replayFrom === null,
        );
        this.positions.set(tp.partition, checkpoint.replayFrom ?? 'beginning');
        this.missing.assigned(tp.partition, checkpoint.resumeFrom, Date.now());
        this.logger.info({ partition: tp.partition, ...checkpoint }, 'partition assigned');
      }
      applyAssignment(consumer, code, positioned);
      // Paused for the database (or stopping): new partitions wait too.
      if (this.pausedFor.size > 0 || this.stopping) {
        this.pausePartitions(positioned.map((tp) => tp.partition));
      }
      return;
    }
    if (code === REVOKE_PARTITIONS) {
      this.metrics.rebalances.inc({ type: 'revoke' });
      const partitions = assignment.map((tp) => tp.partition);
      // What waits for a worker goes unapplied (the next owner reads it again); batches of these
      // partitions still in a worker finish first, and their flush follows.
      for (const partition of partitions) this.feeds.dropWaiting(partition);
      await Promise.allSettled(this.batchesInHand);
      await this.flush(partitions).catch((flushErr: unknown) =>
        // Not lost: the next owner rebuilds from PostgreSQL and the topic.
        this.logger.warn({ err: flushErr, partitions }, 'flush on revoke failed'),
      );
      this.forget(partitions);
      applyAssignment(consumer, code, assignment);
      this.logger.info({ partitions }, 'partitions revoked');
      return;
    }
    this.logger.warn({ code }, 'rebalance error');
  }

  /** Drops the state, position and lag series of partitions this consumer no longer owns. */
  private forget(partitions: readonly number[]): void {
    this.aggregation.drop(partitions);
    for (const partition of partitions) {
      this.feeds.delete(partition);
      this.seekBeforeConsuming.delete(partition);
      this.positions.delete(partition);
      this.missing.forget(partition);
      this.metrics.partitionLag.remove({ partition: String(partition) });
    }
  }

  /**
   * Claims the partition (its next ownership epoch) and reads its checkpoint. A partition without
   * its checkpoint cannot be consumed exactly. A read cut mid-query (the
   * server crashed or restarted) is tried again, after the connection's own connect retries;
   * after the last attempt, give up the process (a supervisor restarts it) rather than guess a
   * position.
   */
  private async loadCheckpointOrExit(partition: number) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.db.use((client) =>
          claimPartition(client, partition, this.options.windowSeconds),
        );
      } catch (err) {
        if (attempt >= CHECKPOINT_READ_ATTEMPTS) {
          this.logger.fatal({ err, partition }, 'cannot read the partition checkpoint; exiting');
          process.exit(1);
        }
        this.metrics.databaseRetries.inc({ operation: 'checkpoint' });
        this.logger.warn({ err, partition, attempt }, 'checkpoint read failed; retrying');
        await sleep(CHECKPOINT_RETRY_DELAY_MS);
      }
    }
  }
}

/**
 * Gives librdkafka the assignment change of a rebalance event: incremental under the
 * cooperative protocol, the whole assignment under the eager one. A consumer that is no longer
 * connected (leaving) has nothing to change.
 */
function applyAssignment(consumer: Consumer, code: number, assignment: Assignment[]): void {
  try {
    const cooperative = consumer.rebalanceProtocol() === 'COOPERATIVE';
    if (code === ASSIGN_PARTITIONS) {
      if (cooperative) consumer.incrementalAssign(assignment);
      else consumer.assign(assignment);
    } else if (code === REVOKE_PARTITIONS) {
      if (cooperative) consumer.incrementalUnassign(assignment);
      else consumer.unassign();
    }
  } catch {
    // Not connected any more: the group has moved on without this consumer.
  }
}
