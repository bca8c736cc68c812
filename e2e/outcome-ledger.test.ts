import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { sleep } from '../shared/lifecycle.js';
import type { WindowTotals } from './activity-oracle.js';
import { OutcomeLedger } from './outcome-ledger.js';

const WINDOW_MS = 10_000;
const START = Date.parse('2026-12-01T10:00:00Z');

/** Two users' events in one window: u1 acknowledged twice (one page view), u2 unknown once. */
function ledger(): OutcomeLedger {
  const l = new OutcomeLedger(WINDOW_MS);
  l.sent({ user_id: 'u1', activity_type: 'page_view', timestamp: START + 1 })('acknowledged');
  l.sent({ user_id: 'u1', activity_type: 'click', timestamp: START + 2 })('acknowledged');
  l.sent({ user_id: 'u2', activity_type: 'page_view', timestamp: START + 3 })('unknown');
  l.sent({ user_id: 'u3', activity_type: 'page_view', timestamp: START + 4 })('rejected');
  return l;
}

const view = (users: number, pageViews: number, events: number): WindowTotals[] => [
  {
    window_start: new Date(START).toISOString(),
    unique_users: users,
    page_view_count: pageViews,
    event_count: events,
  },
];

describe('OutcomeLedger', () => {
  test('acknowledged counted once and the unknown not: within bounds, nothing counted', () => {
    const verdict = ledger().judge(view(1, 1, 2));
    assert.deepEqual(verdict, { lost: 0, doubleCounted: 0, unknownCounted: 0, problems: [] });
  });

  test('the unknown event counted once: within bounds, counted as unknown-and-counted', () => {
    const verdict = ledger().judge(view(2, 2, 3));
    assert.deepEqual(verdict, { lost: 0, doubleCounted: 0, unknownCounted: 1, problems: [] });
  });

  test('an acknowledged event missing is a loss', () => {
    const verdict = ledger().judge(view(1, 1, 1));
    assert.equal(verdict.lost, 1);
    assert.equal(verdict.doubleCounted, 0);
    assert.equal(verdict.problems.length, 1);
  });

  test('an event counted twice, or a rejected one counted, is a double count', () => {
    assert.equal(ledger().judge(view(2, 2, 4)).doubleCounted, 1);
    // The rejected u3 counted: one user and one page view too many.
    assert.equal(ledger().judge(view(3, 3, 3)).doubleCounted, 1);
  });

  test('a window the ledger never saw is a double count; a missing window a loss', () => {
    const l = ledger();
    const stray = view(1, 0, 5).map((row) => ({
      ...row,
      window_start: '2026-12-01T11:00:00.000Z',
    }));
    const verdict = l.judge(stray);
    assert.equal(verdict.doubleCounted, 5);
    assert.equal(verdict.lost, 2);
  });

  test('pending events may be stored until settled; acknowledgements are timed', () => {
    const l = new OutcomeLedger(WINDOW_MS);
    const settle = l.sent({ user_id: 'u1', activity_type: 'click', timestamp: START });
    assert.equal(l.judge(view(1, 0, 1)).doubleCounted, 0);
    assert.equal(l.acknowledgedBefore(Date.now()), 0);
    settle('acknowledged');
    settle('rejected');
    assert.equal(l.totals.acknowledged, 1);
    assert.equal(l.totals.rejected, 0);
    assert.equal(l.acknowledgedBefore(Date.now()), 1);
    assert.equal(l.acknowledgedBefore(0), 0);
  });

  test('recovery looks at when an acknowledged event was sent, not when it was answered', async () => {
    const l = new OutcomeLedger(WINDOW_MS);
    assert.equal(l.newestAcknowledgedSentAt, 0);
    // A request held through a freeze, answered after the fault cleared: no recovery yet.
    const held = l.sent({ user_id: 'u1', activity_type: 'click', timestamp: START });
    await sleep(5);
    const clearedAt = Date.now();
    held('acknowledged');
    assert.ok(l.newestAcknowledgedSentAt < clearedAt);
    // Sent after it cleared but not acknowledged (the producer stuck): still none.
    l.sent({ user_id: 'u2', activity_type: 'click', timestamp: START })('unknown');
    assert.ok(l.newestAcknowledgedSentAt < clearedAt);
    // Sent after it cleared and acknowledged: recovered.
    l.sent({ user_id: 'u3', activity_type: 'click', timestamp: START })('acknowledged');
    assert.ok(l.newestAcknowledgedSentAt >= clearedAt);
    assert.equal(l.totals.acknowledged, 2);
  });
});
