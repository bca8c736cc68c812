/**
 * Token-bucket rate limiting per client (API key, or remote address when keys are off).
 *
 * The bucket map is bounded: past `maxClients` the least recently seen client is forgotten (a
 * forgotten client starts again with a full bucket, which errs on the side of admitting).
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; updatedMs: number }>();

  constructor(
    private readonly ratePerSec: number,
    private readonly burst: number,
    private readonly maxClients = 100_000,
  ) {}

  get enabled(): boolean {
    return this.ratePerSec > 0;
  }

  /**
   * Takes `cost` tokens from `client`'s bucket. Returns 0 when admitted, otherwise the seconds
   * to wait before the request could be admitted (for `Retry-After`).
   */
  take(client: string, cost: number, nowMs: number): number {
    if (!this.enabled) return 0;
    let bucket = this.buckets.get(client);
    if (bucket === undefined) {
      bucket = { tokens: this.burst, updatedMs: nowMs };
      if (this.buckets.size >= this.maxClients) {
        const oldest = this.buckets.keys().next();
        if (oldest.done !== true) this.buckets.delete(oldest.value);
      }
    } else {
      // Re-insert so that Map order stays least-recently-seen first.
      this.buckets.delete(client);
      const elapsedSec = Math.max(0, nowMs - bucket.updatedMs) / 1000;
      bucket.tokens = Math.min(this.burst, bucket.tokens + elapsedSec * this.ratePerSec);
      bucket.updatedMs = nowMs;
    }
    this.buckets.set(client, bucket);
    // A request costing more than the burst could never pass; it is charged the whole burst.
    const charge = Math.min(cost, this.burst);
    if (bucket.tokens >= charge) {
      bucket.tokens -= charge;
      return 0;
    }
    return Math.max(1, Math.ceil((charge - bucket.tokens) / this.ratePerSec));
  }

  /** Clients currently tracked (bounded by `maxClients`). */
  get trackedClients(): number {
    return this.buckets.size;
  }
}
