/**
 * Watches the aggregator's Kafka consumer for the stops that chaos runs saw after broker freezes,
 * where nothing in the process fails and so nothing restarts it, and asks for a new consumer:
 *
 * - **stalled**: the consumer holds partitions, records wait past its positions, and it delivers
 *   nothing (the client stopped fetching);
 * - **unread**: the consumer holds no partitions, while some partition has records waiting past
 *   what PostgreSQL holds and what PostgreSQL holds does not move: no member of the group reads
 *   it. A run saw this after a freeze: the group's session timed out, the client gave its
 *   partitions up, and its connection to the group coordinator never sent the request to rejoin
 *   (docs/RELIABILITY.md).
 *
 * Every few seconds it reads the partitions' end offsets from the broker (an admin client of its
 * own), which also refreshes the lag gauge: batches alone leave it frozen while nothing comes.
 */
import kafkaJavascript from '@confluentinc/kafka-javascript';
import type { Kafka } from '../shared/kafka-client.js';
import { withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { StallDetector } from '../shared/stall-detector.js';
import { loadStoredPositions } from '../shared/stored-positions.js';
import type { Database } from './database.js';
import type { AggregatorMetrics } from './metrics.js';
import {
  backlog,
  type PartitionEnd,
  type Position,
  QuietClock,
  recordsWaiting,
} from './partition-backlog.js';

const { IsolationLevel } = kafkaJavascript.KafkaJS;
type Admin = ReturnType<Kafka['admin']>;

/** The end-offset query: the client's own timeout, and ours around it. */
const END_OFFSETS_TIMEOUT_MS = 5_000;
const END_OFFSETS_DEADLINE_MS = 10_000;
/** A consumer quiet for twice the stall timeout, yet not replaced, is reported this often. */
const QUIET_REPORT_EVERY_MS = 30_000;

/** How often the watchdog looks: a third of the stall timeout, at most every 5 s. */
export function lookIntervalMs(stallTimeoutMs: number): number {
  return Math.min(5_000, Math.ceil(stallTimeoutMs / 3));
}

/** Why a consumer was replaced (the `reason` label of `aggregator_consumer_replacements_total`). */
export const REPLACEMENT_REASONS = ['stalled', 'unread'] as const;
export type ReplacementReason = (typeof REPLACEMENT_REASONS)[number];

/** What excuses a consumer's silence now (see `StallObservation.excused`). */
export interface Excuses {
  stopping: boolean;
  paused: boolean;
  rebalancing: boolean;
  batchInHand: boolean;
  flushing: boolean;
}

/** What the watchdog reads of the consumer, and the one thing it does to it. */
export interface WatchedConsumer {
  /** Each assigned partition's next offset to deliver; empty when it holds none. */
  readonly positions: ReadonlyMap<number, Position>;
  /** Batches delivered so far. */
  readonly deliveries: number;
  excuses(): Excuses;
  /** Swaps the Kafka consumer for a new one; resolves once the new one runs. */
  replace(): Promise<void>;
  /**
   * The partitions' ends, as read at `observedAtMs` (before the query): for idleness, and to find
   * positions that are no longer in the topic. Returns the partitions stopped for that reason:
   * they wait for an operator, not for a new consumer.
   */
  noteEnds(
    ends: ReadonlyMap<number, PartitionEnd>,
    observedAtMs: number,
    positionsBefore: ReadonlyMap<number, Position>,
  ): ReadonlySet<number>;
}

export interface ConsumerWatchdogOptions {
  topic: string;
  windowSeconds: number;
  /** The stall timeout (`CONSUMER_STALL_TIMEOUT_SEC`). */
  stallTimeoutMs: number;
  sessionTimeoutMs: number;
}

export class ConsumerWatchdog {
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  /** Partitions held, records waiting, nothing delivered. */
  private readonly stall: StallDetector;
  /** No partitions held, records waiting elsewhere, nothing stored. */
  private readonly unread: StallDetector;
  private readonly quiet: QuietClock;
  /** The sum of the stored positions at the last look that read them (the `unread` progress). */
  private storedProgress = 0;

  constructor(
    private readonly consumer: WatchedConsumer,
    private readonly admin: Admin,
    private readonly db: Database,
    private readonly options: ConsumerWatchdogOptions,
    private readonly metrics: AggregatorMetrics,
    private readonly logger: Logger,
  ) {
    this.stall = new StallDetector(options.stallTimeoutMs);
    // A partition goes unread for a while on any rebalance: its old owner is dead until the
    // session times out, or stalled until its own watchdog acts. Only past both is it orphaned.
    this.unread = new StallDetector(options.sessionTimeoutMs + options.stallTimeoutMs);
    this.quiet = new QuietClock(options.stallTimeoutMs * 2, QUIET_REPORT_EVERY_MS);
  }

  async start(): Promise<void> {
    await this.admin.connect();
    this.schedule();
  }

  /** Stops looking (a look in progress finishes; a replacement it started is the consumer's). */
  async close(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await this.admin.disconnect().catch(() => {});
  }

  /** A look every third of the stall timeout (at most every 5 s), one look at a time. */
  private schedule(): void {
    const everyMs = lookIntervalMs(this.options.stallTimeoutMs);
    this.timer = setTimeout(() => {
      this.look()
        .catch((err: unknown) => this.logger.warn({ err }, 'stall watchdog failed'))
        .finally(() => {
          if (!this.stopping) this.schedule();
        });
    }, everyMs);
  }

  private async look(): Promise<void> {
    const positions = new Map(this.consumer.positions);
    const askedAtMs = Date.now();
    const ends = await this.endOffsets();
    if (ends !== undefined) {
      this.refreshLag(positions, ends);
      for (const partition of this.consumer.noteEnds(ends, askedAtMs, positions)) {
        positions.delete(partition);
      }
    }
    const excuses = this.consumer.excuses();
    const excused = Object.values(excuses).some(Boolean);
    const waiting = ends === undefined ? undefined : recordsWaiting(positions, ends);
    this.reportQuiet(positions, ends, waiting, excuses);
    const nowMs = Date.now();
    if (
      this.stall.observe({
        nowMs,
        progress: this.consumer.deliveries,
        excused,
        waiting,
      })
    ) {
      this.logger.error(
        { timeoutMs: this.stall.currentTimeoutMs, partitions: [...positions.keys()] },
        'the consumer delivered nothing while records waited; replacing it',
      );
      await this.replace('stalled');
      return;
    }
    const unread = positions.size === 0 && ends !== undefined ? await this.unreadLook(ends) : {};
    const held = this.consumer.positions.size > 0;
    if (
      this.unread.observe({
        nowMs,
        progress: this.storedProgress,
        excused: held || excuses.stopping || excuses.rebalancing,
        waiting: held ? false : unread.waiting,
      })
    ) {
      this.logger.error(
        { timeoutMs: this.unread.currentTimeoutMs, unread: unread.partitions },
        'the consumer holds no partitions while records wait unread in partitions whose stored offsets do not move; replacing it',
      );
      await this.replace('unread');
    }
  }

  private async replace(reason: ReplacementReason): Promise<void> {
    this.metrics.consumerReplacements.inc({ reason });
    await this.consumer.replace();
    if (reason === 'stalled') this.stall.replaced(this.consumer.deliveries);
    else this.unread.replaced(this.storedProgress);
  }

  /** The partitions' end offsets, or undefined when the broker does not answer in time. */
  private async endOffsets(): Promise<Map<number, PartitionEnd> | undefined> {
    try {
      const offsets = await withDeadline(
        this.admin.fetchTopicOffsets(this.options.topic, {
          timeout: END_OFFSETS_TIMEOUT_MS,
          isolationLevel: IsolationLevel.READ_UNCOMMITTED,
        }),
        END_OFFSETS_DEADLINE_MS,
        'the end offsets',
      );
      return new Map(
        offsets.map((o) => [o.partition, { high: Number(o.high), low: Number(o.low) }]),
      );
    } catch (err) {
      this.logger.debug({ err }, 'end offsets unavailable');
      return undefined;
    }
  }

  private refreshLag(
    positions: ReadonlyMap<number, Position>,
    ends: ReadonlyMap<number, PartitionEnd>,
  ): void {
    for (const [partition, position] of positions) {
      const end = ends.get(partition);
      // A partition revoked since the look began has no lag series any more.
      if (end === undefined || !this.consumer.positions.has(partition)) continue;
      this.metrics.partitionLag.set(
        { partition: String(partition) },
        Math.max(0, backlog(position, end)),
      );
    }
  }

  /**
   * Where PostgreSQL stands on each partition, against the ends: whether records wait past it,
   * and which partitions they wait in. Unknown (undefined) when the database does not answer.
   * Moves `storedProgress` whenever any partition's stored offset moves.
   */
  private async unreadLook(ends: ReadonlyMap<number, PartitionEnd>): Promise<{
    waiting?: boolean;
    partitions?: Record<number, { stored: Position; end: number }>;
  }> {
    let stored: Map<number, Position>;
    try {
      stored = await this.db.use(
        (client) => loadStoredPositions(client, [...ends.keys()], this.options.windowSeconds),
        1,
      );
    } catch (err) {
      this.logger.debug({ err }, 'stored positions unavailable');
      return {};
    }
    let progress = 0;
    const partitions: Record<number, { stored: Position; end: number }> = {};
    for (const [partition, position] of stored) {
      if (position !== 'beginning') progress += position;
      const end = ends.get(partition);
      if (end !== undefined && backlog(position, end) > 1) {
        partitions[partition] = { stored: position, end: end.high };
      }
    }
    this.storedProgress = progress;
    return { waiting: Object.keys(partitions).length > 0, partitions };
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
    excuses: Excuses,
  ): void {
    const quietMs = this.quiet.observe(
      Date.now(),
      this.consumer.deliveries,
      positions.size > 0,
      waiting,
    );
    if (quietMs === undefined) return;
    this.logger.warn(
      {
        quietMs,
        recordsWaiting: waiting ?? 'unknown (the end offsets did not come)',
        excuses: Object.entries(excuses)
          .filter(([, holds]) => holds)
          .map(([name]) => name),
        positions: Object.fromEntries(positions),
        ends: ends === undefined ? undefined : Object.fromEntries(ends),
      },
      'the consumer has delivered nothing for a while',
    );
  }
}
