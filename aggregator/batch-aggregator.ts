/**
 * The per-batch work of the aggregator, pure and deterministic: parse and validate each record
 * of one partition's batch, assign it to its event-time window, and return per-window partial
 * lists of events. It runs in a Piscina worker (`parse-worker.ts`) or inline (WORKERS=0); the
 * main thread merges the result into the partition's windows, in memory or through the window's
 * stored membership (`window-state.ts`).
 *
 * No event is late here: a window that closed still takes events (the main thread counts them
 * through its stored membership). The one exception is a window closed by a version that stored
 * no membership (`legacyFinalThrough`). Every decision depends only on the records and on the
 * partition state passed in, never on batch boundaries or the clock, so a replay after a crash
 * decides exactly as the first pass did.
 */
import { DEFAULT_SITE, PAGE_VIEW, validateEvent } from '../shared/event-schema.js';
import { type PackedStrings, PackedStringsBuilder, withCapacity } from './packed-strings.js';

/** One partition's batch, packed so that the buffers can be transferred to a worker. */
export interface BatchInput {
  partition: number;
  /** Record values, concatenated. */
  values: Uint8Array;
  /** End of each record's value in `values`; -1 for a record with no value. */
  valueEnds: Int32Array;
  /**
   * Record keys, concatenated: the worker never reads them, it only hands back those of the
   * records that are dead-lettered (`BatchResult.rejected`).
   */
  keys: Uint8Array;
  /** End of each record's key in `keys`; -1 for a record with no key. */
  keyEnds: Int32Array;
  /** Each record's offset. */
  offsets: Float64Array;
  /**
   * Each record's Kafka timestamp (ingest's receive time), -1 where the record has none. The
   * schema's time bounds are measured against it, not against the clock, so that a replay
   * decides exactly as the first pass did; and it caps what the record may move the watermark.
   */
  timestamps: Float64Array;
  windowMs: number;
  /** Events older than this at their receive time are invalid (`timestamp_too_old`). */
  maxAgeMs: number;
  /** The partition's watermark before this batch. */
  watermarkIn: number;
  /**
   * Every window starting at or before this was closed by a version that stored no membership:
   * an event for it cannot be counted exactly and is dead-lettered as `late`.
   */
  legacyFinalThrough: number;
  /** Records at or below this offset were already reflected in PostgreSQL: replayed, not new. */
  replayThrough: number;
  /** The windows being rebuilt by the replay (open in PostgreSQL): only they count replayed records. */
  replayWindows: Float64Array;
}

/** The zone of a record that names none (written before ingest stamped sites). */
export const DEFAULT_TIME_ZONE = 'UTC';

/**
 * The events of one site in one window from one batch, in offset order, each once: the main thread counts
 * those its window has not counted yet. Every event has an id: its `event_id`, or for an event
 * sent without one a synthetic id made from its offset (`syntheticEventId`), so that a repeated
 * record (a producer retry, a client resend) counts once and a replay can be recognised. Ids
 * travel as UTF-8 bytes (`PackedStrings`), not strings: the main thread merges them into its byte
 * sets without creating a V8 string.
 */
export interface WindowPartial {
  start: number;
  site: string;
  /** The site's time zone, as the first of these events names it. */
  timeZone: string;
  firstOffset: number;
  eventIds: PackedStrings;
  /** The user of each of `eventIds`. */
  eventIdUsers: PackedStrings;
  /** 1 where the event of `eventIds` at the same index is a page view, else 0. */
  eventIdPageViews: Uint8Array;
  /** The activity types of these events, each once. */
  types: string[];
  /** The activity type of each of `eventIds`: an index into `types`. */
  eventIdTypes: Uint32Array;
}

export interface BatchResult {
  windows: WindowPartial[];
  watermarkOut: number;
  /** Records that failed validation: index into the batch and the reason code. */
  invalid: Array<{ index: number; code: string }>;
  /** Indexes of valid records whose window closed before membership was stored. */
  late: number[];
  /** Replayed records that were not counted again (already in final rows, or late or invalid before). */
  skipped: number;
  /** Events whose `event_id` appeared earlier in the same window of this batch: not counted again. */
  duplicates: number;
  /**
   * The key and value of every record of `invalid` and `late`, copied out of the batch: the
   * batch's buffers were transferred to the worker, and the dead letters need the bytes.
   */
  rejected: RejectedRecord[];
}

