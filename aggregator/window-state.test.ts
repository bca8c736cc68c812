/**
 * PartitionWindows: windows in memory, when they close, what a flush writes for them, and what
 * happens to events for windows that closed. The whole-stream properties (random batches,
 * flushes, early closes, crashes against a model of the tables) are in batch-aggregator.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { aggregateBatch, packRecords, windowStartOf } from './batch-aggregator.js';
import { unpackStrings } from './packed-strings.js';
import { type PartitionFlush, PartitionWindows, type WindowRow } from './window-state.js';

const WINDOW_MS = 60_000;
const LATENESS_MS = 10_000;
const MAX_AGE_MS = 7 * 86_400_000;
/** A window start: 2024-05-01T12:00:00Z. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const T1 = T0 + WINDOW_MS;
const T2 = T1 + WINDOW_MS;

function windows(latenessMs = LATENESS_MS): PartitionWindows {
  return new PartitionWindows(3, WINDOW_MS, latenessMs, MAX_AGE_MS);
}

function click(user: string, timestamp: number, activityType = 'click', eventId?: string) {
  return {
    user_id: user,
    activity_type: activityType,
    timestamp,
    ...(eventId === undefined ? {} : { event_id: eventId }),
  };
}

/**
 * Applies one event at `offset` the way the aggregator does (worker logic, then merge),
 * received when it happened unless `receivedMs` says otherwise. Says where it went.
 */
function applyEvent(
  state: PartitionWindows,
  event: ReturnType<typeof click>,
  offset: number,
  receivedMs = event.timestamp,
): 'in memory' | 'closed window' | 'duplicate' {
  const packed = packRecords([
    { offset, timestampMs: receivedMs, value: Buffer.from(JSON.stringify(event)) },
  ]);
  const result = aggregateBatch(state.batchInput(packed));
  assert.deepEqual(result.invalid, []);
  assert.deepEqual(result.late, []);
  const merged = state.merge(result, offset);
  if (merged.closed > 0) return 'closed window';
  return merged.duplicates > 0 ? 'duplicate' : 'in memory';
}

/** Applies events at consecutive offsets starting from `firstOffset`. */
function applyAll(
  state: PartitionWindows,
  events: ReadonlyArray<ReturnType<typeof click>>,
  firstOffset: number,
): string[] {
  return events.map((event, i) => applyEvent(state, event, firstOffset + i));
}

/** Records that `offset` was consumed without counting anything (an invalid record). */
function advance(state: PartitionWindows, offset: number): void {
  state.merge(
    {
      windows: [],
      watermarkOut: Number.NEGATIVE_INFINITY,
      invalid: [],
      late: [],
      skipped: 0,
      duplicates: 0,
      rejected: [],
    },
    offset,
  );
}

/** The rows the next flush would write, by window start (the snapshot is handed back). */
function rowsByStart(state: PartitionWindows): Map<number, WindowRow> {
  const flush = state.snapshot();
  state.restore(flush);
  return new Map(flush.rows.map((row) => [row.windowStart, row]));
}

function onlyRow(state: PartitionWindows, windowStart: number): WindowRow {
  const row = rowsByStart(state).get(windowStart);
  assert.ok(row !== undefined, `no row to write for window ${new Date(windowStart).toISOString()}`);
  return row;
}

/** A flush that succeeds: snapshot, (write), settle. */
function flush(state: PartitionWindows): PartitionFlush {
  const written = state.snapshot();
  state.settle(written);
  return written;
}

describe('PartitionWindows: window assignment', () => {
  test('windows are aligned to the epoch, not to the first event', () => {
    assert.equal(windowStartOf(0, 7000), 0);
    assert.equal(windowStartOf(6999, 7000), 0);
    assert.equal(windowStartOf(7000, 7000), 7000);
    assert.equal(windowStartOf(10_000, 7000), 7000);
    assert.equal(windowStartOf(T0 + 123, 7000), T0 + 123 - ((T0 + 123) % 7000));
  });

  test('a timestamp exactly on a boundary starts the next window', () => {
    const state = windows();
    applyAll(state, [click('a', T1 - 1), click('b', T1)], 0);
    const rows = rowsByStart(state);
    assert.deepEqual([...rows.keys()].sort(), [T0, T1]);
    assert.equal(rows.get(T0)?.events, 1);
    assert.equal(rows.get(T1)?.events, 1);
  });
});

