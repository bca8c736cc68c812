/**
 * The worker's per-batch logic (`aggregateBatch`, `packRecords`): outcomes per record, window
 * partials, lateness, replay, and the property exactly-once rests on: the figures depend only on
 * the records and the partition state, never on where batches begin and end, on flushes, or on
 * crashes followed by a replay from the checkpoint.
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
  windowStartOf,
} from './batch-aggregator.js';
import { unpackStrings } from './packed-strings.js';
import type { PartitionCheckpoint } from './partition-recovery.js';
import { PartitionWindows, type WindowRow } from './window-state.js';

const WINDOW_MS = 60_000;
const LATENESS_MS = 10_000;
/** A window start: 2024-05-01T12:00:00Z. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const T1 = T0 + WINDOW_MS;
const T2 = T1 + WINDOW_MS;
/** Far after every event time used here: the schema's future-timestamp bound never applies. */
const NOW = T0 + 30 * 86_400_000;

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
    allowedLatenessMs: LATENESS_MS,
    watermarkIn: Number.NEGATIVE_INFINITY,
    finalThrough: Number.NEGATIVE_INFINITY,
    replayThrough: -1,
    replayWindows: new Float64Array(0),
    ...state,
  };
}

/**
 * Partials sorted by window start, users sorted: comparable with deepEqual. The per-event lists
 * of identified events are left out when empty (most tests send events without `event_id`).
 */
function partials(result: BatchResult) {
  return result.windows
    .map(({ eventIds, eventIdUsers, eventIdPageViews, ...w }) => ({
      ...w,
      users: unpackStrings(w.users).sort(),
      ...(eventIds.ends.length === 0
        ? {}
        : {
            eventIds: unpackStrings(eventIds),
            eventIdUsers: unpackStrings(eventIdUsers),
            eventIdPageViews: [...eventIdPageViews],
          }),
    }))
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
        // T0's window is already final: its records are late and never start a window.
        { finalThrough: T0 },
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
        users: ['b'],
        events: 1,
        pageViews: 0,
        firstOffset: 0,
        eventIds: ['e1', 'e2'],
        eventIdUsers: ['a', 'c'],
        eventIdPageViews: [1, 0],
      },
      {
        start: T1,
        users: [],
        events: 0,
        pageViews: 0,
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

  test('a repeated event for a final window is late, not a duplicate', () => {
    const result = aggregateBatch(
      batch(records([identified('a', T0, 'e1'), identified('a', T0, 'e1')]), {
        finalThrough: T0,
      }),
    );
    assert.deepEqual(result.late, [0, 1]);
    assert.equal(result.duplicates, 0);
  });
});

