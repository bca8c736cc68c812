/**
 * The per-batch work of the aggregator, pure and deterministic: parse and validate each record
 * of one partition's batch, assign it to its event-time window, decide whether it is late, and
 * return per-window partial user sets and counts. It runs in a Piscina worker (`parse-worker.ts`)
 * or inline (WORKERS=0); the main thread merges the result into the partition's windows.
 *
 * Determinism matters for exactly-once: after a crash the same records are replayed, and every
 * decision here depends only on the records and on the partition state passed in, never on batch
 * boundaries or the clock.
 */
import { PAGE_VIEW, validateEvent } from '../shared/event-schema.js';
import { type PackedStrings, PackedStringsBuilder, packStrings } from './packed-strings.js';

/** One partition's batch, packed so that the buffers can be transferred to a worker. */
export interface BatchInput {
  partition: number;
  /** Record values, concatenated. */
  values: Uint8Array;
  /** End of each record's value in `values`; -1 for a record with no value. */
  valueEnds: Int32Array;
  /** Each record's offset. */
  offsets: Float64Array;
  /**
   * Each record's Kafka timestamp (ingest's receive time), -1 where the record has none. The
   * schema's future-timestamp bound is measured against it, not against the clock, so that a
   * replay decides exactly as the first pass did.
   */
  timestamps: Float64Array;
  windowMs: number;
  allowedLatenessMs: number;
  /** The partition's watermark (highest event time seen) before this batch. */
  watermarkIn: number;
  /** Every window starting at or before this is final. */
  finalThrough: number;
  /** Records at or below this offset were already reflected in PostgreSQL: replayed, not new. */
  replayThrough: number;
  /** The windows being rebuilt by the replay (open in PostgreSQL): only they count replayed records. */
  replayWindows: Float64Array;
}

/**
 * The partial figures of one window from one batch.
 *
 * Events that carry an `event_id` (ingest gives one to every event a client sends without) are
 * listed one by one, in offset order and without repeats within the batch, so that the main
 * thread can skip those its window already counted in an earlier batch: a producer retry or a
 * client resend can put the same event in the topic twice. Only events without an id are folded
 * into `users`, `events` and `pageViews` here. Ids travel as UTF-8 bytes (`PackedStrings`), not
 * strings: the main thread merges them into its byte sets without creating a V8 string.
 */
export interface WindowPartial {
  start: number;
  /** Users of the events without an `event_id`, each once. */
  users: PackedStrings;
  /** Events without an `event_id`, and how many of them were page views. */
  events: number;
  pageViews: number;
  firstOffset: number;
  /** The `event_id`s of this window's identified events, first occurrence in the batch only. */
  eventIds: PackedStrings;
  /** The user of each of `eventIds`. */
  eventIdUsers: PackedStrings;
  /** 1 where the event of `eventIds` at the same index is a page view, else 0. */
  eventIdPageViews: Uint8Array;
}

export interface BatchResult {
  windows: WindowPartial[];
  watermarkOut: number;
  /** Records that failed validation: index into the batch and the reason code. */
  invalid: Array<{ index: number; code: string }>;
  /** Indexes of valid records whose window was already final. */
  late: number[];
  /** Replayed records that were not counted again (already in final rows, or late or invalid before). */
  skipped: number;
  /** Events whose `event_id` appeared earlier in the same window of this batch: not counted again. */
  duplicates: number;
}

const decoder = new TextDecoder('utf-8', { fatal: true });

export function windowStartOf(timestampMs: number, windowMs: number): number {
  return timestampMs - (((timestampMs % windowMs) + windowMs) % windowMs);
}

/** A window of the batch while it is being built. */
interface WindowBuild {
  start: number;
  firstOffset: number;
  events: number;
  pageViews: number;
  users: Set<string>;
  eventIds: Set<string>;
  identified: PackedStringsBuilder;
  identifiedUsers: PackedStringsBuilder;
  identifiedPageViews: number[];
}

