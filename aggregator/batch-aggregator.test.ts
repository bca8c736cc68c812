/**
 * The worker's per-batch logic (`aggregateBatch`, `packRecords`): outcomes per record, window
 * partials, the watermark, replay, and the property exactly-once rests on: the figures depend
 * only on the records, never on where batches begin and end, on flushes, on windows closing
 * early, or on crashes followed by a replay from the checkpoint.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PAGE_VIEW, validateEvent } from '../shared/event-schema.js';
import { seededRandom } from '../shared/testing.js';
import {
  aggregateBatch,
  type BatchInput,
  type BatchResult,
  packRecords,
  RecordPacker,
  syntheticEventId,
  windowStartOf,
} from './batch-aggregator.js';
import { unpackStrings } from './packed-strings.js';
import type { PartitionCheckpoint } from './partition-recovery.js';
import { type PartitionFlush, PartitionWindows, type WindowRow } from './window-state.js';

const WINDOW_MS = 60_000;
const LATENESS_MS = 10_000;
/** A window start: 2024-05-01T12:00:00Z. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const T1 = T0 + WINDOW_MS;
const T2 = T1 + WINDOW_MS;
/** Far after every event time used here: the schema's future-timestamp bound never applies. */
const NOW = T0 + 30 * 86_400_000;
/** The accepted age, long enough for every event time used here unless a test says otherwise. */
const MAX_AGE_MS = 365 * 86_400_000;

interface RawRecord {
  offset: number;
  /** The Kafka timestamp: when ingest received the event. */
  timestampMs: number;
  value: Uint8Array | null;
}

function event(user: string | number, timestamp: number | string, type = 'click'): object {
  return { user_id: user, activity_type: type, timestamp };
}

function bytes(value: object | string): Uint8Array {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
}

/** Records at consecutive offsets from `first`, appended to the topic at `appendedMs`. */
function records(
  values: ReadonlyArray<object | string | Uint8Array | null>,
  first = 0,
  appendedMs = NOW,
) {
  return values.map(
    (value, i): RawRecord => ({
      offset: first + i,
      timestampMs: appendedMs,
      value: value === null ? null : value instanceof Uint8Array ? value : bytes(value),
    }),
  );
}

/** A batch of a partition with no history, unless `state` says otherwise. */
function batch(recs: readonly RawRecord[], state: Partial<BatchInput> = {}): BatchInput {
  return {
    partition: 0,
    ...packRecords(recs),
    windowMs: WINDOW_MS,
    maxAgeMs: MAX_AGE_MS,
    watermarkIn: Number.NEGATIVE_INFINITY,
    legacyFinalThrough: Number.NEGATIVE_INFINITY,
    replayThrough: -1,
    replayWindows: new Float64Array(0),
    ...state,
  };
}

/**
 * Partials sorted by window start, summarised: distinct users (sorted), events and page views.
 * The per-event lists are shown only when some event carries a client's `event_id` (most tests
 * send events without one, which get synthetic ids).
 */
function partials(result: BatchResult) {
  return result.windows
    .map(({ eventIds, eventIdUsers, eventIdPageViews, start, firstOffset }) => {
      const ids = unpackStrings(eventIds);
      const users = unpackStrings(eventIdUsers);
      const clientIds = ids.some((id) => id.length <= 64);
      return {
        start,
        users: [...new Set(users)].sort(),
        events: ids.length,
        pageViews: eventIdPageViews.reduce((sum, pv) => sum + pv, 0),
        firstOffset,
        ...(clientIds
          ? { eventIds: ids, eventIdUsers: users, eventIdPageViews: [...eventIdPageViews] }
          : {}),
      };
    })
    .sort((a, b) => a.start - b.start);
}

describe('packRecords', () => {
  test('concatenates values and records where each one ends; -1 for a record with no value', () => {
    const packed = packRecords([
      { offset: 7, timestampMs: T0, value: bytes('ab') },
      { offset: 8, timestampMs: T0 + 1, value: null },
      { offset: 10, timestampMs: Number.NaN, value: bytes('') },
      { offset: 2 ** 40, timestampMs: T1, value: bytes('cde') },
    ]);
    assert.equal(Buffer.from(packed.values).toString(), 'abcde');
    assert.deepEqual([...packed.valueEnds], [2, -1, 2, 5]);
    assert.deepEqual([...packed.offsets], [7, 8, 10, 2 ** 40]);
    // A record without a usable Kafka timestamp is marked -1.
    assert.deepEqual([...packed.timestamps], [T0, T0 + 1, -1, T1]);
  });

  test('keys are packed beside the values, -1 for a record with no key', () => {
    const packed = packRecords([
      { offset: 1, timestampMs: T0, value: bytes('x'), key: bytes('site/u1') },
      { offset: 2, timestampMs: T0, value: bytes('y'), key: null },
      { offset: 3, timestampMs: T0, value: bytes('z'), key: bytes('u2') },
    ]);
    assert.equal(Buffer.from(packed.keys).toString(), 'site/u1u2');
    assert.deepEqual([...packed.keyEnds], [7, -1, 9]);
  });

  test('a packer grows past its first buffers without losing a byte', () => {
    const packer = new RecordPacker();
    const values: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const value = JSON.stringify({ i, pad: 'p'.repeat(i % 97) });
      values.push(value);
      packer.push(i, T0 + i, bytes(`k${i}`), bytes(value));
    }
    assert.equal(packer.length, 3000);
    assert.equal(packer.firstOffset, 0);
    assert.equal(packer.lastOffset, 2999);
    assert.equal(packer.lastTimestampMs, T0 + 2999);
    const packed = packer.finish();
    assert.equal(Buffer.from(packed.values).toString(), values.join(''));
    assert.equal(packed.offsets[2999], 2999);
    assert.equal(packed.keyEnds[2999], packed.keys.byteLength);
  });

  test('an empty batch packs into empty buffers', () => {
    const packed = packRecords([]);
    assert.equal(packed.values.byteLength, 0);
    assert.equal(packed.valueEnds.length, 0);
    assert.equal(packed.offsets.length, 0);
    assert.equal(packed.timestamps.length, 0);
  });

  test('copies the values: later changes to the source buffers do not leak into the batch', () => {
    const source = Buffer.from(JSON.stringify(event('a', T0)));
    const packed = packRecords([{ offset: 0, timestampMs: NOW, value: source }]);
    source.fill(0x20);
    const result = aggregateBatch(batch([], { ...packed }));
    assert.deepEqual(result.invalid, []);
    assert.deepEqual(partials(result)[0]?.users, ['a']);
  });
});

