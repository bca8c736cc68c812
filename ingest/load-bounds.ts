/**
 * Bounds on the work ingest takes on at once, so that its memory stays flat whatever arrives:
 * requests being read or answered, the body bytes they hold, and gzip bodies being inflated.
 * Past a bound the answer is 503 `overloaded` with `Retry-After`, at once (nothing waits in a
 * queue of its own).
 */

/** One admitted request's share of the bounds; `release` gives it back (once). */
export interface Admission {
  /** Asks for `bytes` more than reserved so far; false (nothing taken) when the bound is hit. */
  grow(bytes: number): boolean;
  release(): void;
}

/** Requests past the header gates and not yet answered, and the body bytes reserved for them. */
export class RequestBudget {
  private activeRequests = 0;
  private reservedBytes = 0;

  constructor(
    private readonly maxRequests: number,
    private readonly maxBytes: number,
  ) {}

  get active(): number {
    return this.activeRequests;
  }

  get bytes(): number {
    return this.reservedBytes;
  }

  /**
   * Admits a request whose body is declared to be `declaredBytes` long (0 when not declared:
   * chunked bodies reserve as they arrive), or returns undefined when either bound is reached.
   */
  admit(declaredBytes: number): Admission | undefined {
    if (this.activeRequests >= this.maxRequests) return undefined;
    if (this.reservedBytes + declaredBytes > this.maxBytes) return undefined;
    this.activeRequests++;
    this.reservedBytes += declaredBytes;
    let held = declaredBytes;
    let released = false;
    return {
      grow: (bytes) => {
        if (released) return false;
        if (this.reservedBytes + bytes > this.maxBytes) return false;
        this.reservedBytes += bytes;
        held += bytes;
        return true;
      },
      release: () => {
        if (released) return;
        released = true;
        this.activeRequests--;
        this.reservedBytes -= held;
      },
    };
  }
}

/** A counting semaphore that never queues: `tryAcquire` succeeds or says no at once. */
export class Slots {
  private used = 0;

  constructor(private readonly size: number) {}

  get inUse(): number {
    return this.used;
  }

  /** A release function, or undefined when every slot is taken. */
  tryAcquire(): (() => void) | undefined {
    if (this.used >= this.size) return undefined;
    this.used++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.used--;
    };
  }
}
