import type { ClientBase } from 'pg';
import { ByteStringSet } from './byte-string-set.js';
import { CopyTextBuilder, encodeFields } from './copy-text.js';

/**
 * The users of the hours and days the aggregator is rolling up, held in memory so that a flush
 * decides in memory which of a closing window's users are new to its periods, and writes them as
 * one list per period (`period_users.user_ids`) instead of one indexed row per user.
 *
 * PostgreSQL stays the truth: a period's set is loaded from its stored lists the first time a
 * flush needs it, and only the owner of a partition writes that partition's periods (its epoch,
 * `partition_epochs`), so the set and the stored lists agree while the epoch stays the same. A
 * set is forgotten when its partition's epoch changes, when its period has ended for its
 * partition (every window in it closed; a late event loads it again), and, oldest periods first,
 * past `maxHeldUsers`. A flush that fails or rolls back forgets every set (`clear`): what it
 * added may or may not have been committed, and the next flush reads what was.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One period of one partition, site and activity type ('' for every type). */
export interface PeriodKey {
  partition: number;
  site: string;
  period: 'hour' | 'day';
  /** Epoch ms. */
  start: number;
  activityType: string;
}

/** A period's users and what the flush being written adds to it. */
export class HeldPeriod {
  readonly users = new ByteStringSet(64);
  /** The arena positions of the users this flush found new to the period. */
  added: number[] = [];
  events = 0;
  pageViews = 0;
  /** Whether its stored lists have been read. */
  loaded = false;

  constructor(
    readonly key: PeriodKey,
    /** Epoch ms; the period's end in its zone. */
    readonly end: number,
    readonly timeZone: string,
  ) {}

  /** The users this flush found new to the period, as strings. */
  addedUserIds(): string[] {
    const arena = this.users.arenaBytes;
    return this.added.map((position) =>
      decoder.decode(
        arena.subarray(this.users.entryStart(position), this.users.entryEnd(position)),
      ),
    );
  }

  /** Counts one event of `user` (`source[start..end)`, hashed `hash`) in the period. */
  count(source: Uint8Array, start: number, end: number, hash: number, pageView: boolean): void {
    const position = this.users.insert(source, start, end, hash);
    if (position > 0) this.added.push(position - 1);
    this.events++;
    if (pageView) this.pageViews++;
  }
}

/** Where a partition stands after a flush: its windows ending by `completeBefore` are closed. */
export interface PartitionProgress {
  partition: number;
  completeBefore: number;
}

export class PeriodUserCache {
  private readonly periods = new Map<string, HeldPeriod>();
  private readonly epochs = new Map<number, number>();
  /** Activity types each site counts by name, as far as this instance has seen. */
  readonly activityTypes = new Map<string, Set<string>>();

  constructor(private readonly maxHeldUsers = Number.POSITIVE_INFINITY) {}

  /** Users held in every set. */
  get heldUsers(): number {
    let held = 0;
    for (const period of this.periods.values()) held += period.users.size;
    return held;
  }

  /** Forgets a partition's sets unless they were read under `epoch`. */
  claim(partition: number, epoch: number): void {
    if (this.epochs.get(partition) === epoch) return;
    this.forget((period) => period.key.partition === partition);
    this.epochs.set(partition, epoch);
  }

  /** Forgets a partition's sets: it was revoked or lost. */
  release(partition: number): void {
    this.forget((period) => period.key.partition === partition);
    this.epochs.delete(partition);
  }

  /** The period, held from now on (its stored lists still to be read: `load`). */
  period(key: PeriodKey, end: number, timeZone: string): HeldPeriod {
    const id = periodKeyId(key);
    let held = this.periods.get(id);
    if (held === undefined) {
      held = new HeldPeriod(key, end, timeZone);
      this.periods.set(id, held);
    }
    return held;
  }

  /** Reads the stored users of every held period not read yet, in one query. */
  async load(client: ClientBase): Promise<void> {
    const missing = [...this.periods.values()].filter((period) => !period.loaded);
    if (missing.length === 0) return;
    const result = await client.query<{ i: number; user_ids: string[] }>(
      `SELECT k.i, l.user_ids
         FROM unnest($1::int[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
                WITH ORDINALITY AS k(part, site, period, start, activity_type, i)
         JOIN period_users l
           ON l.source_partition = k.part AND l.site = k.site AND l.period = k.period
          AND l.period_start = k.start AND l.activity_type = k.activity_type`,
      [
        missing.map((period) => period.key.partition),
        missing.map((period) => period.key.site),
        missing.map((period) => period.key.period),
        missing.map((period) => new Date(period.key.start).toISOString()),
        missing.map((period) => period.key.activityType),
      ],
    );
    for (const row of result.rows) {
      const period = missing[Number(row.i) - 1] as HeldPeriod;
      for (const user of row.user_ids) period.users.addBytes(encoder.encode(user));
    }
    for (const period of missing) period.loaded = true;
  }

  /** The periods this flush counted events in. */
  touched(): HeldPeriod[] {
    return [...this.periods.values()].filter((period) => period.events > 0);
  }

  /**
   * After a committed flush: forgets the periods over for their partition, then the oldest past
   * the bound, and starts the next flush's counts at zero.
   */
  committed(progress: readonly PartitionProgress[]): void {
    const completeBefore = new Map(progress.map((p) => [p.partition, p.completeBefore]));
    this.forget((period) => period.end <= (completeBefore.get(period.key.partition) ?? -Infinity));
    for (const period of this.periods.values()) {
      period.added = [];
      period.events = 0;
      period.pageViews = 0;
    }
    let held = this.heldUsers;
    if (held <= this.maxHeldUsers) return;
    const oldestFirst = [...this.periods.entries()].sort(
      ([, a], [, b]) => a.key.start - b.key.start,
    );
    for (const [id, period] of oldestFirst) {
      if (held <= this.maxHeldUsers) break;
      held -= period.users.size;
      this.periods.delete(id);
    }
  }

  /** Forgets everything: after a flush that may or may not have committed. */
  clear(): void {
    this.periods.clear();
    this.epochs.clear();
    this.activityTypes.clear();
  }

  private forget(which: (period: HeldPeriod) => boolean): void {
    for (const [id, period] of this.periods) if (which(period)) this.periods.delete(id);
  }
}

/** A period's identity as one string (map keys). */
export function periodKeyId(key: PeriodKey): string {
  return `${key.partition}\u0000${key.site}\u0000${key.period}\u0000${key.start}\u0000${key.activityType}`;
}

/**
 * COPY text of the users each period gained in this flush: (partition, site, period, start,
 * activity type, user ids as an array).
 */
export function* encodeAddedUsers(periods: readonly HeldPeriod[]): Generator<Uint8Array> {
  const out = new CopyTextBuilder();
  const open = encoder.encode('{');
  const close = encoder.encode('}\n');
  for (const period of periods) {
    if (period.added.length === 0) continue;
    const { key } = period;
    out.raw(
      encodeFields(
        String(key.partition),
        key.site,
        key.period,
        new Date(key.start).toISOString(),
        escapeCopy(key.activityType),
      ),
    );
    out.raw(open);
    const users = period.users;
    const arena = users.arenaBytes;
    let first = true;
    for (const position of period.added) {
      out.arrayElement(arena, users.entryStart(position), users.entryEnd(position), first);
      first = false;
    }
    out.raw(close);
    yield* out.take();
  }
  yield* out.finish();
}

/** An activity type as a COPY text field (it may hold any character but NUL). */
function escapeCopy(text: string): string {
  return text.replace(/[\\\t\n\r]/g, (c) =>
    c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r',
  );
}