describe('PartitionWindows: figures', () => {
  test('unique users are exact: repeated users count once per window', () => {
    const state = windows();
    applyAll(
      state,
      ['a', 'b', 'a', 'c', 'b', 'a'].map((user, i) => click(user, T0 + i * 1000)),
      0,
    );
    const row = onlyRow(state, T0);
    assert.equal(row.uniqueUsers, 3);
    assert.equal(row.events, 6);
    assert.equal(state.heldUsers, 3);
    assert.equal(state.heldEventIds, 6, 'events without an id are held by their synthetic id');
  });

  test('user ids are compared exactly: case and whitespace make different users', () => {
    const state = windows();
    applyAll(state, [click('Ann', T0), click('ann', T0), click('ann ', T0)], 0);
    assert.equal(onlyRow(state, T0).uniqueUsers, 3);
  });

  test('the same user in two windows counts in each', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('a', T1)], 0);
    assert.equal(onlyRow(state, T0).uniqueUsers, 1);
    assert.equal(onlyRow(state, T1).uniqueUsers, 1);
  });

  test('only activity_type page_view counts as a page view', () => {
    const state = windows();
    applyAll(
      state,
      ['page_view', 'click', 'page_view', 'Page_View', 'page_view ', 'pageview'].map((type) =>
        click('a', T0, type),
      ),
      0,
    );
    const row = onlyRow(state, T0);
    assert.equal(row.pageViews, 2);
    assert.equal(row.events, 6);
  });

  test('rows carry the window length in seconds and the partition', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    const row = onlyRow(state, T0);
    assert.equal(row.windowSeconds, 60);
    assert.equal(row.partition, 3);
  });

  test('an event_id counted in an earlier batch is not counted again; in another window it is', () => {
    const state = windows();
    assert.equal(applyEvent(state, click('a', T0, 'page_view', 'e1'), 0), 'in memory');
    assert.equal(applyEvent(state, click('a', T0, 'page_view', 'e1'), 1), 'duplicate');
    assert.equal(applyEvent(state, click('a', T1, 'page_view', 'e1'), 2), 'in memory');
    assert.equal(onlyRow(state, T0).events, 1);
    assert.equal(onlyRow(state, T1).events, 1);
  });
});