/** A record that goes to the dead-letter topic, as its bytes. */
export interface RejectedRecord {
  index: number;
  offset: number;
  key: Uint8Array | null;
  value: Uint8Array | null;
}

const decoder = new TextDecoder('utf-8', { fatal: true });

export function windowStartOf(timestampMs: number, windowMs: number): number {
  return timestampMs - (((timestampMs % windowMs) + windowMs) % windowMs);
}

/**
 * The id of an event sent without `event_id`: its partition offset, padded past the longest id
 * the schema accepts from a client (`EVENT_LIMITS.eventIdMaxChars`), so the two never collide.
 */
export function syntheticEventId(offset: number): string {
  return `offset:${offset}`.padStart(65, '~');
}

/** A site's window of the batch while it is being built. */
interface WindowBuild {
  start: number;
  site: string;
  timeZone: string;
  firstOffset: number;
  eventIds: Set<string>;
  identified: PackedStringsBuilder;
  identifiedUsers: PackedStringsBuilder;
  identifiedPageViews: number[];
  types: Map<string, number>;
  identifiedTypes: number[];
}

export function aggregateBatch(input: BatchInput): BatchResult {
  /** Per site, per window start. */
  const windows = new Map<string, Map<number, WindowBuild>>();
  const replayWindows = new Set(input.replayWindows);
  const invalid: BatchResult['invalid'] = [];
  const late: number[] = [];
  const rejected: Array<Omit<RejectedRecord, 'key'>> = [];
  let skipped = 0;
  let duplicates = 0;
  let watermark = input.watermarkIn;
  let start = 0;

  for (let i = 0; i < input.offsets.length; i++) {
    const offset = input.offsets[i] as number;
    const end = input.valueEnds[i] as number;
    const appendedMs = input.timestamps[i] as number;
    const replayed = offset <= input.replayThrough;
    let outcome: ReturnType<typeof validateEvent> | { ok: false; code: string };
    const valueStart = start;
    if (end < 0) {
      outcome = { ok: false, code: 'empty_record' };
    } else {
      const bytes = input.values.subarray(start, end);
      start = end;
      outcome = decodeRecord(bytes, appendedMs, input.maxAgeMs);
    }
    if (!outcome.ok) {
      if (replayed) skipped++;
      else {
        invalid.push({ index: i, code: outcome.code });
        rejected.push({
          index: i,
          offset,
          value: end < 0 ? null : input.values.slice(valueStart, end),
        });
      }
      continue;
    }
    const event = outcome.event;
    const windowStart = windowStartOf(event.timestamp, input.windowMs);
    if (replayed) {
      // Rebuilding open windows from scratch: count exactly the records of those windows.
      if (!replayWindows.has(windowStart)) {
        skipped++;
        continue;
      }
    } else {
      if (windowStart <= input.legacyFinalThrough) {
        late.push(i);
        rejected.push({ index: i, offset, value: input.values.slice(valueStart, end) });
        continue;
      }
      // The watermark follows event time, but never past the record's receive time: a client's
      // clock (or a forged timestamp) must not close windows for everyone else's events.
      const bounded = appendedMs >= 0 ? Math.min(event.timestamp, appendedMs) : watermark;
      if (bounded > watermark) watermark = bounded;
    }
    const site = event.site ?? DEFAULT_SITE;
    let siteWindows = windows.get(site);
    if (siteWindows === undefined) {
      siteWindows = new Map();
      windows.set(site, siteWindows);
    }
    let window = siteWindows.get(windowStart);
    if (window === undefined) {
      window = {
        start: windowStart,
        site,
        timeZone: event.time_zone ?? DEFAULT_TIME_ZONE,
        firstOffset: offset,
        eventIds: new Set(),
        identified: new PackedStringsBuilder(),
        identifiedUsers: new PackedStringsBuilder(),
        identifiedPageViews: [],
        types: new Map(),
        identifiedTypes: [],
      };
      siteWindows.set(windowStart, window);
    }
    const eventId = event.event_id ?? syntheticEventId(offset);
    if (window.eventIds.has(eventId)) {
      duplicates++;
      continue;
    }
    window.eventIds.add(eventId);
    window.identified.push(eventId);
    window.identifiedUsers.push(event.user_id);
    window.identifiedPageViews.push(event.activity_type === PAGE_VIEW ? 1 : 0);
    let type = window.types.get(event.activity_type);
    if (type === undefined) {
      type = window.types.size;
      window.types.set(event.activity_type, type);
    }
    window.identifiedTypes.push(type);
  }

  const partials: WindowPartial[] = [];
  for (const siteWindows of windows.values()) {
    for (const window of siteWindows.values()) {
      partials.push({
        start: window.start,
        site: window.site,
        timeZone: window.timeZone,
        firstOffset: window.firstOffset,
        eventIds: window.identified.finish(),
        eventIdUsers: window.identifiedUsers.finish(),
        eventIdPageViews: Uint8Array.from(window.identifiedPageViews),
        types: [...window.types.keys()],
        eventIdTypes: Uint32Array.from(window.identifiedTypes),
      });
    }
  }
  return {
    windows: partials,
    watermarkOut: watermark,
    invalid,
    late,
    skipped,
    duplicates,
    rejected: rejected.map((record) => ({ ...record, key: keyOf(input, record.index) })),
  };
}

