/**
 * Identical queries answered from one computation: a query already being computed is joined
 * (in-flight dedupe), and a computed answer is reused for `ttlMs`, until the next flush
 * notification drops every answer (`clear`). Bounded: past `maxEntries` the least recently used
 * answer goes. A failed computation is not kept.
 */
export class ResultCache<T> {
  /** Map order is least recently used first. */
  private readonly entries = new Map<string, { value: Promise<T>; expiresMs: number }>();
  private generation = 0;

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    private readonly counters: { hit: () => void; miss: () => void },
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The answer for `key`, computed by `compute` unless one is in flight or fresh. */
  get(key: string, nowMs: number, compute: () => Promise<T>): Promise<T> {
    const entry = this.entries.get(key);
    if (entry !== undefined && entry.expiresMs > nowMs) {
      this.entries.delete(key);
      this.entries.set(key, entry);
      this.counters.hit();
      return entry.value;
    }
    this.counters.miss();
    const generation = this.generation;
    const value = compute();
    // In flight until settled: joiners share it whatever the TTL; once settled, fresh for ttlMs.
    const fresh = { value, expiresMs: Number.POSITIVE_INFINITY };
    this.entries.delete(key);
    this.entries.set(key, fresh);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    value.then(
      () => {
        // A flush committed while computing: the answer may already be old; do not keep it.
        if (this.generation !== generation || this.ttlMs === 0) {
          if (this.entries.get(key) === fresh) this.entries.delete(key);
        } else {
          fresh.expiresMs = Date.now() + this.ttlMs;
        }
      },
      () => {
        if (this.entries.get(key) === fresh) this.entries.delete(key);
      },
    );
    return value;
  }

  /** Drops every answer (a flush changed the figures); computations in flight finish unkept. */
  clear(): void {
    this.generation++;
    this.entries.clear();
  }
}
