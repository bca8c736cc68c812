/**
 * Unique users over a range of hours or days are a true union, exact or within the error the
 * answer states: a small site's ranges are answered exactly, a large one's within 1 %; one
 * period is exact; sealed sketches, periods not sealed yet, and late users after sealing all
 * count. The figures come from the real flush path (PartitionWindows fed by the worker logic,
 * writeFlush into PostgreSQL), against the oracle's sets of users.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type pg from 'pg';
import { SeededRandom, testSeed } from '../e2e/activity-oracle.js';
import { HLL_EXACT_UP_TO, HLL_RELATIVE_ERROR_BOUND } from '../shared/hll.js';
import { uniqueUsersOverRange } from '../shared/range-uniques.js';
import { stackFromEnv } from '../shared/testing.js';
import { aggregateBatch, packRecords } from './batch-aggregator.js';
import { writeFlush } from './copy-writer.js';
import { migrate } from './migrations.js';
import { claimPartition } from './partition-recovery.js';
import { TestSchemas } from './test-schemas.js';
import { PartitionWindows } from './window-state.js';

const stack = stackFromEnv();
const WINDOW_SEC = 60;
const WINDOW_MS = WINDOW_SEC * 1000;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** A UTC midnight: the days of site `default` (UTC). */
const D0 = Date.UTC(2026, 10, 2);
const schemas = new TestSchemas(stack.databaseUrl, 'ranges');
after(() => schemas.dropAll());

interface Sent {
  user: string;
  at: number;
  id: string;
}

async function setUp() {
  const schema = schemas.name();
  const client = await schemas.connect(schema);
  await migrate(client, schema);
  const state = new PartitionWindows(
    0,
    WINDOW_MS,
    10_000,
    7 * DAY_MS,
    await claimPartition(client, 0, WINDOW_SEC),
  );
  return { client, state, offset: 0 };
}

/** Feeds events in order (received as they happen), closes every window, flushes. */
async function feed(
  setup: { client: pg.Client; state: PartitionWindows; offset: number },
  events: readonly Sent[],
): Promise<void> {
  const { client, state } = setup;
  for (let i = 0; i < events.length; i += 20_000) {
    const batch = events.slice(i, i + 20_000);
    const records = batch.map((event, j) => ({
      offset: setup.offset + j,
      timestampMs: event.at,
      value: Buffer.from(
        JSON.stringify({
          user_id: event.user,
          activity_type: 'click',
          timestamp: event.at,
          event_id: event.id,
        }),
      ),
    }));
    const result = aggregateBatch(state.batchInput(packRecords(records)));
    assert.deepEqual(result.invalid, []);
    state.merge(result, setup.offset + batch.length - 1);
    setup.offset += batch.length;
    state.closeThrough(Math.max(...batch.map((event) => event.at)));
    const snapshot = state.snapshot();
    assert.ok((await writeFlush(client, [snapshot])).committed);
    state.settle(snapshot);
  }
}

/** `users` draws from `population` on each of `days` days, spread over the day's hours. */
function days(
  random: SeededRandom,
  prefix: string,
  count: number,
  population: number,
  dayCount: number,
) {
  const events: Sent[] = [];
  for (let day = 0; day < dayCount; day++) {
    for (let i = 0; i < count; i++) {
      events.push({
        user: `${prefix}${random.int(population)}`,
        at: D0 + day * DAY_MS + Math.floor((i / count) * DAY_MS),
        id: `${prefix}-${day}-${i}`,
      });
    }
  }
  return events;
}

function distinctUsers(events: readonly Sent[], fromMs: number, toMs: number): number {
  return new Set(events.filter((e) => e.at >= fromMs && e.at < toMs).map((e) => e.user)).size;
}

