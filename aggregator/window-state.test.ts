import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { seededRandom } from '../shared/testing.js';
import { aggregateBatch, packRecords, windowStartOf } from './batch-aggregator.js';
import { PartitionWindows, type WindowRow } from './window-state.js';

const WINDOW_MS = 60_000;
const LATENESS_MS = 10_000;
/** A window start: 2024-05-01T12:00:00Z. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const T1 = T0 + WINDOW_MS;
const T2 = T1 + WINDOW_MS;

function windows(latenessMs = LATENESS_MS): PartitionWindows {
  return new PartitionWindows(3, WINDOW_MS, latenessMs);
}

function click(user: string, timestamp: number, activityType = 'click') {
  return { user_id: user, activity_type: activityType, timestamp };
}

/** Applies one event at `offset` the way the aggregator does: worker logic, then merge. */
function applyEvent(
  state: PartitionWindows,
  event: ReturnType<typeof click>,
  offset: number,
): 'counted' | 'late' {
  const packed = packRecords([
    { offset, timestampMs: event.timestamp, value: Buffer.from(JSON.stringify(event)) },
  ]);
  const result = aggregateBatch(state.batchInput(packed));
  assert.deepEqual(result.invalid, []);
  state.merge(result, offset);
  return result.late.length === 1 ? 'late' : 'counted';
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
    },
    offset,
  );
}

/** Applies events at consecutive offsets starting from `firstOffset`; returns the outcomes. */
function applyAll(
  state: PartitionWindows,
  events: ReadonlyArray<ReturnType<typeof click>>,
  firstOffset: number,
): string[] {
  return events.map((event, i) => applyEvent(state, event, firstOffset + i));
}

/** The dirty rows by window start. */
function dirtyByStart(state: PartitionWindows): Map<number, WindowRow> {
  return new Map(state.snapshotDirty().map((row) => [row.windowStart, row]));
}

function onlyRow(state: PartitionWindows, windowStart: number): WindowRow {
  const row = dirtyByStart(state).get(windowStart);
  assert.ok(row !== undefined, `no dirty row for window ${new Date(windowStart).toISOString()}`);
  return row;
}

/** A flush that succeeds: snapshot, write, settle. */
function flush(state: PartitionWindows): WindowRow[] {
  const rows = state.snapshotDirty();
  state.settle(rows);
  return rows;
}

