/**
 * The flush's SQL against the real PostgreSQL: windows closing with their membership, events for
 * closed windows counted through it, repeats counting nothing, a retried flush (its COMMIT's
 * answer lost) merging and recounting, the ownership epoch refusing a stale writer, and the
 * checkpoint read back. The state comes from the real `PartitionWindows`, fed by the real worker
 * logic; each test has a schema of its own.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type pg from 'pg';
import { stackFromEnv } from '../shared/testing.js';
import { aggregateBatch, packRecords } from './batch-aggregator.js';
import { writeFlush } from './copy-writer.js';
import { claimPartition, loadCheckpoint } from './partition-recovery.js';
import { TestSchemas } from './test-schemas.js';
import { PartitionWindows } from './window-state.js';

const stack = stackFromEnv();
const WINDOW_SEC = 60;
const WINDOW_MS = WINDOW_SEC * 1000;
const LATENESS_MS = 10_000;
const MAX_AGE_MS = 7 * 86_400_000;
/** A window start: 2024-05-01T12:00:00Z. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const w = (n: number): number => T0 + n * WINDOW_MS;

const schemas = new TestSchemas(stack.databaseUrl, 'writer');
after(() => schemas.dropAll());
const freshSchema = (): Promise<pg.Client> => schemas.fresh();

interface Sent {
  user: string;
  at: number;
  id?: string;
  type?: string;
}

/** Feeds events at consecutive offsets (received when they happened) into `state`. */
function apply(state: PartitionWindows, events: readonly Sent[], firstOffset: number): number {
  const records = events.map((e, i) => ({
    offset: firstOffset + i,
    timestampMs: e.at,
    value: Buffer.from(
      JSON.stringify({
        user_id: e.user,
        activity_type: e.type ?? 'click',
        timestamp: e.at,
        ...(e.id === undefined ? {} : { event_id: e.id }),
      }),
    ),
  }));
  const result = aggregateBatch(state.batchInput(packRecords(records)));
  assert.deepEqual(result.invalid, []);
  assert.deepEqual(result.late, []);
  state.merge(result, firstOffset + events.length - 1);
  return firstOffset + events.length;
}

/** One flush, written and settled as aggregation.ts does. */
async function flush(client: pg.Client, state: PartitionWindows) {
  const snapshot = state.snapshot();
  const outcome = await writeFlush(client, [snapshot]);
  if (outcome.lost.includes(state.partition)) state.restore(snapshot);
  else state.settle(snapshot);
  return outcome;
}

async function rows(client: pg.Client) {
  const result = await client.query<{
    start: number;
    users: number;
    page_views: number;
    events: number;
    is_final: boolean;
    stored: boolean;
  }>(
    `SELECT (extract(epoch FROM "timestamp") * 1000)::float8 AS start, unique_users AS users,
            page_view_count::int AS page_views, event_count::int AS events, is_final,
            membership_stored AS stored
       FROM user_activity_metrics ORDER BY "timestamp"`,
  );
  return result.rows;
}

/** The counts of a window's stored membership: what a stored row must equal. */
async function membershipCounts(client: pg.Client, start: number) {
  const result = await client.query<{ users: number; events: number; page_views: number }>(
    `SELECT (SELECT count(*)::int FROM window_users WHERE window_start = $1) AS users,
            (SELECT count(*)::int FROM window_events WHERE window_start = $1) AS events,
            (SELECT count(*)::int FROM window_events WHERE window_start = $1 AND page_view)
              AS page_views`,
    [new Date(start).toISOString()],
  );
  return result.rows[0];
}

async function claimed(client: pg.Client): Promise<PartitionWindows> {
  const checkpoint = await claimPartition(client, 0, WINDOW_SEC);
  return new PartitionWindows(0, WINDOW_MS, LATENESS_MS, MAX_AGE_MS, checkpoint);
}

