import type { PipelineError } from '../shared/errors.js';

/**
 * Most events one request may produce: a delivery report names its event by
 * `request number × MAX_EVENTS_PER_REQUEST + index`, one number, so that no object per event is
 * needed to find it. Above `MAX_BATCH_EVENTS`' own upper bound (100,000).
 */
export const MAX_EVENTS_PER_REQUEST = 131_072;

/**
 * One request's events on their way to the broker: settled once every event has its outcome
 * (acknowledged, or an error), then `done` resolves with one entry per event, `null` for
 * acknowledged. One object per request, not a promise per event: the outcomes array is made once,
 * when the last report is in.
 */
export class RequestDelivery {
  /** One entry per event once settled: `null` for acknowledged. */
  readonly done: Promise<Array<PipelineError | null>>;
  private pending: number;
  /** The failed events' outcomes, by index; undefined while none failed. */
  private failures: Map<number, PipelineError> | undefined;
  private resolve!: (outcomes: Array<PipelineError | null>) => void;

  constructor(readonly events: number) {
    if (!Number.isSafeInteger(events) || events < 1 || events > MAX_EVENTS_PER_REQUEST) {
      throw new RangeError(
        `a request produces 1 to ${MAX_EVENTS_PER_REQUEST} events, not ${events}`,
      );
    }
    this.pending = events;
    this.done = new Promise((resolve) => {
      this.resolve = resolve;
    });
  }

  /** Events without an outcome yet. */
  get unsettled(): number {
    return this.pending;
  }

  /**
   * Records event `index`'s outcome (`null`: acknowledged). Each event is settled exactly once:
   * by its delivery report (librdkafka reports every message it queued once), or at once when
   * `produce()` refused it. Returns true when this was the last event outstanding.
   */
  settle(index: number, outcome: PipelineError | null): boolean {
    if (this.pending === 0) return false;
    if (outcome !== null) {
      this.failures ??= new Map();
      this.failures.set(index, outcome);
    }
    this.pending--;
    if (this.pending > 0) return false;
    const outcomes: Array<PipelineError | null> = new Array(this.events).fill(null);
    for (const [i, failure] of this.failures ?? []) outcomes[i] = failure;
    this.resolve(outcomes);
    return true;
  }
}