describe('aggregateBatch: figures per window', () => {
  test('partial user sets and counts per window, page views only for page_view', () => {
    const result = aggregateBatch(
      batch(
        records(
          [
            event('alice', T0 + 1000, PAGE_VIEW),
            event('bob', T0 + 2000, PAGE_VIEW),
            event('alice', T0 + 3000, PAGE_VIEW),
            event('carol', T0 + 4000, 'click'),
            event(42, T1 + 5000, PAGE_VIEW),
            event('alice', new Date(T1 + 6000).toISOString(), 'Page_View'),
          ],
          100,
        ),
      ),
    );
    assert.deepEqual(partials(result), [
      { start: T0, users: ['alice', 'bob', 'carol'], events: 4, pageViews: 3, firstOffset: 100 },
      { start: T1, users: ['42', 'alice'], events: 2, pageViews: 1, firstOffset: 104 },
    ]);
    assert.equal(result.watermarkOut, T1 + 6000);
    assert.deepEqual(result.invalid, []);
    assert.deepEqual(result.late, []);
    assert.equal(result.skipped, 0);
  });

  test('a numeric user id and its decimal string are the same user', () => {
    const result = aggregateBatch(batch(records([event(7, T0), event('7', T0 + 1)])));
    assert.deepEqual(partials(result)[0]?.users, ['7']);
  });

  test('firstOffset is the first counted record of the window, not the first record read', () => {
    const result = aggregateBatch(
      batch(
        records(
          [
            null,
            '{not json',
            event('a', T1 + 1000),
            event('late', T0 + 5, PAGE_VIEW),
            event('b', T0 + LATENESS_MS + WINDOW_MS + 5),
            event('late-again', T0),
          ],
          50,
        ),
        // T0's window was closed by a version that stored no membership: its records are late
        // and never start a window.
        { legacyFinalThrough: T0 },
      ),
    );
    assert.deepEqual(
      partials(result).map((w) => [w.start, w.firstOffset]),
      [[T1, 52]],
    );
    assert.deepEqual(result.late, [3, 5]);
  });

  test('offsets with gaps (compaction, transaction markers) are carried as they are', () => {
    const recs: RawRecord[] = [
      { offset: 10, timestampMs: NOW, value: bytes(event('a', T0)) },
      { offset: 15, timestampMs: NOW, value: bytes(event('b', T0)) },
    ];
    const result = aggregateBatch(batch(recs));
    assert.equal(result.windows[0]?.firstOffset, 10);
  });

  test('an empty batch changes nothing', () => {
    const result = aggregateBatch(batch([], { watermarkIn: T0 }));
    assert.deepEqual(result, {
      windows: [],
      watermarkOut: T0,
      invalid: [],
      late: [],
      skipped: 0,
      duplicates: 0,
      rejected: [],
    });
  });
});

describe('aggregateBatch: events with an event_id', () => {
  const identified = (user: string, timestamp: number, id: string, type = 'click'): object => ({
    user_id: user,
    activity_type: type,
    timestamp,
    event_id: id,
  });

  test('identified events are listed one by one, in offset order, with their user and kind', () => {
    const result = aggregateBatch(
      batch(
        records([
          identified('a', T0, 'e1', PAGE_VIEW),
          event('b', T0 + 1),
          identified('c', T0 + 2, 'e2'),
          identified('a', T1, 'e3', PAGE_VIEW),
        ]),
      ),
    );
    assert.deepEqual(partials(result), [
      {
        start: T0,
        users: ['a', 'b', 'c'],
        events: 3,
        pageViews: 1,
        firstOffset: 0,
        eventIds: ['e1', syntheticEventId(1), 'e2'],
        eventIdUsers: ['a', 'b', 'c'],
        eventIdPageViews: [1, 0, 0],
      },
      {
        start: T1,
        users: ['a'],
        events: 1,
        pageViews: 1,
        firstOffset: 3,
        eventIds: ['e3'],
        eventIdUsers: ['a'],
        eventIdPageViews: [1],
      },
    ]);
    assert.equal(result.duplicates, 0);
  });

  test('a repeated event_id in the same window of a batch is skipped: the first one counts', () => {
    const result = aggregateBatch(
      batch(
        records([
          identified('a', T0, 'e1', PAGE_VIEW),
          identified('a', T0, 'e1', PAGE_VIEW), // a producer retry: the same bytes
          identified('z', T0 + 5, 'e1', 'click'), // a reused id: still the first one counts
          identified('a', T1, 'e1', PAGE_VIEW), // another window: counted there
        ]),
      ),
    );
    assert.equal(result.duplicates, 2);
    assert.deepEqual(
      partials(result).map((w) => [w.start, w.eventIds, w.eventIdUsers, w.eventIdPageViews]),
      [
        [T0, ['e1'], ['a'], [1]],
        [T1, ['e1'], ['a'], [1]],
      ],
    );
  });

  test('a repeated event for a window closed before membership was stored is late, not a duplicate', () => {
    const result = aggregateBatch(
      batch(records([identified('a', T0, 'e1'), identified('a', T0, 'e1')]), {
        legacyFinalThrough: T0,
      }),
    );
    assert.deepEqual(result.late, [0, 1]);
    assert.equal(result.duplicates, 0);
  });
});

