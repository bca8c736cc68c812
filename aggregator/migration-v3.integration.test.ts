/**
 * A database written by the previous version (schema version 3: no sites, membership in plain
 * tables) is migrated in place with its figures intact, and the aggregator goes on from it.
 *
 * The version-3 state is written as that version wrote it, from a partition's records: windows
 * made final before membership was stored (no membership), windows closed with their users and
 * event ids (final, and one closed early, not final yet), an open window, and the ownership
 * epochs. Then the migrations since run — from two connections at once, and again — and the
 * aggregator carries on in process (`claimPartition`, the replay of the open window,
 * `PartitionWindows` fed by the worker logic, `writeFlush`): late events for migrated windows
 * count once, through the migrated membership, into the minute rows and the hour and day
 * figures.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type pg from 'pg';
import {
  type Figure,
  figureDifferences,
  RollupOracle,
  readMinutes,
  readPeriods,
  type SiteEvent,
} from '../e2e/rollup-oracle.js';
import { DEFAULT_SITE, PAGE_VIEW } from '../shared/event-schema.js';
import { stackFromEnv } from '../shared/testing.js';
import { aggregateBatch, packRecords, syntheticEventId } from './batch-aggregator.js';
import { writeFlush } from './copy-writer.js';
import { LATEST_SCHEMA_VERSION, migrate } from './migrations.js';
import { claimPartition } from './partition-recovery.js';
import { TestSchemas } from './test-schemas.js';
import { PartitionWindows } from './window-state.js';

const stack = stackFromEnv();
const WINDOW_SEC = 60;
const WINDOW_MS = WINDOW_SEC * 1000;
const LATENESS_MS = 10_000;
const MAX_AGE_MS = 7 * 86_400_000;
const schemas = new TestSchemas(stack.databaseUrl, 'migrate_v3');
after(() => schemas.dropAll());

/** 2026-03-30 plus a time of day; hours past 23 are the next day's. */
const at = (hour: number, minute: number, second = 0): number =>
  Date.UTC(2026, 2, 30, hour, minute, second);

/** One record of a partition's topic: its offset, the event (as version 3 read it), when received. */
interface TopicRecord {
  offset: number;
  event: { user_id: string; activity_type: string; timestamp: number; event_id?: string };
  receivedMs: number;
}

/**
 * Partition 0's topic as version 3 consumed it, window after window: two windows of the release
 * before membership (made final then), three closed with membership across midnight, one closed
 * early (memory ran short), and one open. The second record of each window has no event id.
 */
const WINDOWS = {
  legacy: [at(23, 50), at(23, 51)],
  closed: [at(23, 57), at(23, 58), at(24, 1)],
  closedEarly: at(24, 5),
  open: at(24, 6),
};

function topic(): TopicRecord[] {
  const records: TopicRecord[] = [];
  const add = (start: number, count: number, spreadMs: number) => {
    for (let i = 0; i < count; i++) {
      const offset = records.length;
      const timestamp = start + i * spreadMs;
      records.push({
        offset,
        event: {
          user_id: `u${(offset * 3) % 7}`,
          activity_type: i % 4 === 0 ? PAGE_VIEW : 'click',
          timestamp,
          ...(i === 1 ? {} : { event_id: `v3-${offset}` }),
        },
        receivedMs: timestamp + 2_000,
      });
    }
  };
  for (const start of WINDOWS.legacy) add(start, 5, 5_000);
  for (const start of WINDOWS.closed) add(start, 10, 5_000);
  add(WINDOWS.closedEarly, 5, 5_000);
  // The open window's events in its first seconds: the watermark stays short of finalizing the
  // window closed early.
  add(WINDOWS.open, 10, 500);
  return records;
}