describe('writeFlush against PostgreSQL', () => {
  test('a closing window is written with its membership; later events count only what it lacked', async () => {
    const client = await freshSchema();
    const state = await claimed(client);
    let offset = apply(
      state,
      [
        { user: 'a', at: w(0) + 1, id: 'e1', type: 'page_view' },
        { user: 'b', at: w(0) + 2, id: 'e2' },
        { user: 'a', at: w(0) + 3 },
        { user: 'c', at: w(1) + LATENESS_MS + 1, id: 'e3' },
      ],
      0,
    );
    await flush(client, state);
    assert.deepEqual(await rows(client), [
      { start: w(0), users: 2, page_views: 1, events: 3, is_final: true, stored: true },
      { start: w(1), users: 1, page_views: 0, events: 1, is_final: false, stored: false },
    ]);
    assert.deepEqual(await membershipCounts(client, w(0)), { users: 2, events: 3, page_views: 1 });

    // Late: a known user (a), a new one (d), a repeat of e1 (a resend), a new page view.
    offset = apply(
      state,
      [
        { user: 'a', at: w(0) + 10, id: 'e4' },
        { user: 'd', at: w(0) + 11, id: 'e5', type: 'page_view' },
        { user: 'a', at: w(0) + 1, id: 'e1', type: 'page_view' },
      ],
      offset,
    );
    const outcome = await flush(client, state);
    assert.equal(outcome.closedCounted, 2, 'the resend of e1 counted nothing');
    const [first] = await rows(client);
    assert.deepEqual(first, {
      start: w(0),
      users: 3,
      page_views: 2,
      events: 5,
      is_final: true,
      stored: true,
    });
    assert.deepEqual(await membershipCounts(client, w(0)), { users: 3, events: 5, page_views: 2 });
    // A window two days old that was never seen: created through the closed path.
    apply(state, [{ user: 'x', at: w(-2880) + 5, id: 'old-1' }], offset);
    await flush(client, state);
    assert.deepEqual((await rows(client))[0], {
      start: w(-2880),
      users: 1,
      page_views: 0,
      events: 1,
      is_final: true,
      stored: true,
    });
  });

  test('a flush retried after its COMMIT succeeded unseen merges and recounts: same figures', async () => {
    const client = await freshSchema();
    const state = await claimed(client);
    const offset = apply(
      state,
      [
        { user: 'a', at: w(0) + 1, id: 'e1' },
        { user: 'b', at: w(0) + 2, id: 'e2', type: 'page_view' },
        { user: 'c', at: w(1) + LATENESS_MS + 1, id: 'e3' },
      ],
      0,
    );
    const snapshot = state.snapshot();
    await writeFlush(client, [snapshot]);
    // The answer to COMMIT was lost: the aggregator writes the same flush again (nothing settled).
    await writeFlush(client, [snapshot]);
    state.settle(snapshot);
    apply(state, [{ user: 'd', at: w(0) + 3, id: 'e4' }], offset);
    await flush(client, state);
    assert.deepEqual((await rows(client))[0], {
      start: w(0),
      users: 3,
      page_views: 1,
      events: 3,
      is_final: true,
      stored: true,
    });
  });

  test('a writer whose epoch moved (another instance claimed the partition) writes nothing', async () => {
    const client = await freshSchema();
    const stale = await claimed(client);
    apply(stale, [{ user: 'a', at: w(0) + 1, id: 'e1' }], 0);
    const fresh = await claimed(client);
    assert.equal(fresh.epoch, stale.epoch + 1);
    const outcome = await writeFlush(client, [stale.snapshot()]);
    assert.deepEqual(outcome.lost, [0]);
    assert.equal(outcome.rows, 0);
    assert.deepEqual(await rows(client), []);
  });

  test('the checkpoint after closes: closed windows are not rebuilt, open ones are', async () => {
    const client = await freshSchema();
    const state = await claimed(client);
    apply(
      state,
      [
        { user: 'a', at: w(0) + 1, id: 'e1' },
        { user: 'b', at: w(1) + 1, id: 'e2' },
        { user: 'c', at: w(2) + 1, id: 'e3' },
      ],
      100,
    );
    state.closeThrough(w(1)); // memory ran short: w(1) closes early, not final
    await flush(client, state);
    const checkpoint = await loadCheckpoint(client, 0, WINDOW_SEC);
    assert.deepEqual(
      {
        resumeFrom: checkpoint.resumeFrom,
        replayFrom: checkpoint.replayFrom,
        openWindows: checkpoint.openWindows,
        closedOpenWindows: checkpoint.closedOpenWindows,
        closedThrough: checkpoint.closedThrough,
        legacyFinalThrough: checkpoint.legacyFinalThrough,
      },
      {
        resumeFrom: 103,
        replayFrom: 102,
        openWindows: [w(2)],
        closedOpenWindows: [w(1)],
        closedThrough: w(1),
        legacyFinalThrough: Number.NEGATIVE_INFINITY,
      },
    );
  });
});