describe('aggregateBatch: records that cannot be counted', () => {
  test('each record that cannot be counted comes back with its key and value, for its dead letter', () => {
    const recs = [
      { offset: 10, timestampMs: NOW, key: bytes('k-bad'), value: bytes('{"user_id": ') },
      {
        offset: 11,
        timestampMs: NOW,
        key: bytes('k-ok'),
        value: bytes(JSON.stringify(event('a', T0))),
      },
      { offset: 12, timestampMs: NOW, key: null, value: null },
      {
        offset: 13,
        timestampMs: NOW,
        key: bytes('k-late'),
        value: bytes(JSON.stringify(event('b', T0))),
      },
    ];
    const result = aggregateBatch(batch([], packRecords(recs)));
    assert.deepEqual(result.late, []);
    const rejected = result.rejected.map((r) => [
      r.index,
      r.offset,
      r.key === null ? null : Buffer.from(r.key).toString(),
      r.value === null ? null : Buffer.from(r.value).toString(),
    ]);
    assert.deepEqual(rejected, [
      [0, 10, 'k-bad', '{"user_id": '],
      [2, 12, null, null],
    ]);
  });

  test('a late record comes back with its key and value', () => {
    const late = JSON.stringify(event('b', T0));
    const recs = [
      { offset: 5, timestampMs: NOW, key: null, value: bytes(JSON.stringify(event('a', T1))) },
      { offset: 6, timestampMs: NOW, key: bytes('k-late'), value: bytes(late) },
    ];
    const result = aggregateBatch(batch([], { ...packRecords(recs), legacyFinalThrough: T0 }));
    assert.deepEqual(result.late, [1]);
    assert.deepEqual(
      result.rejected.map((r) => [
        r.index,
        r.offset,
        Buffer.from(r.key ?? []).toString(),
        Buffer.from(r.value ?? []).toString(),
      ]),
      [[1, 6, 'k-late', late]],
    );
  });

  test('null value, invalid UTF-8, invalid JSON and schema violations are invalid, by batch index', () => {
    const result = aggregateBatch(
      batch(
        records(
          [
            null,
            event('ok-1', T0),
            new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]),
            // An overlong encoding of "/" is not UTF-8 either.
            new Uint8Array([0xc0, 0xaf]),
            '"just a string"',
            '[1, 2]',
            { user_id: 'a', activity_type: 'click', timestamp: T0, extra: 1 },
            { activity_type: 'click', timestamp: T0 },
            { user_id: '', activity_type: 'click', timestamp: T0 },
            { user_id: 'a', activity_type: 'click' },
            { user_id: 'a', activity_type: 'click', timestamp: -1 },
            { user_id: 'a', activity_type: 'click', timestamp: 'yesterday' },
            { user_id: 'a'.repeat(129), activity_type: 'click', timestamp: T0 },
            { user_id: 'a\u0000b', activity_type: 'click', timestamp: T0 },
            { user_id: 'a', activity_type: 7, timestamp: T0 },
            '{"user_id": "a", ',
            event('ok-2', T0 + 1),
          ],
          1000,
        ),
      ),
    );
    assert.deepEqual(
      result.invalid.map(({ index, code }) => [index, code]),
      [
        [0, 'empty_record'],
        [2, 'invalid_utf8'],
        [3, 'invalid_utf8'],
        [4, 'not_an_object'],
        [5, 'not_an_object'],
        [6, 'unknown_field'],
        [7, 'missing_field'],
        [8, 'empty_string'],
        [9, 'missing_field'],
        [10, 'invalid_timestamp'],
        [11, 'invalid_timestamp'],
        [12, 'too_long'],
        [13, 'invalid_string'],
        [14, 'invalid_type'],
        [15, 'invalid_json'],
      ],
    );
    assert.deepEqual(partials(result), [
      { start: T0, users: ['ok-1', 'ok-2'], events: 2, pageViews: 0, firstOffset: 1001 },
    ]);
  });

  test('a record that is not JSON is reported as invalid_json (the dead-letter reason ingest also uses)', () => {
    const result = aggregateBatch(batch(records(['{"user_id": "a", ', 'null x', '', '\u00e9'])));
    assert.deepEqual(
      result.invalid.map(({ index, code }) => [index, code]),
      [
        [0, 'invalid_json'],
        [1, 'invalid_json'],
        [2, 'invalid_json'],
        [3, 'invalid_json'],
      ],
    );
  });

  // Written by the helper that fixed invalid_json; kept here, next to the other outcome tests.
  test('records that cannot be counted get the reason a dead letter carries', () => {
    const values: Array<Buffer | null> = [
      Buffer.from('{"user_id":"a","activity_type":'),
      Buffer.from('not json at all'),
      Buffer.from([0x7b, 0xff, 0xfe, 0x7d]),
      null,
      Buffer.from('[1,2]'),
      Buffer.from(JSON.stringify({ user_id: 'a', activity_type: 'click', timestamp: T0, x: 1 })),
      Buffer.from(JSON.stringify({ user_id: 'a', activity_type: 'click', timestamp: 'noon' })),
      Buffer.from(JSON.stringify({ user_id: 'a', activity_type: 'click', timestamp: T0 })),
    ];
    const result = aggregateBatch({
      partition: 0,
      ...packRecords(values.map((value, offset) => ({ offset, timestampMs: T0, value }))),
      windowMs: 60_000,
      maxAgeMs: MAX_AGE_MS,
      watermarkIn: Number.NEGATIVE_INFINITY,
      legacyFinalThrough: Number.NEGATIVE_INFINITY,
      replayThrough: -1,
      replayWindows: new Float64Array(0),
    });
    assert.deepEqual(
      result.invalid.map(({ code }) => code),
      [
        'invalid_json',
        'invalid_json',
        'invalid_utf8',
        'empty_record',
        'not_an_object',
        'unknown_field',
        'invalid_timestamp',
      ],
    );
    assert.deepEqual(
      partials(result).map(({ users, events }) => ({ users, events })),
      [{ users: ['a'], events: 1 }],
    );
  });

  test('an invalid record does not break the decoding of the records after it', () => {
    // The invalid UTF-8 record sits between two valid ones: their byte ranges must still line up.
    const result = aggregateBatch(
      batch(records([event('a', T0), new Uint8Array([0xff]), null, event('b', T0)])),
    );
    assert.deepEqual(
      result.invalid.map((i) => i.code),
      ['invalid_utf8', 'empty_record'],
    );
    assert.deepEqual(partials(result)[0]?.users, ['a', 'b']);
  });

  test('invalid records never move the watermark', () => {
    const result = aggregateBatch(
      batch(records([{ user_id: '', activity_type: 'x', timestamp: T2 }]), { watermarkIn: T0 }),
    );
    assert.equal(result.watermarkOut, T0);
  });
});

