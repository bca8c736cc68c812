import kafkaJavascript, { type KafkaJS } from '@confluentinc/kafka-javascript';
import type { Kafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { Aggregation } from './aggregation.js';
import { ConsumerWatchdog, type Excuses, type WatchedConsumer } from './consumer-watchdog.js';
import type { Database } from './database.js';
import type { AggregatorMetrics } from './metrics.js';
import type { PartitionEnd, Position } from './partition-backlog.js';
import { claimPartition } from './partition-recovery.js';

const { ErrorCodes, PartitionAssigners } = kafkaJavascript.KafkaJS;
type Consumer = ReturnType<Kafka['consumer']>;
type TopicPartition = { topic: string; partition: number; offset?: number };

/** librdkafka's logical offset for "the beginning of the partition". */
const OFFSET_BEGINNING = -2;
/** How long a clean stop waits for the last monitoring commit. */
const COMMIT_WAIT_ON_CLOSE_MS = 3_000;
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
 * aggregation. Positions come from PostgreSQL on every assignment; revoked partitions are
 * flushed before they go. Flushes run every `flushIntervalMs`, after `batchSize` records and on
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
  /**
   * Each assigned partition's stored position (the checkpoint's `resumeFrom`): the first offset
   * PostgreSQL does not reflect. Reading starts earlier when open windows are rebuilt, so the
   * position above can be behind it.
   */
  private readonly storedPositions = new Map<number, number>();
  /** When each partition was assigned: ends read before that say nothing about its positions. */
  private readonly assignedAtMs = new Map<number, number>();
  /** Rebalance callbacks running (they read checkpoints, flush): deliveries wait meanwhile. */
  private rebalancing = 0;
  /** The replacement of a stopped consumer, while it runs. */
  private replacing: Promise<void> | undefined;
  /** Replaced consumers that did not manage to leave the group, while they keep trying. */
  private readonly leftBehind = new Set<Consumer>();
  private writesOk = true;
  private pausedFor = new Set<'database'>();
  /**
   * Partitions whose position is no longer in the topic: they wait, paused, until the partition
   * is revoked or the process restarts (an operator decides; see `noteEnds`).
   */
  private readonly stoppedPartitions = new Set<number>();
  private readonly batchesInHand = new Set<Promise<void>>();
  /**
   * The flush started by the timer or by BATCH_SIZE, while it runs in the background: another
   * trigger meanwhile is skipped, not queued.
   */
  private backgroundFlush: Promise<void> | undefined;
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
      // A position no longer in the topic (retention passed it, the topic was recreated) must
      // not be skipped silently: librdkafka's default jumps to the end. 'error' stops fetching
      // that partition; the watchdog's look finds it and says so (see noteEnds).
      'auto.offset.reset': this.options.offsetReset === 'earliest' ? 'earliest' : 'error',
      // librdkafka's prefetch, at most (default 64 MiB): 16 MiB is tens of thousands of events,
      // seconds of work at the aggregator's rate, and 48 MiB less resident memory when catching up.
      'queued.max.messages.kbytes': 16_384,
      // The client fetches ahead into a cache of JavaScript message objects sized for this much
      // consumption (default 1,500 ms: about 100,000 objects when catching up). Objects that wait
      // that long outlive the young generation and are promoted, so a catch-up fills the old
      // generation and the allocator with garbage; 200 ms of messages keeps that small.
      'js.consumer.max.cache.size.per.worker.ms': 200,
      rebalance_cb: async (err: KafkaJS.LibrdKafkaError, assignment: TopicPartition[]) => {
        // A replaced consumer is leaving: what it is given or takes is no longer ours to track
        // (the client's default applies), and what it held was flushed and forgotten.
        if (generation !== this.generation) return undefined;
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

  /** Connects the current consumer, subscribes and starts delivering batches. */
  private async runConsumer(): Promise<void> {
    const generation = this.generation;
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [this.options.topic] });
    await this.consumer.run({
      partitionsConsumedConcurrently: Math.max(1, this.options.concurrency),
      eachBatch: async ({ batch }) => {
        if (this.stopping || generation !== this.generation) return;
        this.deliveries++;
        this.noteSkipped(batch);
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

  /**
   * The broker's ends, from the watchdog's look: they tell the aggregation which partitions are
   * caught up (the clock may close their windows), and they find positions that are no longer in
   * the topic. A partition stops — paused, loudly, until an operator restarts the process (docs:
   * OPERATIONS, "AggregatorOffsetsMissing") — when
   * - its reading position is below the earliest offset (retention removed records it needs),
   *   with OFFSET_RESET=stop; with OFFSET_RESET=earliest librdkafka moves on to the earliest
   *   offset and `noteSkipped` counts the gap;
   * - its stored position lies past the end, whatever OFFSET_RESET says: the topic was recreated
   *   and its offsets belong to a new log. The reading position can be inside the new log (it is
   *   where open windows are rebuilt from), so librdkafka would read the new records as a replay
   *   of the old ones and count none of them.
   */
  noteEnds(
    ends: ReadonlyMap<number, PartitionEnd>,
    observedAtMs: number,
    positionsBefore: ReadonlyMap<number, Position>,
  ): ReadonlySet<number> {
    const highs = new Map<number, number>();
    for (const [partition, end] of ends) highs.set(partition, end.high);
    this.aggregation.noteEnds(highs, observedAtMs);
    // Positions taken before the ends were asked for: a position read later can lie past an end
    // read earlier without anything being wrong.
    for (const [partition, position] of positionsBefore) {
      const end = ends.get(partition);
      if (
        end === undefined ||
        position === 'beginning' ||
        this.stoppedPartitions.has(partition) ||
        !this.positions.has(partition)
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
      const stored = this.storedPositions.get(partition);
      const pastEnd = stored !== undefined && stored > end.high;
      const gone = position < end.low && this.options.offsetReset === 'stop';
      if (!pastEnd && !gone) continue;
      this.stoppedPartitions.add(partition);
      this.consumer.pause([{ topic: this.options.topic, partitions: [partition] }]);
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
    for (const partition of this.stoppedPartitions) {
      if (!this.positions.has(partition)) {
        this.stoppedPartitions.delete(partition);
        this.metrics.offsetsMissing.remove({ partition: String(partition) });
      }
    }
    return this.stoppedPartitions;
  }

  /**
   * A batch that starts past the partition's stored position skipped records that were never
   * counted: librdkafka moved on to the earliest offset (OFFSET_RESET=earliest) because retention
   * had removed them. Records between the reading position and the stored position were counted
   * already (they were only to rebuild open windows): losing them skips nothing.
   */
  private noteSkipped(batch: KafkaJS.Batch): void {
    const position = this.positions.get(batch.partition);
    const first = batch.messages[0];
    if (first === undefined || position === undefined || position === 'beginning') return;
    const from = Math.max(position, this.storedPositions.get(batch.partition) ?? position);
    const skipped = Number(first.offset) - from;
    // One offset can be a transaction's commit marker; more is a gap.
    if (skipped <= 1) return;
    this.metrics.offsetsSkipped.inc({ partition: String(batch.partition) }, skipped);
    this.logger.error(
      { partition: batch.partition, position: from, resumedAt: Number(first.offset), skipped },
      'records were skipped: the stored position was no longer in the topic',
    );
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
    // From here on, the old consumer's batches and rebalances are ignored.
    this.generation++;
    await Promise.allSettled(this.batchesInHand);
    await this.flush().catch(() => {});
    const held = [...this.positions.keys()];
    const leaving = old.disconnect();
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
    await this.runConsumer();
    if (this.pausedFor.size > 0) this.consumer.pause([{ topic: this.options.topic }]);
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
    if (running) this.consumer.pause([{ topic: this.options.topic }]);
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
      if (running) await this.consumer.disconnect();
    }
  }

  private pause(reason: 'database'): void {
    if (this.pausedFor.has(reason)) return;
    this.pausedFor.add(reason);
    this.logger.warn({ reason }, 'consumption paused');
    this.consumer.pause([{ topic: this.options.topic }]);
    this.metrics.consumptionPaused.set(1);
  }

  private resume(reason: 'database'): void {
    if (!this.pausedFor.delete(reason) || this.pausedFor.size > 0 || this.stopping) return;
    this.logger.info('consumption resumed');
    this.aggregation.restartIdleClocks(Date.now());
    this.consumer.resume([{ topic: this.options.topic }]);
    // Stopped partitions stay paused: they wait for an operator, not for the database.
    if (this.stoppedPartitions.size > 0) {
      this.consumer.pause([{ topic: this.options.topic, partitions: [...this.stoppedPartitions] }]);
    }
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
        this.assignedAtMs.set(tp.partition, Date.now());
        if (checkpoint.resumeFrom === null) this.storedPositions.delete(tp.partition);
        else this.storedPositions.set(tp.partition, checkpoint.resumeFrom);
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
      this.storedPositions.delete(partition);
      this.assignedAtMs.delete(partition);
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