describe('aggregateBatch: records that cannot be counted', () => {
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
      allowedLatenessMs: 0,
      watermarkIn: Number.NEGATIVE_INFINITY,
      finalThrough: Number.NEGATIVE_INFINITY,
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

describe('aggregateBatch: lateness', () => {
  const closesT0 = T0 + WINDOW_MS + LATENESS_MS;

  test('watermark exactly at window end plus the allowed lateness: the window is final, its records late', () => {
    const result = aggregateBatch(batch(records([event('a', T0 + 5)]), { watermarkIn: closesT0 }));
    assert.deepEqual(result.late, [0]);
    assert.deepEqual(result.windows, []);
    assert.equal(result.watermarkOut, closesT0);
  });

  test('one millisecond less: the window is open and the record counts', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0 + WINDOW_MS - 1)]), { watermarkIn: closesT0 - 1 }),
    );
    assert.deepEqual(result.late, []);
    assert.equal(result.windows[0]?.events, 1);
    assert.equal(result.watermarkOut, closesT0 - 1, 'an older event does not move the watermark');
  });

  test('the same boundary holds when the watermark moves inside the batch', () => {
    const result = aggregateBatch(
      batch(
        records([
          event('a', T0),
          event('b', closesT0 - 1),
          event('c', T0 + 1), // counted: the watermark is 1 ms short
          event('d', closesT0),
          event('e', T0 + 2), // late: the watermark reached the boundary
        ]),
      ),
    );
    assert.deepEqual(result.late, [4]);
    assert.deepEqual(partials(result)[0], {
      start: T0,
      users: ['a', 'c'],
      events: 2,
      pageViews: 0,
      firstOffset: 0,
    });
  });

  test('an out-of-order event is counted while the watermark has not passed its window', () => {
    const result = aggregateBatch(
      batch(
        records([
          event('a', T0 + 50_000),
          event('b', T0 + 5_000), // out of order, window still open
          event('c', T1 + LATENESS_MS), // closes T0
          event('d', T0 + 6_000), // now late
          event('e', T1 + 1), // out of order, T1 still open
        ]),
      ),
    );
    assert.deepEqual(result.late, [3]);
    assert.equal(result.watermarkOut, T1 + LATENESS_MS);
    assert.deepEqual(
      partials(result).map((w) => [w.start, w.users]),
      [
        [T0, ['a', 'b']],
        [T1, ['c', 'e']],
      ],
    );
  });

  test('finalThrough: every window starting at or before it is final, whatever the watermark', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0), event('b', T1 - 1), event('c', T1), event('d', T0 - 1)]), {
        finalThrough: T0,
        watermarkIn: Number.NEGATIVE_INFINITY,
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
      batch(records([event('a', T0 + 59_000)]), { watermarkIn: T2, finalThrough: T0 }),
    );
    assert.equal(result.watermarkOut, T2);
  });

  test('with no allowed lateness the first event of the next window closes the previous one', () => {
    const result = aggregateBatch(
      batch(records([event('a', T0), event('b', T1), event('c', T1 - 1)]), {
        allowedLatenessMs: 0,
      }),
    );
    assert.deepEqual(result.late, [2]);
  });

  test('windows are aligned to the epoch, including for a window length that does not divide a day', () => {
    assert.equal(windowStartOf(0, 7000), 0);
    assert.equal(windowStartOf(6999, 7000), 0);
    assert.equal(windowStartOf(7000, 7000), 7000);
    const result = aggregateBatch(
      batch(records([event('a', 6999), event('b', 7000)]), { windowMs: 7000 }),
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
            event('f', T0 + 2), // 15: new record for a final window: late
          ],
          10,
        ),
        {
          replayThrough: 13,
          replayWindows,
          finalThrough: T0,
          watermarkIn: T1 + 30_000,
        },
      ),
    );
    assert.deepEqual(partials(result), [
      { start: T1, users: ['b', 'c', 'e'], events: 3, pageViews: 1, firstOffset: 11 },
    ]);
    assert.equal(result.skipped, 2);
    assert.deepEqual(result.late, [5]);
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
        finalThrough: T0,
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
 * A random partition stream: mostly valid events moving forward in event time, with out-of-order
 * events (some within the lateness, some late), jumps, offset gaps and every kind of bad record.
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
      if (rand() < 0.08) clock += P_WINDOW_MS + int(3 * P_WINDOW_MS);
      else clock += int(1500);
      let timestamp = clock;
      const disorder = rand();
      if (disorder < 0.25) timestamp = clock - int(P_WINDOW_MS + P_LATENESS_MS);
      else if (disorder < 0.3) timestamp = clock - int(6 * P_WINDOW_MS);
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
    // Now and then a record comes again, byte for byte: a producer retry.
    const previous = out[out.length - 1 - int(8)];
    if (previous !== undefined && rand() < 0.05) value = previous.value;
    out.push({ offset, timestampMs: NOW, value });
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
  firstOffset: number;
  isFinal: boolean;
}

/**
 * The specification, written independently of the implementation: one record at a time, a
 * record is late when its window ends (plus lateness) at or before the highest event time seen.
 */
function specification(stream: readonly RawRecord[]) {
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let watermark = Number.NEGATIVE_INFINITY;
  const windows = new Map<
    number,
    { users: Set<string>; ids: Set<string>; events: number; pv: number; first: number }
  >();
  const late: number[] = [];
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
    const outcome = validateEvent(json, { nowMs: NOW, maxAgeMs: null, requireTimestamp: true });
    if (!outcome.ok) {
      invalid.push([record.offset, outcome.code]);
      continue;
    }
    const { timestamp, user_id, activity_type, event_id } = outcome.event;
    const start = timestamp - (timestamp % P_WINDOW_MS);
    if (watermark >= start + P_WINDOW_MS + P_LATENESS_MS) {
      late.push(record.offset);
      continue;
    }
    watermark = Math.max(watermark, timestamp);
    const w = windows.get(start) ?? {
      users: new Set(),
      ids: new Set(),
      events: 0,
      pv: 0,
      first: record.offset,
    };
    windows.set(start, w);
    // An event whose id its window has counted already is not counted again.
    if (event_id !== undefined) {
      if (w.ids.has(event_id)) continue;
      w.ids.add(event_id);
    }
    w.users.add(user_id);
    w.events++;
    if (activity_type === PAGE_VIEW) w.pv++;
  }
  const figures: Figures[] = [...windows]
    .map(([start, w]) => ({
      windowStart: start,
      uniqueUsers: w.users.size,
      pageViews: w.pv,
      events: w.events,
      firstOffset: w.first,
      isFinal: watermark >= start + P_WINDOW_MS + P_LATENESS_MS,
    }))
    .sort((a, b) => a.windowStart - b.windowStart);
  return { figures, late, invalid, watermark };
}