describe('aggregateBatch: the watermark, and no event is late', () => {
  test('events for any window are listed, however far behind the watermark: none is late', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0 + 5), event('b', T0 - 2 * 86_400_000)]), {
        watermarkIn: T2 + LATENESS_MS,
      }),
    );
    assert.deepEqual(result.late, []);
    assert.deepEqual(
      partials(result).map((w) => [w.start, w.users]),
      [
        [T0 - 2 * 86_400_000, ['b']],
        [T0, ['a']],
      ],
    );
    assert.equal(result.watermarkOut, T2 + LATENESS_MS, 'older events do not move the watermark');
  });

  test("the watermark follows event time but never passes the record's receive time", () => {
    const received = T1 + 1000;
    const ahead = aggregateBatch(
      batch(records([event('fast-clock', received + 4 * 60_000)], 0, received)),
    );
    assert.deepEqual(ahead.invalid, [], 'four minutes ahead is within the accepted skew');
    assert.equal(ahead.watermarkOut, received);
    const behind = aggregateBatch(batch(records([event('slow-clock', T0 + 7)], 0, received)));
    assert.equal(behind.watermarkOut, T0 + 7);
  });

  test('a record without a Kafka timestamp never moves the watermark', () => {
    const result = aggregateBatch(batch(records([event('a', T1)], 0, -1), { watermarkIn: T0 }));
    assert.equal(result.watermarkOut, T0);
    assert.equal(result.windows.length, 1);
  });

  test('legacyFinalThrough: every window starting at or before it takes no events (late)', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0), event('b', T1 - 1), event('c', T1), event('d', T0 - 1)]), {
        legacyFinalThrough: T0,
      }),
    );
    assert.deepEqual(result.late, [0, 1, 3]);
    assert.deepEqual(
      partials(result).map((w) => w.start),
      [T1],
    );
  });

  test('late events do not move the watermark', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0 + 59_000)]), { watermarkIn: T0, legacyFinalThrough: T0 }),
    );
    assert.equal(result.watermarkOut, T0);
  });

  test('an event older than the accepted age at its receive time is invalid, on every replay too', () => {
    const received = T2;
    const recs = records([event('old', received - 8 * 86_400_000), event('ok', T0)], 0, received);
    const sevenDays = 7 * 86_400_000;
    const first = aggregateBatch(batch(recs, { maxAgeMs: sevenDays }));
    assert.deepEqual(first.invalid, [{ index: 0, code: 'timestamp_too_old' }]);
    assert.deepEqual(partials(first)[0]?.users, ['ok']);
  });

  test('events without an event_id get a synthetic id from their offset, longer than any client id', () => {
    const result = aggregateBatch(batch(records([event('a', T0), event('a', T0)], 41)));
    const ids = unpackStrings((result.windows[0] as BatchResult['windows'][number]).eventIds);
    assert.deepEqual(ids, [syntheticEventId(41), syntheticEventId(42)]);
    assert.ok(ids.every((id) => id.length > 64));
    assert.equal(result.duplicates, 0, 'two events without ids are two events');
  });

  test('windows are aligned to the epoch, including for a window length that does not divide a day', () => {
    assert.equal(windowStartOf(0, 7000), 0);
    assert.equal(windowStartOf(6999, 7000), 0);
    assert.equal(windowStartOf(7000, 7000), 7000);
    const result = aggregateBatch(
      batch(records([event('a', 6999), event('b', 7000)]), {
        windowMs: 7000,
        maxAgeMs: Number.POSITIVE_INFINITY,
      }),
    );
    assert.deepEqual(
      partials(result).map((w) => w.start),
      [0, 7000],
    );
  });
});

