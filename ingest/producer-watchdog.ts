/**
 * Watches ingest's Kafka producer for the stop that chaos runs saw after a broker freeze: the
 * broker is back and leads every partition, yet the producer acknowledges nothing, and every
 * request waits ACK_TIMEOUT_SEC for a 503. librdkafka applied a metadata update that said
 * "no leader" (the controller had fenced the broker for a moment), kept no leader for those
 * partitions, and never asked again (librdkafka #5430; docs/RELIABILITY.md).
 *
 * Every second, when events wait and none was acknowledged since the last look, it asks the
 * broker (a metadata request of the producer's own) whether every partition has a leader. Events
 * waiting with no acknowledgement for PRODUCER_STALL_TIMEOUT_SEC while the broker names all the
 * leaders: the producer is replaced. While the broker does not answer, or names no leader for
 * some partition, the silence is the broker's and the wait starts over.
 */
import type { Logger } from '../shared/logger.js';
import { StallDetector } from '../shared/stall-detector.js';
import type { IngestMetrics } from './metrics.js';

/** What the watchdog reads of the producer, and the one thing it does to it. */
export interface WatchedProducer {
  /** Events handed over and not yet acknowledged or given up. */
  readonly inFlight: number;
  /** Events acknowledged so far. */
  readonly acknowledged: number;
  /** A replaced producer still holds events (they are acknowledged or given up by ACK_TIMEOUT_SEC). */
  readonly retiring: boolean;
  /** Whether the broker names a leader for every partition; undefined when it does not answer. */
  leadersKnown(): Promise<boolean | undefined>;
  /** Swaps the native producer for a new one; resolves once new events go to it. */
  replace(): Promise<void>;
}

/** What the watchdog logs when it replaces the producer (the chaos runs count it). */
export const PRODUCER_REPLACED_LINE =
  'the producer acknowledged nothing while events waited and the broker led every partition; replacing it';

export class ProducerWatchdog {
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  private readonly stall: StallDetector;
  private readonly everyMs: number;

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
    const acknowledged = this.producer.acknowledged;
    let waiting: boolean | undefined = this.producer.inFlight > 0;
    if (waiting && acknowledged === this.lastAcknowledged) {
      // Nothing moved since the last look: whose silence is it? Only while the broker names a
      // leader for every partition is it the producer's. (Asked only now: a look costs nothing
      // while acknowledgements come.)
      waiting = (await this.producer.leadersKnown()) === true ? true : undefined;
    }
    this.lastAcknowledged = acknowledged;
    if (this.stopping) return;
    const stalled = this.stall.observe({
      nowMs: Date.now(),
      progress: acknowledged,
      // A replaced producer's events are given up by ACK_TIMEOUT_SEC: until then they wait.
      excused: this.producer.retiring,
      waiting,
    });
    if (!stalled) return;
    this.logger.error(
      { timeoutMs: this.stall.currentTimeoutMs, inFlight: this.producer.inFlight },
      PRODUCER_REPLACED_LINE,
    );
    this.metrics.producerReplacements.inc();
    await this.producer.replace();
    this.stall.replaced(this.producer.acknowledged);
    this.logger.info('producer replaced: new events go to the new one');
  }
  private lastAcknowledged: number | undefined;
}