test('a small site: every range of days and hours is answered exactly, a single period too', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const setup = await setUp();
  const events = days(new SeededRandom(seed), 's', 400, 900, 3);
  await feed(setup, events);
  for (const [period, from, to] of [
    ['day', D0, D0 + 3 * DAY_MS],
    ['day', D0 + DAY_MS, D0 + 2 * DAY_MS],
    ['hour', D0 + 5 * HOUR_MS, D0 + 30 * HOUR_MS],
    ['hour', D0 + 7 * HOUR_MS, D0 + 8 * HOUR_MS],
  ] as const) {
    const answer = await uniqueUsersOverRange(setup.client, {
      site: 'default',
      period,
      fromMs: from,
      toMs: to,
    });
    const truth = distinctUsers(events, from, to);
    assert.ok(truth <= HLL_EXACT_UP_TO);
    assert.equal(answer.uniqueUsers, truth, `${period} ${new Date(from).toISOString()}`);
    assert.equal(answer.exact, true);
    assert.equal(answer.relativeErrorBound, 0);
  }
  // The sum of the days' uniques is not the answer: returning users count once.
  const perDay = await setup.client.query<{ users: string }>(
    `SELECT sum(unique_users) AS users FROM site_period_totals
      WHERE site = 'default' AND period = 'day' AND activity_type = ''`,
  );
  assert.ok(Number(perDay.rows[0]?.users) > distinctUsers(events, D0, D0 + 3 * DAY_MS));
});

test('a large site: ranges beyond the exact size are within the stated 1 %, late users included', async (t) => {
  // A fixed seed: a sketch's answer is deterministic for given users, and 1 % is a bound about 1
  // answer in 2,000 exceeds (shared/hll.ts, measured in hll.integration.test.ts); a random seed
  // would make this test fail that often.
  const seed = Number(process.env.TEST_SEED) || 902_564_524;
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const setup = await setUp();
  // 4 days of 20,000 events from 60,000 users: about 17,000 a day, 43,000 in all.
  const events = days(random, 'l', 20_000, 60_000, 4);
  await feed(setup, events);
  // Late events for the first day (new users among them), after its sketch was sealed.
  const late: Sent[] = Array.from({ length: 3000 }, (_, i) => ({
    user: `late${i % 2500}`,
    at: D0 + 6 * HOUR_MS + i,
    id: `late-${i}`,
  }));
  await feed(setup, late);
  const all = [...events, ...late];
  const sealed = await setup.client.query<{ unsealed: string }>(
    `SELECT count(*) FILTER (WHERE users_hll IS NULL) AS unsealed FROM period_metrics
      WHERE period = 'day' AND period_end <= $1`,
    [new Date(D0 + 3 * DAY_MS).toISOString()],
  );
  assert.equal(Number(sealed.rows[0]?.unsealed), 0, 'the closed days are sealed');
  for (const [period, from, to] of [
    ['day', D0, D0 + 4 * DAY_MS],
    ['day', D0, D0 + 2 * DAY_MS],
    ['hour', D0, D0 + 36 * HOUR_MS],
  ] as const) {
    const answer = await uniqueUsersOverRange(setup.client, {
      site: 'default',
      period,
      fromMs: from,
      toMs: to,
    });
    const truth = distinctUsers(all, from, to);
    const error = Math.abs(answer.uniqueUsers - truth) / truth;
    t.diagnostic(
      `${period} ×${answer.periods}: ${answer.uniqueUsers} for ${truth}, ${(error * 100).toFixed(3)} %`,
    );
    assert.ok(truth > HLL_EXACT_UP_TO);
    assert.equal(answer.exact, false);
    assert.equal(answer.relativeErrorBound, HLL_RELATIVE_ERROR_BOUND);
    assert.ok(error <= HLL_RELATIVE_ERROR_BOUND, `${error} over the bound`);
  }
  // One day alone: its exact count.
  const day = await uniqueUsersOverRange(setup.client, {
    site: 'default',
    period: 'day',
    fromMs: D0,
    toMs: D0 + DAY_MS,
  });
  assert.equal(day.uniqueUsers, distinctUsers(all, D0, D0 + DAY_MS));
  assert.equal(day.exact, true);
  await assert.rejects(
    uniqueUsersOverRange(setup.client, {
      site: 'default',
      period: 'day',
      fromMs: D0,
      toMs: D0 + 401 * DAY_MS,
    }),
    /at most 400 days/,
  );
});