describe('aggregateBatch: replay after an assignment', () => {
  const replayWindows = Float64Array.from([T1]);

  test('replayed records count only in the windows being rebuilt; the others are skipped', () => {
    const result = aggregateBatch(
      batch(
        records(
          [
            event('a', T0 + 1), // 10: window T0 is final in PostgreSQL
            event('b', T1 + 1), // 11: rebuilt
            event('c', T1 + 2, PAGE_VIEW), // 12: rebuilt
            event('d', T2 + 1), // 13: window T2 did not exist at the checkpoint
            event('e', T1 + 3), // 14: new record: counted normally
            event('f', T0 + 2), // 15: new record for a closed window: listed, counted later
          ],
          10,
        ),
        {
          replayThrough: 13,
          replayWindows,
          watermarkIn: T1 + 30_000,
        },
      ),
    );
    assert.deepEqual(partials(result), [
      { start: T0, users: ['f'], events: 1, pageViews: 0, firstOffset: 15 },
      { start: T1, users: ['b', 'c', 'e'], events: 3, pageViews: 1, firstOffset: 11 },
    ]);
    assert.equal(result.skipped, 2);
    assert.deepEqual(result.late, []);
    assert.deepEqual(result.invalid, []);
  });

  test('replayed records are never reported as late or invalid again', () => {
    const result = aggregateBatch(
      batch(records([null, '{', event('', T1), event('a', T0), event('b', T1 + 5)], 0), {
        replayThrough: 4,
        replayWindows,
        // T1's window would be final by the watermark: a replayed record of it still counts,
        // because it was counted before the crash.
        watermarkIn: T2 + LATENESS_MS,
        legacyFinalThrough: T0,
      }),
    );
    assert.deepEqual(result.invalid, []);
    assert.deepEqual(result.late, []);
    assert.equal(result.skipped, 4);
    assert.deepEqual(partials(result)[0]?.users, ['b']);
  });

  test('replayed records never move the watermark; the first new record does', () => {
    const replayed = aggregateBatch(
      batch(records([event('a', T1 + 50_000)], 0), {
        replayThrough: 0,
        replayWindows,
        watermarkIn: T1 + 1,
      }),
    );
    assert.equal(replayed.watermarkOut, T1 + 1);
    const fresh = aggregateBatch(
      batch(records([event('a', T1 + 50_000)], 1), {
        replayThrough: 0,
        replayWindows,
        watermarkIn: T1 + 1,
      }),
    );
    assert.equal(fresh.watermarkOut, T1 + 50_000);
  });

  test('the boundary: offset == replayThrough is replayed, replayThrough + 1 is new', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0), event('b', T0)], 7), {
        replayThrough: 7,
        replayWindows,
      }),
    );
    assert.equal(result.skipped, 1);
    assert.deepEqual(partials(result)[0]?.users, ['b']);
  });

  test('a record first rejected for its future timestamp is rejected again when replayed later (the bound is the Kafka timestamp of the record, not the clock)', () => {
    // Appended at NOW: 6 minutes ahead of that is beyond the 5-minute skew allowance.
    const ahead = records([event('from-the-future', NOW + 6 * 60_000)], 0, NOW);
    const first = aggregateBatch(batch(ahead));
    assert.deepEqual(
      first.invalid.map((i) => i.code),
      ['timestamp_in_future'],
    );

    // A crash, then the replay (whenever it happens), rebuilding the open window of that record.
    const window = windowStartOf(NOW + 6 * 60_000, WINDOW_MS);
    const replay = aggregateBatch(
      batch(ahead, { replayThrough: 0, replayWindows: Float64Array.from([window]) }),
    );
    assert.deepEqual(replay.windows, [], 'the replay counted a record that was never counted');
    assert.equal(replay.skipped, 1);
  });

  test('the future bound follows the Kafka timestamp; a record without one is not bounded', () => {
    const sixMinutes = 6 * 60_000;
    const appendedLater = aggregateBatch(
      batch(records([event('a', NOW + sixMinutes)], 0, NOW + sixMinutes)),
    );
    assert.deepEqual(appendedLater.invalid, []);
    assert.deepEqual(
      partials(appendedLater).map((w) => w.users),
      [['a']],
    );
    const noTimestamp = aggregateBatch(batch(records([event('b', NOW + 100 * sixMinutes)], 0, -1)));
    assert.deepEqual(noTimestamp.invalid, []);
  });
});

// ---------------------------------------------------------------------------------------------
// Determinism over seeded random streams.

const P_WINDOW_MS = 10_000;
const P_LATENESS_MS = 4_000;

/**
 * A random partition stream: mostly valid events moving forward in event time, received a moment
 * after they happened, with out-of-order events (some within the lateness, some long after their
 * window closed, some days old), events stamped minutes ahead of their receive time, jumps,
 * offset gaps and every kind of bad record.
 */
function randomStream(seed: number, length: number): RawRecord[] {
  const rand = seededRandom(seed);
  const int = (n: number): number => Math.floor(rand() * n);
  const out: RawRecord[] = [];
  let offset = int(1000);
  let clock = T0 + int(P_WINDOW_MS);
  const users = Array.from({ length: 4 + int(12) }, (_, i) => (i % 5 === 0 ? i : `user-${i}`));
  for (let i = 0; i < length; i++) {
    offset += rand() < 0.1 ? 2 + int(4) : 1;
    const roll = rand();
    let value: Uint8Array | null;
    if (rand() < 0.08) clock += P_WINDOW_MS + int(3 * P_WINDOW_MS);
    else clock += int(1500);
    const received = clock + int(2000);
    if (roll < 0.03) value = null;
    else if (roll < 0.05) value = bytes('{"user_id":');
    else if (roll < 0.07) value = new Uint8Array([0x22, 0xff, 0x22]);
    else if (roll < 0.1) {
      const bad = [
        { user_id: '', activity_type: 'click', timestamp: clock },
        { user_id: 'x', activity_type: 'click' },
        { user_id: 'x', activity_type: 'click', timestamp: clock, other: true },
        { user_id: 'x', activity_type: 'click', timestamp: -5 },
      ];
      value = bytes(bad[int(bad.length)] as object);
    } else {
      let timestamp = clock;
      const disorder = rand();
      if (disorder < 0.25) timestamp = clock - int(P_WINDOW_MS + P_LATENESS_MS);
      else if (disorder < 0.3) timestamp = clock - int(6 * P_WINDOW_MS);
      else if (disorder < 0.33) timestamp = clock - int(2 * 86_400_000);
      else if (disorder < 0.36) timestamp = received + int(4 * 60_000);
      const user = users[int(users.length)] as string | number;
      const type = rand() < 0.4 ? PAGE_VIEW : rand() < 0.5 ? 'click' : 'signup';
      const shaped =
        rand() < 0.1
          ? event(user, new Date(timestamp).toISOString(), type)
          : event(user, timestamp, type);
      // Half the events carry an id from a small pool, so that ids repeat: within a window
      // (counted once) and across windows (counted in each).
      value = bytes(rand() < 0.5 ? { ...shaped, event_id: `e${int(40)}` } : shaped);
    }
    // Now and then a record comes again, byte for byte: a producer retry or a client's resend.
    const previous = out[out.length - 1 - int(8)];
    if (previous !== undefined && rand() < 0.05) value = previous.value;
    out.push({ offset, timestampMs: received, value });
  }
  return out;
}

/** Random cut points: the stream as consecutive batches of 1..maxSize records. */
function randomBatches<T>(items: readonly T[], rand: () => number, maxSize: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; ) {
    const size = 1 + Math.floor(rand() * maxSize);
    out.push(items.slice(i, i + size));
    i += size;
  }
  return out;
}

interface Figures {
  windowStart: number;
  uniqueUsers: number;
  pageViews: number;
  events: number;
  isFinal: boolean;
}