/** Record `index`'s key, copied out of the batch (rejected records only: they are few). */
function keyOf(input: BatchInput, index: number): Uint8Array | null {
  const end = input.keyEnds[index] as number;
  if (end < 0) return null;
  let start = 0;
  for (let i = index - 1; i >= 0; i--) {
    const previous = input.keyEnds[i] as number;
    if (previous >= 0) {
      start = previous;
      break;
    }
  }
  return input.keys.slice(start, end);
}

/**
 * UTF-8 → JSON → schema. Not the schema's `decodeEvent`, which reports unparseable JSON as
 * `invalid_type`: a dead letter says `invalid_json`, the code ingest answers for the same bytes.
 */
function decodeRecord(
  bytes: Uint8Array,
  appendedMs: number,
  maxAgeMs: number,
): ReturnType<typeof validateEvent> | { ok: false; code: 'invalid_utf8' | 'invalid_json' } {
  let text: string;
  try {
    text = decoder.decode(bytes);
  } catch {
    return { ok: false, code: 'invalid_utf8' };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, code: 'invalid_json' };
  }
  // A record without a Kafka timestamp has nothing fixed to bound its age or future against.
  if (appendedMs < 0) {
    return validateEvent(value, {
      nowMs: Number.POSITIVE_INFINITY,
      maxAgeMs: null,
      requireTimestamp: true,
      record: true,
    });
  }
  return validateEvent(value, {
    nowMs: appendedMs,
    maxAgeMs,
    requireTimestamp: true,
    record: true,
  });
}

/** The records of a batch, in the transferable buffers of a BatchInput. */
export type PackedRecords = Pick<
  BatchInput,
  'values' | 'valueEnds' | 'keys' | 'keyEnds' | 'offsets' | 'timestamps'
>;

/**
 * Packs records (in offset order) into a BatchInput's transferable buffers (tests, and callers
 * that hold records as objects; the consumer packs as it consumes, with `RecordPacker`).
 */
export function packRecords(
  records: ReadonlyArray<{
    offset: number;
    timestampMs: number;
    value: Uint8Array | null;
    key?: Uint8Array | null;
  }>,
): PackedRecords {
  const packer = new RecordPacker();
  for (const record of records) {
    packer.push(record.offset, record.timestampMs, record.key ?? null, record.value);
  }
  return packer.finish();
}

/**
 * Builds a batch's packed buffers one record at a time, copying each key and value once into
 * buffers that grow by doubling: the consumer's only per-record work on the main thread.
 */
export class RecordPacker {
  private values: Uint8Array;
  private keys: Uint8Array;
  private valueEnds: Int32Array;
  private keyEnds: Int32Array;
  private offsets: Float64Array;
  private timestamps: Float64Array;
  private valuesUsed = 0;
  private keysUsed = 0;
  private count = 0;