describe('PartitionWindows: window assignment', () => {
  test('windows are aligned to the epoch, not to the first event', () => {
    const state = new PartitionWindows(0, 7000, 0);
    assert.equal(windowStartOf(0, state.windowMs), 0);
    assert.equal(windowStartOf(6999, state.windowMs), 0);
    assert.equal(windowStartOf(7000, state.windowMs), 7000);
    assert.equal(windowStartOf(10_000, state.windowMs), 7000);
    assert.equal(windowStartOf(T0 + 123, state.windowMs), T0 + 123 - ((T0 + 123) % 7000));
  });

  test('a timestamp exactly on a boundary starts the next window', () => {
    const state = windows();
    assert.equal(windowStartOf(T1 - 1, state.windowMs), T0);
    assert.equal(windowStartOf(T1, state.windowMs), T1);
    applyAll(state, [click('a', T1 - 1), click('b', T1)], 0);
    const rows = dirtyByStart(state);
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
});

describe('PartitionWindows: finality and late events', () => {
  test('a window becomes final once the watermark reaches its end plus the allowed lateness', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    applyEvent(state, click('b', T1 + LATENESS_MS - 1), 1);
    assert.equal(onlyRow(state, T0).isFinal, false);
    applyEvent(state, click('c', T1 + LATENESS_MS), 2);
    assert.equal(onlyRow(state, T0).isFinal, true);
    assert.equal(onlyRow(state, T1).isFinal, false);
  });

  test('with no allowed lateness the first event of the next window closes the previous one', () => {
    const state = windows(0);
    applyEvent(state, click('a', T0), 0);
    applyEvent(state, click('b', T1), 1);
    assert.equal(onlyRow(state, T0).isFinal, true);
  });

  test('out-of-order events within the allowed lateness are counted', () => {
    const state = windows();
    applyEvent(state, click('a', T1 + 5000), 0);
    assert.equal(applyEvent(state, click('b', T0 + 30_000), 1), 'counted');
    assert.equal(applyEvent(state, click('c', T1 + LATENESS_MS - 1), 2), 'counted');
    assert.equal(applyEvent(state, click('d', T0 + 59_999), 3), 'counted');
    assert.equal(onlyRow(state, T0).uniqueUsers, 2);
    assert.equal(onlyRow(state, T0).isFinal, false);
  });

  test('an event for a final window is late and does not change its figures', () => {
    const state = windows();
    applyAll(state, [click('a', T0, 'page_view'), click('b', T1 + LATENESS_MS)], 0);
    const before = onlyRow(state, T0);
    assert.equal(before.isFinal, true);

    assert.equal(applyEvent(state, click('new-user', T0 + 1, 'page_view'), 2), 'late');
    assert.equal(applyEvent(state, click('a', T1 - 1), 3), 'late');

    const after = onlyRow(state, T0);
    assert.deepEqual(
      { users: after.uniqueUsers, views: after.pageViews, events: after.events },
      { users: 1, views: 1, events: 1 },
    );
    assert.equal(after.firstOffset, before.firstOffset);
  });

  test('an event for a window already evicted is late and does not bring the window back', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1 + LATENESS_MS)], 0);
    flush(state);
    assert.equal(state.openWindows, 1, 'the final window is evicted');

    assert.equal(applyEvent(state, click('c', T0 + 10), 2), 'late');
    assert.equal(state.openWindows, 1);
    assert.deepEqual(state.snapshotDirty(), []);
  });

  test('an event for an old window that never existed is late', () => {
    const state = windows();
    applyEvent(state, click('a', T2 + LATENESS_MS), 0);
    assert.equal(applyEvent(state, click('b', T0), 1), 'late');
    assert.equal(applyEvent(state, click('b', T1 - 1), 2), 'late');
    assert.equal(state.openWindows, 1);
    assert.deepEqual(
      state.snapshotDirty().map((row) => row.windowStart),
      [T2],
    );
  });

  test('an out-of-order event does not move the watermark back', () => {
    const state = windows();
    applyEvent(state, click('a', T2 + LATENESS_MS), 0);
    assert.equal(applyEvent(state, click('b', T2), 1), 'counted');
    // T1 is past its lateness against the highest event time seen, whatever came after it.
    assert.equal(applyEvent(state, click('c', T1), 2), 'late');
  });

  test('late events do not move the watermark', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1 + LATENESS_MS)], 0);
    // A late event far in the past, then one just inside T1's lateness: still counted.
    applyEvent(state, click('c', T0 - 10 * WINDOW_MS), 2);
    assert.equal(applyEvent(state, click('d', T1), 3), 'counted');
  });
});