describe('PartitionWindows: finality and closing', () => {
  test('a window becomes final, and closes, once the watermark reaches its end plus the lateness', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    applyEvent(state, click('b', T1 + LATENESS_MS - 1), 1);
    assert.equal(onlyRow(state, T0).isFinal, false);
    applyEvent(state, click('c', T1 + LATENESS_MS), 2);
    const row = onlyRow(state, T0);
    assert.deepEqual([row.isFinal, row.membershipStored], [true, true]);
    assert.equal(onlyRow(state, T1).isFinal, false);
    assert.equal(state.finalThrough, T0);
    assert.equal(state.closedThrough, T0);
  });

  test('a closing window is written with its users and event ids, then leaves memory', () => {
    const state = windows();
    applyAll(
      state,
      [click('a', T0, 'click', 'e1'), click('b', T0), click('c', T1 + LATENESS_MS)],
      0,
    );
    const written = flush(state);
    const closing = written.memberships
      .filter((_, i) => written.rows[i]?.membershipStored)
      .map((m) => {
        const users: string[] = [];
        m.users.forEach((arena, start, end) => {
          users.push(Buffer.from(arena.subarray(start, end)).toString());
        });
        return { start: m.windowStart, users: users.sort(), ids: m.eventIds.size };
      });
    assert.deepEqual(closing, [{ start: T0, users: ['a', 'b'], ids: 2 }]);
    assert.equal(state.openWindows, 1, 'only T1 stays in memory');
    assert.deepEqual(state.snapshot().rows, [], 'nothing left to write');
  });

  test('an event for a closed window is kept for the flush, never late, and the window stays closed', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1 + LATENESS_MS)], 0);
    flush(state);
    assert.equal(applyEvent(state, click('c', T0 + 10, 'page_view', 'late-1'), 2), 'closed window');
    assert.equal(applyEvent(state, click('d', T0 - 2 * 86_400_000), 3, T1), 'closed window');
    assert.equal(state.openWindows, 1, 'no closed window came back into memory');
    assert.equal(state.heldEventIds, 1 + 2, 'T1 in memory, and the two events waiting');
    const written = flush(state);
    assert.deepEqual(
      written.closedWindowEvents.map((e) => [e.windowStart, e.events, e.isFinal]),
      [
        [T0, 1, true],
        [T0 - 2 * 86_400_000, 1, true],
      ],
    );
    const part = written.closedWindowEvents[0]?.parts[0];
    assert.deepEqual(
      unpackStrings(
        part?.eventIds ?? {
          bytes: new Uint8Array(),
          ends: new Uint32Array(),
          hashes: new Uint32Array(),
        },
      ),
      ['late-1'],
    );
    assert.equal(state.heldEventIds, 1, 'handed to the flush');
  });

  test('events for closed windows go back for the next flush when a write fails', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1 + LATENESS_MS)], 0);
    flush(state);
    applyEvent(state, click('c', T0 + 10), 2);
    const failed = state.snapshot();
    applyEvent(state, click('d', T0 + 20), 3);
    state.restore(failed);
    assert.equal(state.heldEventIds, 1 + 2);
    const retried = flush(state);
    assert.equal(retried.closedWindowEvents[0]?.events, 2);
    assert.equal(retried.closedWindowEvents.length, 1);
  });

  test("a future-stamped event opens its own window but closes no one else's", () => {
    const state = windows();
    applyEvent(state, click('early', T0 + 5_000), 0);
    // Stamped 4 minutes ahead of when it was received.
    applyEvent(state, click('fast-clock', T0 + 6_000 + 4 * WINDOW_MS), 1, T0 + 6_000);
    assert.equal(state.watermark, T0 + 6_000);
    assert.equal(applyEvent(state, click('on-time', T0 + 7_000), 2), 'in memory');
    assert.ok(state.closedThrough < T0);
  });

  test('an out-of-order event does not move the watermark back', () => {
    const state = windows();
    applyEvent(state, click('a', T2 + LATENESS_MS), 0);
    assert.equal(applyEvent(state, click('b', T2), 1), 'in memory');
    assert.equal(state.watermark, T2 + LATENESS_MS);
    assert.equal(applyEvent(state, click('c', T1), 2), 'closed window');
  });

  test('closeThrough closes every window in memory up to a start; later events take the closed path', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1), click('c', T2)], 0);
    state.closeThrough(T1);
    assert.equal(state.closedThrough, T1);
    const rows = rowsByStart(state);
    assert.deepEqual(
      [...rows.values()].map((r) => [r.windowStart, r.membershipStored, r.isFinal]),
      [
        [T0, true, true], // the watermark (T2) is past T0's end plus the lateness
        [T1, true, false],
        [T2, false, false],
      ],
    );
    flush(state);
    assert.equal(state.openWindows, 1);
    assert.equal(applyEvent(state, click('d', T0), 3), 'closed window');
    // The closed window's row becomes final when the watermark passes it.
    applyEvent(state, click('e', T2 + LATENESS_MS), 4);
    assert.deepEqual(flush(state).finals, [T1]);
    assert.deepEqual(flush(state).finals, [], 'written once');
  });

  test('a window that closes between snapshot and settle stays, and is written with its membership next', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    const first = state.snapshot();
    applyEvent(state, click('b', T1 + LATENESS_MS), 1);
    state.settle(first);
    assert.equal(state.openWindows, 2);
    const next = state.snapshot();
    assert.equal(next.rows.find((r) => r.windowStart === T0)?.membershipStored, true);
    assert.deepEqual(
      next.rows.filter((r) => r.membershipStored).map((r) => r.windowStart),
      [T0],
    );
  });
});