/**
 * The specification, written independently of the implementation: every valid record counts in
 * its own window, once per event id (an event without one is its own event), whenever it comes.
 * The watermark is the highest event time seen, each capped at its record's receive time; a
 * window is final once the watermark reaches its end plus the lateness.
 */
function specification(stream: readonly RawRecord[]) {
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let watermark = Number.NEGATIVE_INFINITY;
  const windows = new Map<number, { users: Set<string>; ids: Set<string>; pv: number }>();
  const invalid: Array<[number, string]> = [];
  for (const record of stream) {
    if (record.value === null) {
      invalid.push([record.offset, 'empty_record']);
      continue;
    }
    let json: unknown;
    try {
      const text = utf8.decode(record.value);
      try {
        json = JSON.parse(text);
      } catch {
        invalid.push([record.offset, 'invalid_json']);
        continue;
      }
    } catch {
      invalid.push([record.offset, 'invalid_utf8']);
      continue;
    }
    const outcome = validateEvent(json, {
      nowMs: record.timestampMs,
      maxAgeMs: MAX_AGE_MS,
      requireTimestamp: true,
    });
    if (!outcome.ok) {
      invalid.push([record.offset, outcome.code]);
      continue;
    }
    const { timestamp, user_id, activity_type, event_id } = outcome.event;
    const start = timestamp - (timestamp % P_WINDOW_MS);
    watermark = Math.max(watermark, Math.min(timestamp, record.timestampMs));
    const w = windows.get(start) ?? { users: new Set(), ids: new Set(), pv: 0 };
    windows.set(start, w);
    const id = event_id ?? `offset ${record.offset}`;
    if (w.ids.has(id)) continue;
    w.ids.add(id);
    w.users.add(user_id);
    if (activity_type === PAGE_VIEW) w.pv++;
  }
  const figures: Figures[] = [...windows]
    .map(([start, w]) => ({
      windowStart: start,
      uniqueUsers: w.users.size,
      pageViews: w.pv,
      events: w.ids.size,
      isFinal: watermark >= start + P_WINDOW_MS + P_LATENESS_MS,
    }))
    .sort((a, b) => a.windowStart - b.windowStart);
  return { figures, invalid, watermark };
}

function figuresOf(rows: Iterable<WindowRow>): Figures[] {
  return [...rows]
    .map(({ windowStart, uniqueUsers, pageViews, events, isFinal }) => ({
      windowStart,
      uniqueUsers,
      pageViews,
      events,
      isFinal,
    }))
    .sort((a, b) => a.windowStart - b.windowStart);
}

/** One batch through the worker logic and into the partition's state, as aggregation.ts does. */
function applyBatch(state: PartitionWindows, recs: readonly RawRecord[]) {
  const result = aggregateBatch(state.batchInput(packRecords(recs)));
  state.merge(result, (recs.at(-1) as RawRecord).offset);
  return {
    late: result.late.map((i) => (recs[i] as RawRecord).offset),
    invalid: result.invalid.map(({ index, code }): [number, string] => [
      (recs[index] as RawRecord).offset,
      code,
    ]),
  };
}

const utf8Decoder = new TextDecoder();

/**
 * One partition's rows, `window_users`, `window_events` and ownership epoch, written the way
 * copy-writer.ts writes a flush (its SQL is tested against PostgreSQL): nothing from an owner
 * whose epoch moved, fenced cumulative rows that never replace a closed one, closing windows by
 * straight copy unless ids are there already, else merged and recounted, events for closed
 * windows counted by what their membership lacks, finals.
 */
class ModelTables {
  readonly rows = new Map<number, WindowRow>();
  readonly users = new Map<number, Set<string>>();
  /** The partition's ownership epoch: `claim` takes the next one. */
  epoch = 0;
  /** Event id → 1 for a page view, per window. */
  readonly events = new Map<number, Map<string, number>>();

  /** Writes a flush as copy-writer.ts does; false when the epoch moved (nothing written). */
  write(flush: PartitionFlush): boolean {
    if (flush.epoch !== this.epoch) return false;
    const refused = (row: WindowRow): boolean => {
      const stored = this.rows.get(row.windowStart);
      return (
        stored !== undefined &&
        (stored.membershipStored || stored.throughOffset > row.throughOffset)
      );
    };
    const closing: number[] = [];
    flush.rows.forEach((row, i) => {
      if (row.membershipStored) closing.push(i);
      else if (!refused(row)) this.rows.set(row.windowStart, this.upserted(row, false));
    });
    const fast = closing.every((i) => {
      const row = flush.rows[i] as WindowRow;
      return !refused(row) && (this.events.get(row.windowStart)?.size ?? 0) === 0;
    });
    const toMerge: number[] = [];
    for (const i of closing) {
      const row = flush.rows[i] as WindowRow;
      if (fast) {
        this.rows.set(row.windowStart, this.upserted(row, true));
        this.addMembership(flush.memberships[i] as PartitionFlush['memberships'][number]);
      } else {
        toMerge.push(i);
      }
    }
    for (const i of toMerge) {
      const row = flush.rows[i] as WindowRow;
      this.addMembership(flush.memberships[i] as PartitionFlush['memberships'][number]);
      const stored = this.rows.get(row.windowStart);
      const events = this.eventsOf(row.windowStart);
      this.rows.set(row.windowStart, {
        ...row,
        uniqueUsers: this.usersOf(row.windowStart).size,
        events: events.size,
        pageViews: [...events.values()].reduce((sum, pv) => sum + pv, 0),
        firstOffset: Math.min(stored?.firstOffset ?? row.firstOffset, row.firstOffset),
        throughOffset: Math.max(stored?.throughOffset ?? -1, row.throughOffset),
        watermark: Math.max(stored?.watermark ?? Number.NEGATIVE_INFINITY, row.watermark),
        isFinal: (stored?.isFinal ?? false) || row.isFinal,
        membershipStored: true,
      });
    }
    for (const pending of flush.closedWindowEvents) {
      const ids = this.eventsOf(pending.windowStart);
      const users = this.usersOf(pending.windowStart);
      let events = 0;
      let newUsers = 0;
      let pageViews = 0;
      for (const part of pending.parts) {
        const partIds = unpackStrings(part.eventIds);
        const partUsers = unpackStrings(part.eventIdUsers);
        partIds.forEach((id, i) => {
          if (ids.has(id)) return;
          const pageView = part.eventIdPageViews[i] as number;
          ids.set(id, pageView);
          events++;
          pageViews += pageView;
          const user = partUsers[i] as string;
          if (!users.has(user)) {
            users.add(user);
            newUsers++;
          }
        });
      }
      const stored = this.rows.get(pending.windowStart);
      // A row still open elsewhere is left to its owner (whose close will merge and recount).
      if (stored !== undefined && !stored.membershipStored) continue;
      this.rows.set(pending.windowStart, {
        windowStart: pending.windowStart,
        windowSeconds: flush.windowSeconds,
        partition: flush.partition,
        site: pending.site,
        timeZone: pending.timeZone,
        uniqueUsers: (stored?.uniqueUsers ?? 0) + newUsers,
        pageViews: (stored?.pageViews ?? 0) + pageViews,
        events: (stored?.events ?? 0) + events,
        firstOffset: Math.min(stored?.firstOffset ?? pending.firstOffset, pending.firstOffset),
        throughOffset: Math.max(stored?.throughOffset ?? -1, flush.throughOffset),
        watermark: Math.max(stored?.watermark ?? Number.NEGATIVE_INFINITY, flush.watermark),
        isFinal: (stored?.isFinal ?? false) || pending.isFinal,
        membershipStored: true,
      });
    }
    for (const start of flush.finals) {
      const stored = this.rows.get(start);
      if (stored === undefined || stored.isFinal) continue;
      this.rows.set(start, {
        ...stored,
        isFinal: true,
        throughOffset: Math.max(stored.throughOffset, flush.throughOffset),
      });
    }
    return true;
  }