/** What version 3 held for one window of one partition, from its records. */
function windowFigures(records: readonly TopicRecord[]) {
  const ids = new Map<string, { user: string; pageView: boolean }>();
  for (const record of records) {
    const id = record.event.event_id ?? syntheticEventId(record.offset);
    if (!ids.has(id)) {
      ids.set(id, {
        user: record.event.user_id,
        pageView: record.event.activity_type === PAGE_VIEW,
      });
    }
  }
  const users = new Set([...ids.values()].map((event) => event.user));
  return {
    ids,
    users,
    pageViews: [...ids.values()].filter((event) => event.pageView).length,
    firstOffset: Math.min(...records.map((record) => record.offset)),
    throughOffset: Math.max(...records.map((record) => record.offset)),
    /** The partition's watermark once these were consumed (records come in time order). */
    watermarkMs: Math.max(...records.map((record) => record.event.timestamp)),
  };
}

/** Writes `records`' windows of `partition` as version 3 did: rows, membership where stored. */
async function writeVersion3(
  client: pg.Client,
  partition: number,
  records: readonly TopicRecord[],
  kinds: ReadonlyMap<number, 'legacy' | 'closed' | 'closedEarly' | 'open'>,
  finalFlush: { throughOffset: number; watermarkMs: number },
): Promise<void> {
  for (const [start, kind] of kinds) {
    const figures = windowFigures(
      records.filter(
        (record) => record.event.timestamp - (record.event.timestamp % WINDOW_MS) === start,
      ),
    );
    // The open window was written by the last flush; the others when they closed.
    const through = kind === 'open' ? finalFlush.throughOffset : figures.throughOffset;
    const stored = kind === 'closed' || kind === 'closedEarly';
    await client.query(
      `INSERT INTO user_activity_metrics ("timestamp", window_seconds, source_partition,
         unique_users, page_view_count, event_count, first_offset, through_offset, is_final,
         watermark_ms, membership_stored)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
      [
        new Date(start).toISOString(),
        WINDOW_SEC,
        partition,
        figures.users.size,
        figures.pageViews,
        figures.ids.size,
        figures.firstOffset,
        through,
        kind === 'legacy' || kind === 'closed',
        kind === 'open' ? finalFlush.watermarkMs : figures.watermarkMs,
        stored,
      ],
    );
    if (!stored) continue;
    for (const user of figures.users) {
      await client.query(
        `INSERT INTO window_users (window_start, window_seconds, source_partition, user_id)
         VALUES ($1, $2, $3, $4)`,
        [new Date(start).toISOString(), WINDOW_SEC, partition, user],
      );
    }
    for (const [id, event] of figures.ids) {
      await client.query(
        `INSERT INTO window_events (window_start, window_seconds, source_partition, page_view,
           event_id) VALUES ($1, $2, $3, $4, $5)`,
        [new Date(start).toISOString(), WINDOW_SEC, partition, event.pageView, id],
      );
    }
  }
}

const ROW_COLUMNS = `id, "timestamp", window_seconds, source_partition, unique_users,
  page_view_count, event_count, first_offset, through_offset, is_final, watermark_ms,
  membership_stored, created_at, updated_at`;

async function rows(client: pg.Client, columns = ROW_COLUMNS) {
  return (await client.query(`SELECT ${columns} FROM user_activity_metrics ORDER BY id`)).rows;
}

/** Each membership row, with the table (partition) holding it. */
async function membership(client: pg.Client, table: 'window_users' | 'window_events') {
  const key = table === 'window_users' ? 'user_id' : 'event_id, page_view';
  const result = await client.query<{ part: string; window_start: Date }>(
    `SELECT tableoid::regclass::text AS part, window_start, window_seconds, source_partition, ${key}
       FROM ${table} ORDER BY window_start, source_partition, ${key}`,
  );
  return result.rows;
}

const asSiteEvent = (event: TopicRecord['event'], offset: number): SiteEvent => ({
  ...event,
  site: DEFAULT_SITE,
  time_zone: 'UTC',
  event_id: event.event_id ?? syntheticEventId(offset),
});

test('a database written by the previous version is migrated in place with its figures intact', async (t) => {
  const schema = schemas.name();
  const first = await schemas.connect(schema);
  const second = await schemas.connect(schema);
  assert.deepEqual(await migrate(first, schema, { through: 3 }), [1, 2, 3]);

  // Version 3's state: partition 0 from its topic, partition 1 one closed window (other users).
  const records = topic();
  const kinds = new Map<number, 'legacy' | 'closed' | 'closedEarly' | 'open'>([
    ...WINDOWS.legacy.map((start) => [start, 'legacy'] as const),
    ...WINDOWS.closed.map((start) => [start, 'closed'] as const),
    [WINDOWS.closedEarly, 'closedEarly'],
    [WINDOWS.open, 'open'],
  ]);
  const last = records.at(-1) as TopicRecord;
  const finalFlush = { throughOffset: last.offset, watermarkMs: last.event.timestamp };
  await writeVersion3(first, 0, records, kinds, finalFlush);
  const other: TopicRecord[] = [0, 1, 2, 3].map((i) => ({
    offset: 700 + i,
    event: {
      user_id: `p1-u${i % 3}`,
      activity_type: 'click',
      timestamp: (WINDOWS.closed[0] as number) + i * 1_000,
      event_id: `p1-${i}`,
    },
    receivedMs: (WINDOWS.closed[0] as number) + 60_000,
  }));
  await writeVersion3(first, 1, other, new Map([[WINDOWS.closed[0] as number, 'closed']]), {
    throughOffset: 703,
    watermarkMs: (WINDOWS.closed[0] as number) + 3_000,
  });
  await first.query(
    'INSERT INTO partition_epochs (window_seconds, source_partition, epoch) VALUES ($1, 0, 5), ($1, 1, 2)',
    [WINDOW_SEC],
  );
  const rowsBefore = await rows(first);
  const usersBefore = await membership(first, 'window_users');
  const eventsBefore = await membership(first, 'window_events');
  const totalsBefore = (
    await first.query('SELECT * FROM user_activity_window_totals ORDER BY window_start')
  ).rows;

  // The upgrade from two instances at once: one applies it, the other waits and finds it done.
  const upgrade = Array.from({ length: LATEST_SCHEMA_VERSION - 3 }, (_, i) => 4 + i);
  const applied = await Promise.all([migrate(first, schema), migrate(second, schema)]);
  assert.deepEqual(applied.map((versions) => versions.join()).sort(), ['', upgrade.join()]);
  assert.deepEqual(await migrate(second, schema), [], 'a second run changes nothing');
  const versions = await first.query('SELECT version FROM schema_migrations ORDER BY 1');
  assert.deepEqual(
    versions.rows.map((row) => row.version),
    [1, 2, 3, ...upgrade],
  );

  // Every minute row as it was, now of the site `default` in UTC.
  assert.deepEqual(await rows(first), rowsBefore);
  const zones = await first.query('SELECT DISTINCT site, time_zone FROM user_activity_metrics');
  assert.deepEqual(zones.rows, [{ site: DEFAULT_SITE, time_zone: 'UTC' }]);
  // The membership, row for row, in the partitions of its own days — none in the default ones.
  const dayPartition = (table: string, start: Date) =>
    `${table}_p${start.toISOString().slice(0, 10).replaceAll('-', '')}`;
  for (const [table, before] of [
    ['window_users', usersBefore],
    ['window_events', eventsBefore],
  ] as const) {
    const moved = await membership(first, table);
    assert.deepEqual(
      moved.map(({ part, ...row }) => row),
      before.map(({ part, ...row }) => row),
      `${table}: the same rows`,
    );
    for (const row of moved) assert.equal(row.part, dayPartition(table, row.window_start));
    assert.equal(new Set(moved.map((row) => row.part)).size, 2, 'two days');
  }
  const stray = await first.query(
    `SELECT (SELECT count(*) FROM window_users_default)::int AS users,
            (SELECT count(*) FROM window_events_default)::int AS events,
            (SELECT count(*) FROM window_events WHERE user_id IS NOT NULL
                                                  OR activity_type IS NOT NULL)::int AS typed`,
  );
  assert.deepEqual(stray.rows[0], { users: 0, events: 0, typed: 0 });
  // The views answer: the new per-site one as the old one did, and no rollups yet.
  const totalsAfter = (
    await first.query('SELECT * FROM user_activity_window_totals ORDER BY window_start')
  ).rows;
  assert.deepEqual(totalsAfter, totalsBefore);
  const siteTotals = (
    await first.query(
      `SELECT window_start, window_seconds, unique_users, page_view_count, event_count, is_final,
              updated_at
         FROM site_window_totals WHERE site = $1 ORDER BY window_start`,
      [DEFAULT_SITE],
    )
  ).rows;
  assert.deepEqual(siteTotals, totalsBefore);
  assert.deepEqual(await readPeriods(first, schema), []);

  // The aggregator goes on: it claims partition 0 and reads the migrated checkpoint.
  const checkpoint = await claimPartition(first, 0, WINDOW_SEC);
  assert.deepEqual(
    {
      epoch: checkpoint.epoch,
      resumeFrom: checkpoint.resumeFrom,
      replayFrom: checkpoint.replayFrom,
      openWindows: checkpoint.openWindows,
      closedOpenWindows: checkpoint.closedOpenWindows,
      legacyFinalThrough: checkpoint.legacyFinalThrough,
      closedThrough: checkpoint.closedThrough,
    },
    {
      epoch: 6,
      resumeFrom: last.offset + 1,
      replayFrom: records.find((record) => record.event.timestamp >= WINDOWS.open)?.offset,
      openWindows: [WINDOWS.open],
      closedOpenWindows: [WINDOWS.closedEarly],
      legacyFinalThrough: WINDOWS.legacy[1],
      closedThrough: WINDOWS.closedEarly,
    },
  );
  const state = new PartitionWindows(0, WINDOW_MS, LATENESS_MS, MAX_AGE_MS, checkpoint);
  // The replay of the open window's records, then new ones: late events for migrated windows
  // (a new user in the first closed window, a known user's new event in the second, a resend of
  // an event counted by version 3, one for the window closed early), one for a window made
  // final before membership (dead-lettered), more for the open window and a new one.
  const received = at(24, 8);
  const late = (user: string, start: number, id: string, type = 'click'): TopicRecord['event'] => ({
    user_id: user,
    activity_type: type,
    timestamp: start + 30_000,
    event_id: id,
  });
  const [c1, c2] = WINDOWS.closed as [number, number, number];
  const inWindow = (start: number) =>
    records.filter(
      (record) => record.event.timestamp >= start && record.event.timestamp < start + WINDOW_MS,
    );
  const resent = (inWindow(c1)[0] as TopicRecord).event;
  const knownInC2 = (inWindow(c2)[0] as TopicRecord).event.user_id;
  const newEvents: TopicRecord['event'][] = [
    late('late-user', c1, 'late-1', PAGE_VIEW),
    resent,
    late(knownInC2, c2, 'late-2'),
    late('legacy-user', WINDOWS.legacy[0] as number, 'late-legacy'),
    late('early-user', WINDOWS.closedEarly, 'late-early'),
    ...[0, 1, 2, 3, 4].map((i) => late(`u${i}`, WINDOWS.open, `open-${i}`)),
    ...[0, 1, 2, 3, 4].map((i) =>
      late(`n${i % 3}`, WINDOWS.open + WINDOW_MS, `new-${i}`, i % 2 ? 'click' : PAGE_VIEW),
    ),
  ];
  const replayed = records.filter((record) => record.offset >= (checkpoint.replayFrom as number));
  const batch = [
    ...replayed,
    ...newEvents.map((event, i) => ({ offset: last.offset + 1 + i, event, receivedMs: received })),
  ];
  const result = aggregateBatch(
    state.batchInput(
      packRecords(
        batch.map((record) => ({
          offset: record.offset,
          timestampMs: record.receivedMs,
          value: Buffer.from(JSON.stringify(record.event)),
        })),
      ),
    ),
  );
  assert.deepEqual(result.invalid, []);
  const legacyIndex = batch.findIndex((record) => record.event.event_id === 'late-legacy');
  assert.deepEqual(result.late, [legacyIndex], 'only the event for a legacy final window is late');
  state.merge(result, (batch.at(-1) as TopicRecord).offset);
  assert.equal(state.isReplaying, false);
  state.closeThrough(WINDOWS.open + WINDOW_MS);
  const snapshot = state.snapshot();
  const outcome = await writeFlush(first, [snapshot]);
  assert.ok(outcome.committed);
  state.settle(snapshot);
  // The two late events for closed windows and the one for the window closed early; the resend
  // of an event version 3 counted is found in the migrated membership and counts nothing.
  assert.equal(outcome.closedCounted, 3);

  // The late event of a new user in the first closed window: one more event, page view and user
  // in its minute row; the only event of its type in its hour (the window's own events were
  // counted before the upgrade, which kept no hours).
  const figuresOf = async (sql: string, params: unknown[]) =>
    (
      await first.query(
        `SELECT unique_users::int AS users, page_view_count::int AS page_views,
                               event_count::int AS events ${sql}`,
        params,
      )
    ).rows[0];
  const c1Before = rowsBefore.find(
    (row) => row.timestamp.getTime() === c1 && row.source_partition === 0,
  );
  assert.deepEqual(
    await figuresOf(`FROM user_activity_metrics WHERE "timestamp" = $1 AND source_partition = 0`, [
      new Date(c1).toISOString(),
    ]),
    {
      users: c1Before.unique_users + 1,
      page_views: Number(c1Before.page_view_count) + 1,
      events: Number(c1Before.event_count) + 1,
    },
  );
  assert.deepEqual(
    await figuresOf(
      `FROM period_metrics WHERE period = 'hour' AND period_start = $1 AND activity_type = $2`,
      [new Date(c1 - (c1 % 3_600_000)).toISOString(), PAGE_VIEW],
    ),
    { users: 1, page_views: 1, events: 1 },
  );

  // Minute figures: version 3's events and the new ones, each once, the legacy one left out.
  const counted = new RollupOracle(WINDOW_MS);
  for (const record of [...records, ...other])
    counted.add(asSiteEvent(record.event, record.offset));
  batch.forEach((record, i) => {
    if (i !== legacyIndex) counted.add(asSiteEvent(record.event, record.offset));
  });
  const minutes = await readMinutes(first, schema);
  assert.ok(
    JSON.stringify(minutes) === JSON.stringify(counted.expectedMinutes()),
    `minute figures differ:\n  ${figureDifferences(minutes, counted.expectedMinutes())}`,
  );
  // Hours and days: the events stored since the upgrade — the late ones, and every event of the
  // windows that closed since (the open window, rebuilt by the replay, and the new one).
  const rolled = new RollupOracle(WINDOW_MS);
  const sinceUpgrade = batch.filter(
    (record, i) =>
      i !== legacyIndex &&
      (record.offset > last.offset || record.event.timestamp >= WINDOWS.open) &&
      record.event.event_id !== resent.event_id,
  );
  for (const record of sinceUpgrade) rolled.add(asSiteEvent(record.event, record.offset));
  const periods: Figure[] = await readPeriods(first, schema);
  assert.ok(
    JSON.stringify(periods) === JSON.stringify(rolled.expectedPeriods()),
    `hour and day figures differ:\n  ${figureDifferences(periods, rolled.expectedPeriods())}`,
  );
  assert.equal(outcome.rollups.events, sinceUpgrade.length);
  t.diagnostic(`${minutes.length} minute and ${periods.length} hour and day figures`);

  // The late event, sent again: counted once, whatever comes.
  const again = aggregateBatch(
    state.batchInput(
      packRecords([
        {
          offset: (batch.at(-1) as TopicRecord).offset + 1,
          timestampMs: received + 1_000,
          value: Buffer.from(JSON.stringify(newEvents[0])),
        },
      ]),
    ),
  );
  assert.deepEqual([again.invalid, again.late], [[], []]);
  state.merge(again, (batch.at(-1) as TopicRecord).offset + 1);
  const repeat = await writeFlush(first, [state.snapshot()]);
  assert.equal(repeat.closedCounted, 0);
  assert.equal(repeat.rollups.events, 0);
  assert.deepEqual(await readMinutes(first, schema), minutes);
  assert.deepEqual(await readPeriods(first, schema), periods);
  // Everything stored since the upgrade is in its day's partitions too.
  for (const table of ['window_users', 'window_events'] as const) {
    for (const row of await membership(first, table)) {
      assert.equal(row.part, dayPartition(table, row.window_start));
    }
  }
});