describe('PartitionWindows: events with an event_id', () => {
  /** One batch of `events` at consecutive offsets from `first`; returns what merge skipped. */
  function mergeBatch(state: PartitionWindows, events: object[], first: number): number {
    const packed = packRecords(
      events.map((event, i) => ({
        offset: first + i,
        timestampMs: T0,
        value: Buffer.from(JSON.stringify(event)),
      })),
    );
    const result = aggregateBatch(state.batchInput(packed));
    assert.deepEqual(result.invalid, []);
    return state.merge(result, first + events.length - 1);
  }

  test('an event_id counted in an earlier batch is not counted again in its window', () => {
    const state = windows();
    const e1 = { ...click('a', T0, 'page_view'), event_id: 'e1' };
    assert.equal(mergeBatch(state, [e1, click('b', T0 + 1)], 0), 0);
    // The same event again (a producer retry or a client resend), then a new one from a new user.
    assert.equal(mergeBatch(state, [e1, { ...click('c', T0 + 2), event_id: 'e2' }], 2), 1);
    const row = onlyRow(state, T0);
    assert.deepEqual([row.uniqueUsers, row.events, row.pageViews, row.throughOffset], [3, 3, 1, 3]);
    assert.equal(state.heldEventIds, 2);
    assert.equal(state.heldUsers, 3);
  });

  test('the same event_id in another window is another event', () => {
    const state = windows();
    mergeBatch(state, [{ ...click('a', T0), event_id: 'e1' }], 0);
    assert.equal(mergeBatch(state, [{ ...click('a', T1), event_id: 'e1' }], 1), 0);
    assert.equal(onlyRow(state, T0).events, 1);
    assert.equal(onlyRow(state, T1).events, 1);
  });

  test('a window dropped after its final row takes its event ids with it', () => {
    const state = windows();
    mergeBatch(state, [{ ...click('a', T0), event_id: 'e1' }], 0);
    mergeBatch(state, [{ ...click('b', T2), event_id: 'e2' }], 1);
    flush(state);
    assert.equal(state.heldEventIds, 1, 'only the open window T2 keeps its ids');
  });
});

describe('PartitionWindows: idle partitions', () => {
  const IDLE_MS = 5000;
  /** Wall-clock time long after T0's window closed: only idleness keeps it open. */
  const LATER = T0 + 10 * WINDOW_MS;

  test('an idle partition with nothing left to read lets wall-clock time finalize its windows', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    state.restartIdleClock(LATER);
    state.finalizeIdle(LATER + IDLE_MS - 1, IDLE_MS);
    assert.equal(onlyRow(state, T0).isFinal, false, 'not idle for long enough yet');
    state.finalizeIdle(LATER + IDLE_MS, IDLE_MS);
    assert.equal(onlyRow(state, T0).isFinal, true);
  });

  test('a partition with a backlog is behind, not idle: its windows stay open', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    state.noteBacklog(250);
    state.restartIdleClock(LATER);
    state.finalizeIdle(LATER + 100 * IDLE_MS, IDLE_MS);
    assert.equal(onlyRow(state, T0).isFinal, false);
    // Caught up again: now silence is idleness.
    state.noteBacklog(0);
    state.finalizeIdle(LATER + 100 * IDLE_MS, IDLE_MS);
    assert.equal(onlyRow(state, T0).isFinal, true);
  });

  test('restarting the idle clock (after a pause) delays finality by a whole idle period', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    state.restartIdleClock(LATER);
    state.finalizeIdle(LATER + IDLE_MS - 1, IDLE_MS);
    state.restartIdleClock(LATER + IDLE_MS - 1);
    state.finalizeIdle(LATER + IDLE_MS, IDLE_MS);
    assert.equal(onlyRow(state, T0).isFinal, false);
    state.finalizeIdle(LATER + 2 * IDLE_MS - 1, IDLE_MS);
    assert.equal(onlyRow(state, T0).isFinal, true);
  });
});