  /** Writes a flush and settles it, as aggregation.ts does. */
  commit(state: PartitionWindows, flush: PartitionFlush): void {
    assert.ok(this.write(flush), 'the live instance owns its partition');
    state.settle(flush);
  }

  /** `claimPartition`: the next epoch, and the checkpoint. */
  claim(): PartitionCheckpoint {
    this.epoch++;
    return this.checkpoint();
  }

  private upserted(row: WindowRow, stored: boolean): WindowRow {
    const previous = this.rows.get(row.windowStart);
    return {
      ...row,
      firstOffset: Math.min(previous?.firstOffset ?? row.firstOffset, row.firstOffset),
      membershipStored: stored,
    };
  }

  private addMembership(membership: PartitionFlush['memberships'][number]): void {
    const users = this.usersOf(membership.windowStart);
    const events = this.eventsOf(membership.windowStart);
    membership.users.forEach((arena, start, end) => {
      users.add(utf8Decoder.decode(arena.subarray(start, end)));
    }, membership.userCount);
    let i = 0;
    membership.eventIds.forEach((arena, start, end) => {
      const id = utf8Decoder.decode(arena.subarray(start, end));
      const pageView = membership.pageViews[i++] as number;
      if (!events.has(id)) events.set(id, pageView);
    }, membership.pageViews.length);
  }

  private usersOf(start: number): Set<string> {
    let set = this.users.get(start);
    if (set === undefined) {
      set = new Set();
      this.users.set(start, set);
    }
    return set;
  }

  private eventsOf(start: number): Map<string, number> {
    let map = this.events.get(start);
    if (map === undefined) {
      map = new Map();
      this.events.set(start, map);
    }
    return map;
  }

  /** What `loadCheckpoint` derives from the rows (its SQL is tested against PostgreSQL). */
  checkpoint(): PartitionCheckpoint {
    const rows = [...this.rows.values()];
    const maxStart = (list: WindowRow[]) =>
      Math.max(Number.NEGATIVE_INFINITY, ...list.map((r) => r.windowStart));
    const legacyFinalThrough = maxStart(rows.filter((r) => r.isFinal && !r.membershipStored));
    const open = rows.filter((r) => !r.isFinal && !r.membershipStored);
    const newest = [...rows].sort(
      (a, b) => b.throughOffset - a.throughOffset || b.watermark - a.watermark,
    )[0];
    const common = {
      epoch: this.epoch,
      openWindows: open.map((r) => r.windowStart),
      closedOpenWindows: rows
        .filter((r) => !r.isFinal && r.membershipStored)
        .map((r) => r.windowStart),
      closedThrough: Math.max(maxStart(rows.filter((r) => r.membershipStored)), legacyFinalThrough),
      finalThrough: maxStart(rows.filter((r) => r.isFinal)),
      legacyFinalThrough,
      watermark: newest?.watermark ?? Number.NEGATIVE_INFINITY,
    };
    if (newest === undefined) return { resumeFrom: null, replayFrom: null, ...common };
    const resumeFrom = newest.throughOffset + 1;
    return {
      resumeFrom,
      replayFrom: Math.min(resumeFrom, ...open.map((r) => r.firstOffset)),
      ...common,
    };
  }
}

/** A new partition state, as `Aggregation.assign` makes one. */
function partitionState(checkpoint?: PartitionCheckpoint): PartitionWindows {
  return new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS, MAX_AGE_MS, checkpoint);
}

/** Flushes everything left and checks the tables against the specification. */
function finish(state: PartitionWindows, tables: ModelTables): void {
  for (let i = 0; i < 3; i++) {
    const flush = state.snapshot();
    tables.commit(state, flush);
  }
}

/** SEED=n runs one seed only (to reproduce a failure). */
const SEEDS =
  process.env.SEED === undefined
    ? Array.from({ length: 150 }, (_, i) => 0x5eed + i * 7919)
    : [Number(process.env.SEED)];

