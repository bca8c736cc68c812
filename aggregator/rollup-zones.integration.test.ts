/**
 * Each site's hours and days are those of its time zone: Asia/Kathmandu (+05:45, hours starting
 * at a quarter past the UTC hour), America/St_Johns (−03:30, −02:30 in summer) and
 * Europe/Berlin around its daylight-saving changes (a 23-hour and a 25-hour day, and the hour
 * that happens twice). The figures come from the real flush (`PartitionWindows` fed by the
 * worker logic, `writeFlush` into PostgreSQL) and are compared with the oracle's, which places
 * windows with `Intl`; the days are also spelled out here.
 *
 * In-process rather than through the broker: the changes of 2026 are months old, and a running
 * aggregator dead-letters events that old as their membership may be gone (`retention.ts`).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type pg from 'pg';
import {
  type Figure,
  figureDifferences,
  localDayStart,
  RollupOracle,
  readPeriods,
  type SiteEvent,
} from '../e2e/rollup-oracle.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
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
const DAY_MS = 86_400_000;
const schemas = new TestSchemas(stack.databaseUrl, 'zones');
after(() => schemas.dropAll());

const ZONES = [
  { site: 'kathmandu', time_zone: 'Asia/Kathmandu' },
  { site: 'stjohns', time_zone: 'America/St_Johns' },
  { site: 'berlin', time_zone: 'Europe/Berlin' },
];

/** Feeds `events` (received a minute after they happened) to `state`, one batch, and flushes. */
async function feed(client: pg.Client, state: PartitionWindows, events: SiteEvent[], from: number) {
  const records = events.map((event, i) => ({
    offset: from + i,
    timestampMs: event.timestamp + 60_000,
    value: Buffer.from(JSON.stringify(event)),
  }));
  const result = aggregateBatch(state.batchInput(packRecords(records)));
  assert.deepEqual(result.invalid, []);
  assert.deepEqual(result.late, []);
  state.merge(result, from + events.length - 1);
  // Every window closes: its membership and its rollups are written.
  state.closeThrough(Math.max(...events.map((event) => event.timestamp)));
  const snapshot = state.snapshot();
  const outcome = await writeFlush(client, [snapshot]);
  assert.ok(outcome.committed);
  state.settle(snapshot);
}

test('hours and days follow each site zone: +05:45, -03:30/-02:30, and Berlin daylight-saving days', async (t) => {
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
  const oracle = new RollupOracle(WINDOW_MS);
  // Around 2026's changes: St John's 8 March and 1 November, Berlin 29 March (a 23-hour day) and
  // 25 October (25 hours); an event every 20 minutes from the day before to the day after.
  const spans = [Date.UTC(2026, 2, 7), Date.UTC(2026, 2, 28), Date.UTC(2026, 9, 24)];
  let offset = 0;
  for (const from of spans) {
    const events: SiteEvent[] = [];
    for (let ms = from; ms < from + 3 * DAY_MS; ms += 20 * 60_000) {
      for (const { site, time_zone } of ZONES) {
        events.push({
          site,
          time_zone,
          user_id: `z${(ms / 60_000) % 7}`,
          activity_type: (ms / 60_000) % 3 === 0 ? PAGE_VIEW : 'click',
          timestamp: ms,
          event_id: `${site}-${ms}`,
        });
      }
    }
    await feed(client, state, events, offset);
    offset += events.length;
    for (const event of events) oracle.add(event);
  }
  const periods: Figure[] = await readPeriods(client, schema);
  const expected = oracle.expectedPeriods();
  assert.ok(
    JSON.stringify(periods) === JSON.stringify(expected),
    `hour and day figures differ:\n  ${figureDifferences(periods, expected)}`,
  );
  t.diagnostic(`${periods.length} hour and day figures equal to the oracle's`);

  // Beside the oracle (Intl), the days themselves, spelled out.
  const starts = (site: string, period: string) =>
    periods
      .filter((figure) => figure.key.startsWith(`${site}|${period}|`) && figure.key.endsWith('|'))
      .map((figure) => figure.key.split('|')[2] as string);
  const berlin = starts('berlin', 'day');
  for (const [start, what] of [
    ['2026-03-28T23:00:00.000Z', 'Berlin 29 March starts at midnight CET'],
    ['2026-03-29T22:00:00.000Z', 'Berlin 30 March: 23 hours later'],
    ['2026-10-24T22:00:00.000Z', 'Berlin 25 October starts at midnight CEST'],
    ['2026-10-25T23:00:00.000Z', 'Berlin 26 October: 25 hours later'],
  ] as const) {
    assert.ok(berlin.includes(start), what);
  }
  assert.ok(starts('kathmandu', 'day').includes('2026-03-06T18:15:00.000Z'), 'Kathmandu +05:45');
  const stJohns = starts('stjohns', 'day');
  assert.ok(stJohns.includes('2026-03-07T03:30:00.000Z'), "St John's before the change: -03:30");
  assert.ok(stJohns.includes('2026-03-09T02:30:00.000Z'), "St John's after it: -02:30");
  // 02:00 to 03:00 happens twice in Berlin on 25 October: two hours, not one.
  const berlinHours = starts('berlin', 'hour').filter((start) => start.startsWith('2026-10-25T0'));
  assert.deepEqual(berlinHours.slice(0, 3), [
    '2026-10-25T00:00:00.000Z',
    '2026-10-25T01:00:00.000Z',
    '2026-10-25T02:00:00.000Z',
  ]);
  assert.ok(starts('kathmandu', 'hour').includes('2026-03-07T00:15:00.000Z'), 'Kathmandu hours');
  // A day's figures are its hours' events: 25 of them on Berlin's long day.
  const dayEvents = periods.find(
    (figure) => figure.key === 'berlin|day|2026-10-24T22:00:00.000Z|',
  )?.event_count;
  assert.equal(dayEvents, 25 * 3);
  assert.equal(
    localDayStart(Date.UTC(2026, 9, 25, 12), 'Europe/Berlin'),
    Date.UTC(2026, 9, 24, 22),
  );
});
