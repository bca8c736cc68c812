/**
 * Watches ingest's Kafka producer for the stop that chaos runs saw after a broker freeze: the
 * broker is back and leads every partition, yet the producer delivers nothing to some partitions,
 * and every request with an event for them waits ACK_TIMEOUT_SEC for a 503. librdkafka applied a
 * metadata update that said "no leader" (the controller had fenced the broker for a moment),
 * kept no leader for those partitions, and never asked again (librdkafka #5430;
 * docs/RELIABILITY.md). The other partitions kept delivering: a count of acknowledgements alone
 * does not see it.
 *
 * So it reads the delivery reports per partition (`DeliveryHealth`): a partition *fails* while
 * its latest report is a timeout. Every second, while some partition fails, it asks the broker
 * (through an admin client of its own: the producer's view is what may be wrong) whether every
 * partition has a leader, and so knows since when the broker has been well. An event handed over
 * while the broker was well that timed out anyway is the producer's fault; if no failing
 * partition recovers for PRODUCER_STALL_TIMEOUT_SEC after such a timeout, with the broker well
 * at every look, the producer is replaced. A broker that does not answer, or names no leader for some partition,
 * is not well: the wait starts over.
 */
import type { Logger } from '../shared/logger.js';
import { StallDetector } from '../shared/stall-detector.js';
import type { IngestMetrics } from './metrics.js';

/** What the delivery reports of the current native producer say, per partition. */
export class DeliveryHealth {
  private readonly failing = new Set<number>();
  private recovered = 0;
  private newestTimedOut = Number.NEGATIVE_INFINITY;

  /** Partitions whose latest delivery report is a timeout. */
  get failingPartitions(): number {
    return this.failing.size;
  }

  /** How many times a failing partition had an event acknowledged again (the progress). */
  get recoveries(): number {
    return this.recovered;
  }

  /**
   * When, at the latest, the newest event that timed out was handed over (its report's time less
   * ACK_TIMEOUT_SEC); -Infinity when none did.
   */
  get latestTimedOutAt(): number {
    return this.newestTimedOut;
  }

  acknowledged(partition: number): void {
    if (this.failing.size > 0 && this.failing.delete(partition)) this.recovered++;
  }

  timedOut(partition: number, sentByMs: number): void {
    this.failing.add(partition);
    this.newestTimedOut = Math.max(this.newestTimedOut, sentByMs);
  }

  /** A new native producer: nothing it delivered yet has failed. */
  reset(): void {
    this.failing.clear();
    this.newestTimedOut = Number.NEGATIVE_INFINITY;
  }
}

/** What the watchdog reads of the producer, and the one thing it does to it. */
export interface WatchedProducer {
  readonly health: Pick<DeliveryHealth, 'failingPartitions' | 'recoveries' | 'latestTimedOutAt'>;
  /** A replaced producer still holds events (they are acknowledged or given up by ACK_TIMEOUT_SEC). */
  readonly retiring: boolean;
  /** Whether the broker names a leader for every partition; undefined when it does not answer. */
  leadersKnown(): Promise<boolean | undefined>;
  /** Swaps the native producer for a new one; resolves once new events go to it. */
  replace(): Promise<void>;
}

/** What the watchdog logs when it replaces the producer (the chaos runs count it). */
export const PRODUCER_REPLACED_LINE =
  'events handed to the producer while the broker led every partition timed out, and no failing partition recovered; replacing the producer';

/** Failing partitions not mended this long after twice the stall timeout are reported this often. */
const REPORT_EVERY_MS = 30_000;

export class ProducerWatchdog {
  private timer: NodeJS.Timeout | undefined;
  /** Since when some partition has been failing; undefined while none is. */
  private failingSince: number | undefined;
  private reportedAt = Number.NEGATIVE_INFINITY;
  private stopping = false;
  private readonly stall: StallDetector;
  private readonly everyMs: number;
  /** Since when every look found the broker well; undefined while it is not. */
  private wellSince: number | undefined;

  constructor(
    private readonly producer: WatchedProducer,
    stallTimeoutMs: number,
    private readonly metrics: IngestMetrics,
    private readonly logger: Logger,
  ) {
    this.stall = new StallDetector(stallTimeoutMs);
    this.everyMs = Math.min(1_000, Math.ceil(stallTimeoutMs / 3));
  }

  start(): void {
    this.schedule();
  }

  /** Stops looking (a look in progress finishes). */
  close(): void {
    this.stopping = true;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.look()
        .catch((err: unknown) => this.logger.warn({ err }, 'producer watchdog failed'))
        .finally(() => {
          if (!this.stopping) this.schedule();
        });
    }, this.everyMs);
    this.timer.unref();
  }

  private async look(): Promise<void> {
    const { health } = this.producer;
    const startedAt = Date.now();
    let waiting: boolean | undefined = false;
    let leaders: boolean | undefined;
    if (health.failingPartitions === 0) {
      // Every partition delivers: the broker is taken as well (no request needed).
      this.wellSince ??= startedAt;
      this.failingSince = undefined;
    } else {
      this.failingSince ??= startedAt;
      leaders = await this.producer.leadersKnown();
      if (leaders === true) {
        this.wellSince ??= startedAt;
        // An event handed over while the broker was well, and given up all the same.
        waiting = health.latestTimedOutAt >= this.wellSince;
      } else {
        this.wellSince = undefined;
        waiting = undefined;
      }
    }
    if (this.stopping) return;
    this.report(leaders);
    const stalled = this.stall.observe({
      nowMs: Date.now(),
      progress: health.recoveries,
      // A replaced producer's events are given up by ACK_TIMEOUT_SEC: until then they wait.
      excused: this.producer.retiring,
      waiting,
    });
    if (!stalled) return;
    this.logger.error(
      {
        timeoutMs: this.stall.currentTimeoutMs,
        failingPartitions: health.failingPartitions,
        brokerWellForMs: Date.now() - (this.wellSince ?? Date.now()),
      },
      PRODUCER_REPLACED_LINE,
    );
    this.metrics.producerReplacements.inc();
    await this.producer.replace();
    this.stall.replaced(health.recoveries);
    // Only what the new producer is handed from now on can tell against it.
    this.wellSince = Date.now();
    this.logger.info('producer replaced: new events go to the new one');
  }

  /**
   * Says (every 30 s) that partitions have been failing for more than twice the stall timeout
   * without a replacement, with what the watchdog saw: evidence for a stop it does not, or
   * should not, act on (the broker not well, no event sent while it was, recoveries).
   */
  private report(leaders: boolean | undefined): void {
    const nowMs = Date.now();
    if (
      this.failingSince === undefined ||
      nowMs - this.failingSince < this.stall.currentTimeoutMs * 2 ||
      nowMs - this.reportedAt < REPORT_EVERY_MS
    ) {
      return;
    }
    this.reportedAt = nowMs;
    const { health } = this.producer;
    this.logger.warn(
      {
        failingPartitions: health.failingPartitions,
        failingForMs: nowMs - this.failingSince,
        leadersKnown: leaders ?? 'no answer',
        brokerWellForMs: this.wellSince === undefined ? null : nowMs - this.wellSince,
        newestTimedOutSentMsAgo: nowMs - health.latestTimedOutAt,
        recoveries: health.recoveries,
        retiring: this.producer.retiring,
        timeoutMs: this.stall.currentTimeoutMs,
      },
      'partitions of the producer keep failing and it was not replaced',
    );
  }
}