export function aggregateBatch(input: BatchInput): BatchResult {
  const windows = new Map<number, WindowBuild>();
  const replayWindows = new Set(input.replayWindows);
  const invalid: BatchResult['invalid'] = [];
  const late: number[] = [];
  let skipped = 0;
  let duplicates = 0;
  let watermark = input.watermarkIn;
  let start = 0;

  for (let i = 0; i < input.offsets.length; i++) {
    const offset = input.offsets[i] as number;
    const end = input.valueEnds[i] as number;
    const replayed = offset <= input.replayThrough;
    let outcome: ReturnType<typeof validateEvent> | { ok: false; code: string };
    if (end < 0) {
      outcome = { ok: false, code: 'empty_record' };
    } else {
      const bytes = input.values.subarray(start, end);
      start = end;
      outcome = decodeRecord(bytes, input.timestamps[i] as number);
    }
    if (!outcome.ok) {
      if (replayed) skipped++;
      else invalid.push({ index: i, code: outcome.code });
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
      const final =
        windowStart <= input.finalThrough ||
        watermark >= windowStart + input.windowMs + input.allowedLatenessMs;
      if (final) {
        late.push(i);
        continue;
      }
      if (event.timestamp > watermark) watermark = event.timestamp;
    }
    let window = windows.get(windowStart);
    if (window === undefined) {
      window = {
        start: windowStart,
        firstOffset: offset,
        events: 0,
        pageViews: 0,
        users: new Set(),
        eventIds: new Set(),
        identified: new PackedStringsBuilder(),
        identifiedUsers: new PackedStringsBuilder(),
        identifiedPageViews: [],
      };
      windows.set(windowStart, window);
    }
    const pageView = event.activity_type === PAGE_VIEW;
    if (event.event_id === undefined) {
      window.users.add(event.user_id);
      window.events++;
      if (pageView) window.pageViews++;
    } else if (window.eventIds.has(event.event_id)) {
      duplicates++;
    } else {
      window.eventIds.add(event.event_id);
      window.identified.push(event.event_id);
      window.identifiedUsers.push(event.user_id);
      window.identifiedPageViews.push(pageView ? 1 : 0);
    }
  }

  const partials: WindowPartial[] = [];
  for (const window of windows.values()) {
    partials.push({
      start: window.start,
      users: packStrings(window.users),
      events: window.events,
      pageViews: window.pageViews,
      firstOffset: window.firstOffset,
      eventIds: window.identified.finish(),
      eventIdUsers: window.identifiedUsers.finish(),
      eventIdPageViews: Uint8Array.from(window.identifiedPageViews),
    });
  }
  return { windows: partials, watermarkOut: watermark, invalid, late, skipped, duplicates };
}

/**
 * UTF-8 → JSON → schema. Not the schema's `decodeEvent`, which reports unparseable JSON as
 * `invalid_type`: a dead letter says `invalid_json`, the code ingest answers for the same bytes.
 */
function decodeRecord(
  bytes: Uint8Array,
  appendedMs: number,
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
  // A record without a Kafka timestamp has nothing fixed to bound its future against.
  const nowMs = appendedMs >= 0 ? appendedMs : Number.POSITIVE_INFINITY;
  return validateEvent(value, { nowMs, maxAgeMs: null, requireTimestamp: true });
}

/** The records of a batch, in the transferable buffers of a BatchInput. */
export type PackedRecords = Pick<BatchInput, 'values' | 'valueEnds' | 'offsets' | 'timestamps'>;

/** Packs records (in offset order) into a BatchInput's transferable buffers. */
export function packRecords(
  records: ReadonlyArray<{ offset: number; timestampMs: number; value: Uint8Array | null }>,
): PackedRecords {
  let total = 0;
  for (const record of records) total += record.value?.byteLength ?? 0;
  const values = new Uint8Array(total);
  const valueEnds = new Int32Array(records.length);
  const offsets = new Float64Array(records.length);
  const timestamps = new Float64Array(records.length);
  let position = 0;
  records.forEach((record, i) => {
    offsets[i] = record.offset;
    timestamps[i] = Number.isFinite(record.timestampMs) ? record.timestampMs : -1;
    if (record.value === null) {
      valueEnds[i] = -1;
      return;
    }
    values.set(record.value, position);
    position += record.value.byteLength;
    valueEnds[i] = position;
  });
  return { values, valueEnds, offsets, timestamps };
}