  /**
   * `expected`: what the partition's previous batch held (`sizes`). Its buffers start a quarter
   * larger, so a batch like the last one never grows them: growing copies what is packed so far.
   */
  constructor(expected?: PackerSizes) {
    const records = roomFor(expected?.records, 256);
    this.values = new Uint8Array(roomFor(expected?.valueBytes, 64 * 1024));
    this.keys = new Uint8Array(roomFor(expected?.keyBytes, 8 * 1024));
    this.valueEnds = new Int32Array(records);
    this.keyEnds = new Int32Array(records);
    this.offsets = new Float64Array(records);
    this.timestamps = new Float64Array(records);
  }

  /** What this batch holds: the next packer of its partition starts from it. */
  get sizes(): PackerSizes {
    return { records: this.count, valueBytes: this.valuesUsed, keyBytes: this.keysUsed };
  }

  /** Records packed so far. */
  get length(): number {
    return this.count;
  }

  /** Bytes of keys and values packed so far. */
  get bytes(): number {
    return this.valuesUsed + this.keysUsed;
  }

  /** The offset of the last record packed, or -1. */
  get lastOffset(): number {
    return this.count === 0 ? -1 : (this.offsets[this.count - 1] as number);
  }

  /** The first record's offset, or -1. */
  get firstOffset(): number {
    return this.count === 0 ? -1 : (this.offsets[0] as number);
  }

  /** The last record's Kafka timestamp, or -1. */
  get lastTimestampMs(): number {
    return this.count === 0 ? -1 : (this.timestamps[this.count - 1] as number);
  }

  push(
    offset: number,
    timestampMs: number | undefined,
    key: Uint8Array | null,
    value: Uint8Array | null,
  ): void {
    if (this.count === this.offsets.length) this.growRecords();
    const i = this.count++;
    this.offsets[i] = offset;
    this.timestamps[i] =
      timestampMs !== undefined && Number.isFinite(timestampMs) && timestampMs >= 0
        ? timestampMs
        : -1;
    if (value === null) {
      this.valueEnds[i] = -1;
    } else {
      this.values = appended(this.values, this.valuesUsed, value);
      this.valuesUsed += value.byteLength;
      this.valueEnds[i] = this.valuesUsed;
    }
    if (key === null) {
      this.keyEnds[i] = -1;
    } else {
      this.keys = appended(this.keys, this.keysUsed, key);
      this.keysUsed += key.byteLength;
      this.keyEnds[i] = this.keysUsed;
    }
  }

  /**
   * The packed records, as views of their size over the packer's buffers (not copies: the
   * buffers are transferred to the worker whole); the packer must not be used after.
   */
  finish(): PackedRecords {
    return {
      values: this.values.subarray(0, this.valuesUsed),
      valueEnds: this.valueEnds.subarray(0, this.count),
      keys: this.keys.subarray(0, this.keysUsed),
      keyEnds: this.keyEnds.subarray(0, this.count),
      offsets: this.offsets.subarray(0, this.count),
      timestamps: this.timestamps.subarray(0, this.count),
    };
  }

  private growRecords(): void {
    const size = this.offsets.length * 2;
    this.valueEnds = withCapacity(this.valueEnds, size);
    this.keyEnds = withCapacity(this.keyEnds, size);
    this.offsets = withCapacity(this.offsets, size);
    this.timestamps = withCapacity(this.timestamps, size);
  }
}

/** How much a `RecordPacker` held: records, and bytes of values and of keys. */
export interface PackerSizes {
  records: number;
  valueBytes: number;
  keyBytes: number;
}

/** Room for a quarter more than `expected`, and at least `minimum`. */
function roomFor(expected: number | undefined, minimum: number): number {
  return Math.max(minimum, Math.ceil((expected ?? 0) * 1.25));
}

/** `bytes` with `item` written at `used`: the same buffer, or a doubled one when it is full. */
function appended(bytes: Uint8Array, used: number, item: Uint8Array): Uint8Array {
  const target =
    used + item.byteLength > bytes.length
      ? withCapacity(bytes, Math.max(bytes.length * 2, used + item.byteLength), used)
      : bytes;
  target.set(item, used);
  return target;
}