describe('PartitionWindows: snapshots and settling', () => {
  test('a snapshot holds only windows changed since the last settle, with cumulative figures', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1)], 0);
    assert.equal(flush(state).length, 2);

    applyAll(state, [click('c', T1, 'page_view'), click('b', T1)], 2);
    const rows = state.snapshotDirty();
    assert.deepEqual(rows, [
      {
        windowStart: T1,
        windowSeconds: 60,
        partition: 3,
        uniqueUsers: 2,
        pageViews: 1,
        events: 3,
        firstOffset: 1,
        throughOffset: 3,
        watermark: T1,
        isFinal: false,
      },
    ]);
  });

  test('nothing is dirty once everything was settled', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1)], 0);
    flush(state);
    assert.deepEqual(state.snapshotDirty(), []);
  });

  test('a snapshot does not clean anything by itself', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    state.snapshotDirty();
    assert.equal(state.snapshotDirty().length, 1);
  });

  test('a window changed between snapshot and settle stays dirty', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T1)], 0);
    const rows = state.snapshotDirty();
    // Consumed while the rows were being written.
    applyEvent(state, click('c', T0 + 1), 2);
    state.settle(rows);

    const next = state.snapshotDirty();
    assert.deepEqual(
      next.map((row) => [row.windowStart, row.uniqueUsers, row.events, row.throughOffset]),
      [[T0, 2, 2, 2]],
    );
  });

  test('a window that became final between snapshot and settle stays and is written as final', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    const rows = state.snapshotDirty();
    assert.equal(rows[0]?.isFinal, false);
    applyEvent(state, click('b', T1 + LATENESS_MS), 1);
    state.settle(rows);

    assert.equal(state.openWindows, 2, 'not evicted before its final figures are written');
    const row = onlyRow(state, T0);
    assert.equal(row.isFinal, true);
    assert.equal(row.events, 1);
  });

  test('final windows are evicted after their final row is settled', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T0), click('c', T2 + LATENESS_MS)], 0);
    assert.equal(state.openWindows, 2);
    assert.equal(state.heldUsers, 3);

    const rows = flush(state);
    assert.deepEqual(
      rows.map((row) => [row.windowStart, row.isFinal]),
      [
        [T0, true],
        [T2, false],
      ],
    );
    assert.equal(state.openWindows, 1);
    assert.equal(state.heldUsers, 1);
  });

  test('settling rows of a failed or stale snapshot never loses an update', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    const stale = state.snapshotDirty();
    applyEvent(state, click('b', T0), 1);
    state.settle(stale);
    state.settle(stale);
    assert.equal(onlyRow(state, T0).events, 2);
  });

  test('settling an empty snapshot or rows of unknown windows is harmless', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 0);
    state.settle([]);
    state.settle([{ ...onlyRow(state, T0), windowStart: T2 }]);
    assert.equal(onlyRow(state, T0).events, 1);
  });
});

describe('PartitionWindows: offsets', () => {
  test('throughOffset starts at -1 and follows every consumed record', () => {
    const state = windows();
    assert.equal(state.throughOffset, -1);
    applyEvent(state, click('a', T0), 0);
    assert.equal(state.throughOffset, 0);
    advance(state, 1);
    advance(state, 2);
    assert.equal(state.throughOffset, 2);
  });

  test('advance() for skipped records moves throughOffset in the next snapshot rows', () => {
    const state = windows();
    applyEvent(state, click('a', T0), 10);
    advance(state, 11);
    advance(state, 12);
    applyEvent(state, click('b', T0), 13);
    advance(state, 14);
    assert.equal(onlyRow(state, T0).throughOffset, 14);
  });

  test('late events move throughOffset too', () => {
    const state = windows();
    applyAll(state, [click('a', T0), click('b', T2)], 0);
    assert.equal(applyEvent(state, click('c', T0), 7), 'late');
    assert.equal(state.throughOffset, 7);
  });

  test('throughOffset never moves backwards', () => {
    const state = windows();
    advance(state, 9);
    advance(state, 4);
    applyEvent(state, click('a', T0), 5);
    assert.equal(state.throughOffset, 9);
  });

  test('firstOffset is the offset of the first event counted in the window', () => {
    const state = windows();
    advance(state, 0);
    advance(state, 1);
    applyAll(state, [click('a', T1), click('b', T0), click('c', T0), click('d', T1)], 2);
    assert.equal(onlyRow(state, T1).firstOffset, 2);
    assert.equal(onlyRow(state, T0).firstOffset, 3);
  });
});

describe('PartitionWindows: random streams against a simple model', () => {
  test('the rows written by repeated flushes equal the exact figures of the counted events', () => {
    for (let seed = 1; seed <= 30; seed++) checkAgainstModel(seed);
  });
});

