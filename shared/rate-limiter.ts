/**
 * Token-bucket rate limiting per client (API key, or client address when keys are off).
 *
 * The bucket table is bounded, and it cannot be reset by churn: a client's entry is forgotten
 * only once its bucket has refilled (it has been idle for `burst / rate` seconds), when
 * forgetting it changes nothing. While the table is full of clients that are still in debt, a
 * client not in it is charged to one shared overflow bucket: spraying new addresses then buys
 * the sprayer one bucket's worth of requests in total, and never evicts a limited client (the old
 * least-recently-seen eviction gave an evicted abuser a full bucket back).
 */
export class RateLimiter {
  /** Map order is least recently seen first (entries are re-inserted on every request). */
  private readonly buckets = new Map<string, Bucket>();
  private readonly overflow: Bucket = { tokens: 0, updatedMs: 0 };
  private readonly refillMs: number;

  constructor(
    private readonly ratePerSec: number,
    private readonly burst: number,
    private readonly maxClients = 100_000,
  ) {
    this.refillMs = ratePerSec > 0 ? (burst / ratePerSec) * 1000 : 0;
    this.overflow.tokens = burst;
  }

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
    if (bucket !== undefined) {
      this.buckets.delete(client);
      this.buckets.set(client, bucket);
    } else {
      this.forgetRefilled(nowMs);
      if (this.buckets.size < this.maxClients) {
        bucket = { tokens: this.burst, updatedMs: nowMs };
        this.buckets.set(client, bucket);
      } else {
        bucket = this.overflow;
      }
    }
    this.refill(bucket, nowMs);
    // A request costing more than the burst could never pass; it is charged the whole burst.
    const charge = Math.min(cost, this.burst);
    if (bucket.tokens >= charge) {
      bucket.tokens -= charge;
      return 0;
    }
    return Math.max(1, Math.ceil((charge - bucket.tokens) / this.ratePerSec));
  }

  private refill(bucket: Bucket, nowMs: number): void {
    const elapsedSec = Math.max(0, nowMs - bucket.updatedMs) / 1000;
    bucket.tokens = Math.min(this.burst, bucket.tokens + elapsedSec * this.ratePerSec);
    bucket.updatedMs = nowMs;
  }

  /** Drops entries idle long enough to be full again, oldest first (they are a prefix). */
  private forgetRefilled(nowMs: number): void {
    for (const [client, bucket] of this.buckets) {
      if (nowMs - bucket.updatedMs < this.refillMs) return;
      this.buckets.delete(client);
    }
  }

  /** Clients currently tracked (bounded by `maxClients`). */
  get trackedClients(): number {
    return this.buckets.size;
  }
}

interface Bucket {
  tokens: number;
  updatedMs: number;
}
