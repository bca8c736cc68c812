/**
 * Tells when something should move and does not: the pure part of the two watchdogs, which
 * look every few seconds and replace their Kafka client when a detector says so. The aggregator's
 * `ConsumerWatchdog` keeps two (batches delivered from the assigned partitions; offsets stored
 * for partitions no consumer reads); ingest's `ProducerWatchdog` keeps one (acknowledgements
 * while events wait for them and the broker names a leader for every partition).
 */

/** One look at the watched client and the broker. */
export interface StallObservation {
  nowMs: number;
  /**
   * A counter that moves whenever what is watched makes progress: the batches the consumer has
   * delivered, the offsets stored in PostgreSQL (for the partitions no consumer reads), the
   * events the broker acknowledged to the producer.
   */
  progress: number;
  /**
   * Nothing is expected from the client now (for the consumer: consumption is paused, a
   * rebalance is being handled, or a batch or flush is in hand).
   */
  excused: boolean;
  /**
   * Work waits for the client: records past the consumer's position, events the producer holds
   * while the broker leads every partition. Undefined when unknown (the broker did not answer):
   * silence while the broker is away is not the client's fault.
   */
  waiting: boolean | undefined;
}

/** Replacements in a row without progress between them double the timeout, up to this. */
const MAX_BACKOFF = 16;

export class StallDetector {
  /** When work was first seen waiting with no progress since; undefined when not waiting. */
  private waitingSince: number | undefined;
  private progressSeen: number | undefined;
  private timeoutMs: number;
  /** Progress counted at the last replacement. */
  private progressAtReplacement: number | undefined;

  constructor(private readonly baseTimeoutMs: number) {
    this.timeoutMs = baseTimeoutMs;
  }

  /** The current timeout: the base one, or longer after replacements that did not help. */
  get currentTimeoutMs(): number {
    return this.timeoutMs;
  }

  /**
   * True once work has waited, with no progress and no excuse, for `timeoutMs` across
   * consecutive observations. Progress, an excuse or an unknown answer starts the wait over.
   */
  observe(observation: StallObservation): boolean {
    const progressed = observation.progress !== this.progressSeen;
    this.progressSeen = observation.progress;
    if (
      this.progressAtReplacement !== undefined &&
      observation.progress !== this.progressAtReplacement
    ) {
      this.timeoutMs = this.baseTimeoutMs;
      this.progressAtReplacement = undefined;
    }
    if (progressed || observation.excused || observation.waiting !== true) {
      this.waitingSince = undefined;
      return false;
    }
    this.waitingSince ??= observation.nowMs;
    return observation.nowMs - this.waitingSince >= this.timeoutMs;
  }

  /**
   * The client was replaced. If the one before it was a replacement too and nothing progressed
   * since, the work "waiting" may never move for a reason no new client mends (records at the
   * end of an aborted transaction; a broker that names leaders and refuses writes): the timeout
   * doubles rather than replacing clients every few seconds.
   */
  replaced(progress: number): void {
    if (this.progressAtReplacement === progress) {
      this.timeoutMs = Math.min(this.timeoutMs * 2, this.baseTimeoutMs * MAX_BACKOFF);
    }
    this.progressAtReplacement = progress;
    this.waitingSince = undefined;
    this.progressSeen = undefined;
  }
}