/**
 * Feeds a random, partly out-of-order stream with random flushes (some interleaved with new
 * events, some failing), keeps the rows a fenced upsert would keep, and compares them with figures
 * computed directly from the events the model says are on time.
 */
function checkAgainstModel(seed: number): void {
  const random = seededRandom(seed);
  const latenessMs = Math.floor(random() * 3) * 5000;
  const state = windows(latenessMs);
  const written = new Map<number, WindowRow>();
  const model = new Map<
    number,
    { users: Set<string>; events: number; pageViews: number; firstOffset: number }
  >();
  let watermark = Number.NEGATIVE_INFINITY;
  let clock = T0;

  const write = (rows: readonly WindowRow[]): void => {
    for (const row of rows) {
      const previous = written.get(row.windowStart);
      assert.ok(previous === undefined || previous.throughOffset <= row.throughOffset);
      assert.ok(previous?.isFinal !== true, `seed ${seed}: a final row was rewritten`);
      written.set(row.windowStart, row);
    }
  };

  for (let offset = 0; offset < 2000; offset++) {
    clock += Math.floor(random() * 400);
    if (random() < 0.05) {
      advance(state, offset);
    } else {
      // Mostly near the clock; sometimes a minute or more behind it.
      const skew =
        random() < 0.1 ? Math.floor(random() * 3 * WINDOW_MS) : Math.floor(random() * 3000);
      const event = click(
        `u${Math.floor(random() * 40)}`,
        clock - skew,
        random() < 0.4 ? 'page_view' : 'click',
      );
      const start = windowStartOf(event.timestamp, state.windowMs);
      const expectLate = watermark >= start + WINDOW_MS + latenessMs;
      const outcome = applyEvent(state, event, offset);
      assert.equal(outcome, expectLate ? 'late' : 'counted', `seed ${seed} offset ${offset}`);
      if (!expectLate) {
        watermark = Math.max(watermark, event.timestamp);
        let figures = model.get(start);
        if (figures === undefined) {
          figures = { users: new Set(), events: 0, pageViews: 0, firstOffset: offset };
          model.set(start, figures);
        }
        figures.users.add(event.user_id);
        figures.events++;
        if (event.activity_type === 'page_view') figures.pageViews++;
      }
    }
    const roll = random();
    if (roll < 0.03) {
      write(flush(state));
    } else if (roll < 0.05) {
      // A flush while more records arrive before the write completes.
      const rows = state.snapshotDirty();
      assert.equal(applyEvent(state, click('late-comer', clock), ++offset), 'counted');
      const start = windowStartOf(clock, state.windowMs);
      watermark = Math.max(watermark, clock);
      const figures = model.get(start) ?? {
        users: new Set<string>(),
        events: 0,
        pageViews: 0,
        firstOffset: offset,
      };
      figures.users.add('late-comer');
      figures.events++;
      model.set(start, figures);
      write(rows);
      state.settle(rows);
    } else if (roll < 0.06) {
      // A failed write: the rows are neither written nor settled.
      state.snapshotDirty();
    }
  }
  write(flush(state));
  assert.deepEqual(state.snapshotDirty(), [], `seed ${seed}: dirty after the last flush`);

  assert.deepEqual([...written.keys()].sort(), [...model.keys()].sort(), `seed ${seed}: windows`);
  for (const [start, figures] of model) {
    const row = written.get(start) as WindowRow;
    assert.deepEqual(
      {
        uniqueUsers: row.uniqueUsers,
        events: row.events,
        pageViews: row.pageViews,
        firstOffset: row.firstOffset,
        isFinal: row.isFinal,
      },
      {
        uniqueUsers: figures.users.size,
        events: figures.events,
        pageViews: figures.pageViews,
        firstOffset: figures.firstOffset,
        isFinal: watermark >= start + WINDOW_MS + latenessMs,
      },
      `seed ${seed}: window ${new Date(start).toISOString()}`,
    );
  }
}