function figuresOf(rows: readonly WindowRow[]): Figures[] {
  return rows
    .map(({ windowStart, uniqueUsers, pageViews, events, firstOffset, isFinal }) => ({
      windowStart,
      uniqueUsers,
      pageViews,
      events,
      firstOffset,
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

/** `user_activity_metrics` of one partition, with the fenced upsert of copy-writer.ts. */
class FencedTable {
  readonly rows = new Map<number, WindowRow>();

  write(rows: readonly WindowRow[]): void {
    for (const row of rows) {
      const stored = this.rows.get(row.windowStart);
      if (stored !== undefined && stored.throughOffset > row.throughOffset) continue;
      this.rows.set(row.windowStart, {
        ...row,
        firstOffset: Math.min(stored?.firstOffset ?? row.firstOffset, row.firstOffset),
      });
    }
  }

  /** What `loadCheckpoint` derives from the rows (its SQL is tested against PostgreSQL). */
  checkpoint(): PartitionCheckpoint {
    const rows = [...this.rows.values()];
    const open = rows.filter((r) => !r.isFinal);
    if (rows.length === 0) {
      return {
        resumeFrom: null,
        replayFrom: null,
        openWindows: [],
        finalThrough: Number.NEGATIVE_INFINITY,
        watermark: Number.NEGATIVE_INFINITY,
      };
    }
    const resumeFrom = Math.max(...rows.map((r) => r.throughOffset)) + 1;
    return {
      resumeFrom,
      replayFrom: Math.min(resumeFrom, ...open.map((r) => r.firstOffset)),
      openWindows: open.map((r) => r.windowStart),
      finalThrough: Math.max(
        Number.NEGATIVE_INFINITY,
        ...rows.filter((r) => r.isFinal).map((r) => r.windowStart),
      ),
      watermark: Math.max(...rows.map((r) => r.watermark)),
    };
  }
}

const SEEDS = Array.from({ length: 150 }, (_, i) => 0x5eed + i * 7919);

describe('determinism: batch boundaries, flushes and crashes do not change the figures', () => {
  test('the implementation matches the specification on a whole stream in one batch', () => {
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const expected = specification(stream);
      const state = new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS);
      const outcomes = applyBatch(state, stream);
      const rows = state.snapshotDirty();
      assert.deepEqual(figuresOf(rows), expected.figures, `seed ${seed}`);
      assert.deepEqual(outcomes.late, expected.late, `seed ${seed}: late`);
      assert.deepEqual(outcomes.invalid, expected.invalid, `seed ${seed}: invalid`);
      for (const row of rows) {
        assert.equal(row.throughOffset, (stream.at(-1) as RawRecord).offset, `seed ${seed}`);
        assert.equal(row.watermark, expected.watermark, `seed ${seed}`);
      }
    }
  });

  test('splitting the stream into batches at any boundaries gives identical rows and outcomes', () => {
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const whole = new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS);
      const wholeOutcomes = applyBatch(whole, stream);
      const expected = whole.snapshotDirty();

      const rand = seededRandom(seed ^ 0xb10c);
      for (const maxSize of [1, 3, 17, stream.length]) {
        const split = new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS);
        const late: number[] = [];
        const invalid: Array<[number, string]> = [];
        for (const part of randomBatches(stream, rand, maxSize)) {
          const outcome = applyBatch(split, part);
          late.push(...outcome.late);
          invalid.push(...outcome.invalid);
        }
        const rows = split.snapshotDirty();
        const what = `seed ${seed}, batches of at most ${maxSize}`;
        assert.deepEqual(
          [...rows].sort((a, b) => a.windowStart - b.windowStart),
          [...expected].sort((a, b) => a.windowStart - b.windowStart),
          what,
        );
        assert.deepEqual(late, wholeOutcomes.late, `${what}: late`);
        assert.deepEqual(invalid, wholeOutcomes.invalid, `${what}: invalid`);
        assert.equal(split.watermark, whole.watermark, what);
        assert.equal(split.finalThrough, whole.finalThrough, what);
      }
    }
  });

  test('flushing at random points leaves the same table as one flush at the end', () => {
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const expected = specification(stream).figures;
      const rand = seededRandom(seed ^ 0xf1);
      const state = new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS);
      const table = new FencedTable();
      // A flush snapshots, then writes while later batches are still merged (aggregation.ts does
      // not stop consuming during a write), then settles what it wrote.
      let inFlight: WindowRow[] | undefined;
      for (const part of randomBatches(stream, rand, 20)) {
        applyBatch(state, part);
        const roll = rand();
        if (inFlight !== undefined && roll < 0.5) {
          table.write(inFlight);
          state.settle(inFlight);
          inFlight = undefined;
        } else if (inFlight === undefined && roll < 0.4) {
          inFlight = state.snapshotDirty();
        }
      }
      if (inFlight !== undefined) {
        table.write(inFlight);
        state.settle(inFlight);
      }
      const rows = state.snapshotDirty();
      table.write(rows);
      state.settle(rows);
      assert.deepEqual(figuresOf([...table.rows.values()]), expected, `seed ${seed}`);
      assert.deepEqual(state.snapshotDirty(), [], `seed ${seed}: nothing left dirty`);
    }
  });

  test('crashes at random points, recovered by replaying from the checkpoint, leave the same table', () => {
    let replays = 0;
    let zombies = 0;
    for (const seed of SEEDS) {
      const stream = randomStream(seed, 40 + (seed % 200));
      const expected = specification(stream).figures;
      const rand = seededRandom(seed ^ 0xc4a5);
      const table = new FencedTable();
      let state = new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS);
      let position = 0;
      let crashes = 0;
      /** A snapshot being written by the live instance. */
      let inFlight: WindowRow[] | undefined;
      /** A snapshot of a dead (stalled) instance whose write lands later: the fence must hold. */
      let zombie: WindowRow[] | undefined;
      const history: string[] = [];
      while (position < stream.length) {
        const size = 1 + Math.floor(rand() * 15);
        const part = stream.slice(position, position + size);
        applyBatch(state, part);
        position += part.length;
        history.push(`batch ${part[0]?.offset}..${part.at(-1)?.offset}`);
        if (zombie !== undefined && rand() < 0.3) {
          table.write(zombie);
          history.push(`stale write through ${zombie[0]?.throughOffset}`);
          zombie = undefined;
          zombies++;
        }
        const roll = rand();
        if (inFlight !== undefined && roll < 0.4) {
          table.write(inFlight);
          state.settle(inFlight);
          history.push(`flush ${inFlight.length} rows through ${inFlight[0]?.throughOffset}`);
          inFlight = undefined;
        } else if (inFlight === undefined && roll < 0.4) {
          inFlight = state.snapshotDirty();
          if (inFlight.length === 0) inFlight = undefined;
        } else if (roll > 0.85 && crashes < 6) {
          // The process dies: memory is lost, the next owner starts from PostgreSQL. A write in
          // flight either committed before the death, never did, or lands later.
          crashes++;
          if (inFlight !== undefined) {
            const fate = rand();
            if (fate < 0.33) table.write(inFlight);
            else if (fate < 0.66 && zombie === undefined) zombie = inFlight;
            inFlight = undefined;
          }
          const checkpoint = table.checkpoint();
          if (checkpoint.openWindows.length > 0) replays++;
          state = new PartitionWindows(0, P_WINDOW_MS, P_LATENESS_MS, checkpoint);
          const from = checkpoint.replayFrom;
          position = from === null ? 0 : stream.findIndex((r) => r.offset >= from);
          if (position < 0) position = stream.length;
          history.push(`crash; resume at ${JSON.stringify(checkpoint)}`);
        }
      }
      if (zombie !== undefined) table.write(zombie);
      if (inFlight !== undefined) {
        table.write(inFlight);
        state.settle(inFlight);
      }
      const rows = state.snapshotDirty();
      table.write(rows);
      state.settle(rows);
      assert.deepEqual(
        figuresOf([...table.rows.values()]),
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
