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
 * (a metadata request of the producer's own, not its cache) whether every partition has a leader,
 * and so knows since when the broker has been well. An event handed over while the broker was
 * well that timed out anyway is the producer's fault; if no failing partition recovers for
 * PRODUCER_STALL_TIMEOUT_SEC after such a timeout, with the broker well at every look, the
 * producer is replaced. A broker that does not answer, or names no leader for some partition,
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

  /** The receive time of the newest event that timed out; -Infinity when none did. */
  get latestTimedOutAt(): number {
    return this.newestTimedOut;
  }

  acknowledged(partition: number): void {
    if (this.failing.size > 0 && this.failing.delete(partition)) this.recovered++;
  }

  timedOut(partition: number, receivedAtMs: number): void {
    this.failing.add(partition);
    this.newestTimedOut = Math.max(this.newestTimedOut, receivedAtMs);
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

export class ProducerWatchdog {
  private timer: NodeJS.Timeout | undefined;
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
    if (health.failingPartitions === 0) {
      // Every partition delivers: the broker is taken as well (no request needed).
      this.wellSince ??= startedAt;
    } else if ((await this.producer.leadersKnown()) === true) {
      this.wellSince ??= startedAt;
      // An event handed over while the broker was well, and given up all the same.
      waiting = health.latestTimedOutAt >= this.wellSince;
    } else {
      this.wellSince = undefined;
      waiting = undefined;
    }
    if (this.stopping) return;
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
}