describe('PartitionWindows: idle partitions', () => {
  const IDLE_MS = 10_000;
  const FRESH_MS = 8_000;

  /** A partition with T0 in memory, and what is final before any idleness. */
  function idleState(): { state: PartitionWindows; before: number } {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    return { state, before: state.finalThrough };
  }

  test('caught up (a fresh look at the end offsets shows nothing unread) and quiet: the clock closes windows', () => {
    const { state, before } = idleState();
    assert.ok(before < T0);
    const quietSince = Date.now();
    state.noteEnd(1, quietSince + IDLE_MS);
    state.finalizeIdle(quietSince + IDLE_MS + 1, IDLE_MS, FRESH_MS);
    assert.ok(state.finalThrough >= T0);
    assert.equal(onlyRow(state, T0).isFinal, true);
  });

  test('no look at the end offsets, or a stale one: nothing closes by the clock', () => {
    const { state, before } = idleState();
    const later = Date.now() + IDLE_MS + 60_000;
    state.finalizeIdle(later, IDLE_MS, FRESH_MS);
    assert.equal(state.finalThrough, before, 'no look');
    state.noteEnd(1, later - FRESH_MS - 1);
    state.finalizeIdle(later, IDLE_MS, FRESH_MS);
    assert.equal(state.finalThrough, before, 'a look too old');
  });

  test('records unread at the broker (a stalled or frozen consumer): nothing closes by the clock', () => {
    const { state, before } = idleState();
    const later = Date.now() + IDLE_MS + 1;
    state.noteEnd(5, later);
    state.finalizeIdle(later + 1, IDLE_MS, FRESH_MS);
    assert.equal(state.finalThrough, before);
  });

  test('a backlog in the newest batch: behind, not idle', () => {
    const { state, before } = idleState();
    state.noteBacklog(10);
    const later = Date.now() + IDLE_MS + 1;
    state.noteEnd(1, later);
    state.finalizeIdle(later + 1, IDLE_MS, FRESH_MS);
    assert.equal(state.finalThrough, before);
  });

  test('restarting the idle clock (after a pause) forgets the last look', () => {
    const { state, before } = idleState();
    const later = Date.now() + IDLE_MS + 1;
    state.noteEnd(1, later);
    state.restartIdleClock(later);
    state.finalizeIdle(later + IDLE_MS + 1, IDLE_MS, FRESH_MS);
    assert.equal(state.finalThrough, before);
  });
});