describe('determinism: batch boundaries, flushes, early closes and crashes do not change the figures', () => {
  test('the implementation matches the specification on a whole stream in one batch', () => {
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const expected = specification(stream);
      const state = partitionState();
      const outcomes = applyBatch(state, stream);
      const tables = new ModelTables();
      finish(state, tables);
      assert.deepEqual(figuresOf(tables.rows.values()), expected.figures, `seed ${seed}`);
      assert.deepEqual(outcomes.late, [], `seed ${seed}: late`);
      assert.deepEqual(outcomes.invalid, expected.invalid, `seed ${seed}: invalid`);
      assert.equal(state.watermark, expected.watermark, `seed ${seed}: watermark`);
    }
  });

  test('batches of any size, flushed at any point, windows closed early for memory: the same table', () => {
    let closedEarly = 0;
    let failedWrites = 0;
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const expected = specification(stream);
      const rand = seededRandom(seed ^ 0xb10c);
      for (const maxSize of [1, 3, 17, stream.length]) {
        const state = partitionState();
        const tables = new ModelTables();
        const invalid: Array<[number, string]> = [];
        // A flush snapshots, then writes while later batches are still merged (aggregation.ts
        // does not stop consuming during a write), then settles what it wrote — or fails, and
        // its events for closed windows go back for the next one.
        let inFlight: PartitionFlush | undefined;
        for (const part of randomBatches(stream, rand, maxSize)) {
          invalid.push(...applyBatch(state, part).invalid);
          const roll = rand();
          if (roll < 0.1) {
            const live = state.liveWindows();
            const oldest = live[Math.floor(rand() * live.length)];
            if (oldest !== undefined) {
              state.closeThrough(oldest.start);
              closedEarly++;
            }
          }
          if (inFlight !== undefined && roll < 0.5) {
            if (rand() < 0.1) {
              state.restore(inFlight);
              failedWrites++;
            } else {
              tables.commit(state, inFlight);
            }
            inFlight = undefined;
          } else if (inFlight === undefined && roll < 0.4) {
            inFlight = state.snapshot();
          }
        }
        if (inFlight !== undefined) tables.commit(state, inFlight);
        finish(state, tables);
        const what = `seed ${seed}, batches of at most ${maxSize}`;
        assert.deepEqual(figuresOf(tables.rows.values()), expected.figures, what);
        assert.deepEqual(invalid, expected.invalid, `${what}: invalid`);
        assert.equal(state.watermark, expected.watermark, what);
        assert.ok(
          state.openWindows <= expected.figures.filter((f) => !f.isFinal).length,
          `${what}: every final window left memory`,
        );
      }
    }
    assert.ok(closedEarly > SEEDS.length, `only ${closedEarly} early closes`);
    assert.ok(failedWrites > 10, `only ${failedWrites} failed writes`);
  });

  test('crashes at random points, recovered by replaying from the checkpoint, leave the same table', () => {
    let replays = 0;
    let zombies = 0;
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const expected = specification(stream).figures;
      const rand = seededRandom(seed ^ 0xc4a5);
      const tables = new ModelTables();
      let state = partitionState();
      let position = 0;
      let crashes = 0;
      /** A flush being written by the live instance. */
      let inFlight: PartitionFlush | undefined;
      /** A flush of a dead (stalled) instance whose write lands later: the fence must hold. */
      let zombie: PartitionFlush | undefined;
      const history: string[] = [];
      while (position < stream.length) {
        const size = 1 + Math.floor(rand() * 15);
        const part = stream.slice(position, position + size);
        applyBatch(state, part);
        position += part.length;
        history.push(`batch ${part[0]?.offset}..${part.at(-1)?.offset}`);
        if (zombie !== undefined && rand() < 0.3) {
          assert.equal(tables.write(zombie), false, 'a stale instance writes nothing');
          history.push(`stale write through ${zombie.throughOffset}, refused`);
          zombie = undefined;
          zombies++;
        }
        const roll = rand();
        if (roll < 0.08) {
          const oldest = state.liveWindows()[0];
          if (oldest !== undefined) state.closeThrough(oldest.start);
        }
        if (inFlight !== undefined && roll < 0.4) {
          tables.commit(state, inFlight);
          history.push(`flush through ${inFlight.throughOffset}`);
          inFlight = undefined;
        } else if (inFlight === undefined && roll < 0.4) {
          inFlight = state.snapshot();
        } else if (roll > 0.85 && crashes < 6) {
          // The process dies: memory is lost, the next owner starts from PostgreSQL. A write in
          // flight either committed before the death, never did, or lands later.
          crashes++;
          if (inFlight !== undefined) {
            const fate = rand();
            if (fate < 0.33) assert.ok(tables.write(inFlight));
            else if (fate < 0.66 && zombie === undefined) zombie = inFlight;
            inFlight = undefined;
          }
          const checkpoint = tables.claim();
          if (checkpoint.openWindows.length > 0) replays++;
          state = partitionState(checkpoint);
          const from = checkpoint.replayFrom;
          position = from === null ? 0 : stream.findIndex((r) => r.offset >= from);
          if (position < 0) position = stream.length;
          history.push(`crash; resume at ${JSON.stringify(checkpoint)}`);
        }
      }
      if (zombie !== undefined) assert.equal(tables.write(zombie), false);
      if (inFlight !== undefined) tables.commit(state, inFlight);
      finish(state, tables);
      assert.deepEqual(
        figuresOf(tables.rows.values()),
        expected,
        `seed ${seed}: ${history.join(' / ')}`,
      );
    }
    // The streams must actually exercise what this test is about.
    assert.ok(replays > SEEDS.length / 2, `only ${replays} recoveries rebuilt open windows`);
    assert.ok(zombies > 10, `only ${zombies} stale writes`);
  });
});

test('the result of a batch survives structured cloning unchanged (the worker boundary)', () => {
  const result = aggregateBatch(
    batch(records([event('a', T0), null, event('b', T1), '{'], 0), {
      watermarkIn: Number.NEGATIVE_INFINITY,
    }),
  );
  assert.deepEqual(structuredClone(result), result);
});