describe('PartitionWindows: snapshots and settling', () => {
  test('a snapshot holds only windows changed since the last settle, with cumulative figures', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1)], 0);
    flush(state);
    applyEvent(state, click('c', T1), 2);
    const rows = state.snapshot().rows;
    assert.deepEqual(
      rows.map((r) => [r.windowStart, r.uniqueUsers, r.events, r.throughOffset]),
      [[T1, 2, 2, 2]],
    );
  });

  test('a window changed between snapshot and settle stays dirty', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    const first = state.snapshot();
    applyEvent(state, click('b', T0), 1);
    state.settle(first);
    assert.equal(onlyRow(state, T0).events, 2);
  });

  test('nothing is written during a replay; the replay ends at the checkpoint', () => {
    const state = new PartitionWindows(3, WINDOW_MS, LATENESS_MS, MAX_AGE_MS, {
      resumeFrom: 10,
      replayFrom: 5,
      openWindows: [T0],
      closedOpenWindows: [],
      closedThrough: Number.NEGATIVE_INFINITY,
      finalThrough: Number.NEGATIVE_INFINITY,
      legacyFinalThrough: Number.NEGATIVE_INFINITY,
      watermark: T0 + 1,
      epoch: 1,
    });
    applyEvent(state, click('a', T0), 5);
    assert.equal(state.isReplaying, true);
    assert.deepEqual(state.snapshot().rows, []);
    state.closeThrough(T0);
    assert.equal(state.closedThrough, Number.NEGATIVE_INFINITY, 'nothing closes mid-replay');
    advance(state, 9);
    assert.equal(state.isReplaying, false);
    assert.equal(onlyRow(state, T0).throughOffset, 9);
  });

  test('records of windows to rebuild gone from the topic: those windows close as stored', () => {
    const state = new PartitionWindows(3, WINDOW_MS, LATENESS_MS, MAX_AGE_MS, {
      resumeFrom: 10,
      replayFrom: 5,
      openWindows: [T0],
      closedOpenWindows: [],
      closedThrough: Number.NEGATIVE_INFINITY,
      finalThrough: Number.NEGATIVE_INFINITY,
      legacyFinalThrough: Number.NEGATIVE_INFINITY,
      watermark: T0 + 1,
      epoch: 1,
    });
    // Offsets 5 and 6 are gone (retention; OFFSET_RESET=earliest moved on): T0 cannot be rebuilt.
    state.noteReplayStart(7);
    assert.equal(state.isReplaying, false);
    assert.equal(state.closedThrough, T0);
    // The rest of the replay was counted already: skipped, not counted again, not rebuilt.
    const packed = packRecords([
      { offset: 7, timestampMs: T0 + 2, value: Buffer.from(JSON.stringify(click('a', T0))) },
    ]);
    const replayed = aggregateBatch(state.batchInput(packed));
    assert.equal(replayed.skipped, 1);
    state.merge(replayed, 7);
    advance(state, 9);
    // New events for T0 add to its stored figures through its (empty) stored membership.
    assert.equal(applyEvent(state, click('b', T0), 10), 'closed window');
    const flush = state.snapshot();
    assert.deepEqual(flush.rows, []);
    assert.deepEqual(flush.unrebuilt, [T0]);
    assert.equal(flush.closedWindowEvents[0]?.windowStart, T0);
    state.settle(flush);
    assert.deepEqual(state.snapshot().unrebuilt, [], 'written once');
  });

  test('a replay that starts where it should rebuilds as usual', () => {
    const state = new PartitionWindows(3, WINDOW_MS, LATENESS_MS, MAX_AGE_MS, {
      resumeFrom: 10,
      replayFrom: 5,
      openWindows: [T0],
      closedOpenWindows: [],
      closedThrough: Number.NEGATIVE_INFINITY,
      finalThrough: Number.NEGATIVE_INFINITY,
      legacyFinalThrough: Number.NEGATIVE_INFINITY,
      watermark: T0 + 1,
      epoch: 1,
    });
    // One offset can be a transaction's commit marker.
    state.noteReplayStart(6);
    assert.equal(state.isReplaying, true);
    assert.equal(state.closedThrough, Number.NEGATIVE_INFINITY);
  });
});

describe('PartitionWindows: offsets', () => {
  test('throughOffset starts at -1 and follows every consumed record, never backwards', () => {
    const state = windows();
    assert.equal(state.throughOffset, -1);
    applyEvent(state, click('a', T0), 4);
    advance(state, 9);
    assert.equal(state.throughOffset, 9);
    advance(state, 3);
    assert.equal(state.throughOffset, 9);
    assert.equal(onlyRow(state, T0).throughOffset, 9);
  });

  test('firstOffset is the offset of the first event counted in the window', () => {
    const state = windows();
    advance(state, 0);
    applyAll(state, [click('a', T0), click('b', T0)], 1);
    assert.equal(onlyRow(state, T0).firstOffset, 1);
  });
});
