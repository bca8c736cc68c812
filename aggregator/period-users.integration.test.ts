/**
 * The users of hours and days held in memory between flushes (`period-users.ts`) and stored as
 * lists: any user id survives the lists' encoding; the held sets stay exact across a flush that
 * fails between its writes and COMMIT, a new ownership epoch and a bound smaller than the
 * periods; a sealed day's sketch grows by its late users; and a database whose period users are
 * stored one row per user (schema version 5) is migrated to lists that later flushes count
 * against. Real flush path (PartitionWindows fed by the worker logic, writeFlush) into
 * PostgreSQL, against sets of the users sent.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import pg from 'pg';
import { uniqueUsersOverRange } from '../shared/range-uniques.js';
import { stackFromEnv } from '../shared/testing.js';
import { aggregateBatch, packRecords } from './batch-aggregator.js';
import { type PauseBeforeCommit, type RollupSettings, writeFlush } from './copy-writer.js';
import { migrate } from './migrations.js';
import { claimPartition } from './partition-recovery.js';
import { PeriodUserCache } from './period-users.js';
import { TestSchemas } from './test-schemas.js';
import { PartitionWindows } from './window-state.js';

const stack = stackFromEnv();
const WINDOW_SEC = 60;
const WINDOW_MS = WINDOW_SEC * 1000;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** A UTC midnight: the days of site `default` (UTC). */
const D0 = Date.UTC(2026, 10, 2);
const schemas = new TestSchemas(stack.databaseUrl, 'period_users');
after(() => schemas.dropAll());

interface Sent {
  user: string;
  type: string;
  at: number;
}

interface Setup {
  client: pg.Client;
  schema: string;
  state: PartitionWindows;
  offset: number;
  rollups: RollupSettings;
}

async function setUp(cache: PeriodUserCache, through?: number): Promise<Setup> {
  const schema = schemas.name();
  const client = await schemas.connect(schema);
  await migrate(client, schema, through === undefined ? {} : { through });
  return { client, schema, state: await claim(client), offset: 0, rollups: rollups(cache) };
}

function rollups(cache: PeriodUserCache): RollupSettings {
  return { maxActivityTypes: 100, periodUsers: cache };
}

async function claim(client: pg.Client): Promise<PartitionWindows> {
  const checkpoint = await claimPartition(client, 0, WINDOW_SEC);
  return new PartitionWindows(0, WINDOW_MS, 10_000, 7 * DAY_MS, checkpoint);
}

/**
 * Counts `events` in memory and closes every window they reach (the hour and day around the last
 * stay open, and held); the flush is the caller's.
 */
function consume(setup: Setup, events: readonly Sent[], closeThrough?: number): void {
  const records = events.map((event, j) => ({
    offset: setup.offset + j,
    timestampMs: event.at,
    value: Buffer.from(
      JSON.stringify({
        user_id: event.user,
        activity_type: event.type,
        timestamp: event.at,
        event_id: `e${setup.offset + j}`,
      }),
    ),
  }));
  const result = aggregateBatch(setup.state.batchInput(packRecords(records)));
  assert.deepEqual(result.invalid, []);
  setup.state.merge(result, setup.offset + events.length - 1);
  setup.offset += events.length;
  setup.state.closeThrough(
    closeThrough ?? Math.max(...events.map((event) => event.at)) + WINDOW_MS,
  );
}

async function flush(setup: Setup, pause?: PauseBeforeCommit): Promise<void> {
  const snapshot = setup.state.snapshot();
  try {
    assert.ok((await writeFlush(setup.client, [snapshot], setup.rollups, pause)).committed);
  } catch (err) {
    setup.state.restore(snapshot);
    throw err;
  }
  setup.state.settle(snapshot);
}

/** Every hour and day figure of site `default`, against the distinct users and events sent. */
async function assertExact(client: pg.Client, sent: readonly Sent[]): Promise<number> {
  const truth = new Map<string, { users: Set<string>; events: number }>();
  for (const event of sent) {
    const hour = Math.floor(event.at / HOUR_MS) * HOUR_MS;
    const day = Math.floor(event.at / DAY_MS) * DAY_MS;
    for (const key of [`hour ${hour}`, `day ${day}`].flatMap((k) => [
      `${k} `,
      `${k} ${event.type}`,
    ])) {
      const entry = truth.get(key) ?? { users: new Set<string>(), events: 0 };
      truth.set(key, entry);
      entry.users.add(event.user);
      entry.events++;
    }
  }
  const stored = await client.query<{
    period: string;
    start_ms: string;
    activity_type: string;
    unique_users: string;
    event_count: string;
    listed: string;
    distinct_listed: string;
  }>(
    `SELECT t.period, (extract(epoch FROM t.period_start) * 1000)::bigint AS start_ms,
            t.activity_type, t.unique_users, t.event_count,
            (SELECT count(*) FROM period_users l, unnest(l.user_ids) u
              WHERE l.site = t.site AND l.period = t.period AND l.period_start = t.period_start
                AND l.activity_type = t.activity_type) AS listed,
            (SELECT count(DISTINCT u) FROM period_users l, unnest(l.user_ids) u
              WHERE l.site = t.site AND l.period = t.period AND l.period_start = t.period_start
                AND l.activity_type = t.activity_type) AS distinct_listed
       FROM site_period_totals t WHERE t.site = 'default'`,
  );
  assert.equal(stored.rows.length, truth.size);
  for (const row of stored.rows) {
    const key = `${row.period} ${row.start_ms} ${row.activity_type}`;
    const expected = truth.get(key);
    assert.ok(expected, key);
    assert.equal(Number(row.unique_users), expected.users.size, key);
    assert.equal(Number(row.event_count), expected.events, key);
    // Each user listed once in its period: the lists are what later flushes count against.
    assert.equal(Number(row.listed), expected.users.size, key);
    assert.equal(Number(row.distinct_listed), expected.users.size, key);
  }
  return stored.rows.length;
}

/** `count` events of users `prefix0..prefix{population-1}` spread over `hours` from `fromMs`. */
function events(prefix: string, count: number, population: number, fromMs: number, hours = 3) {
  return Array.from({ length: count }, (_, i) => ({
    user: `${prefix}${(i * 7919) % population}`,
    type: ['view', 'click', 'buy'][i % 3] as string,
    at: fromMs + Math.floor((i / count) * hours * HOUR_MS),
  }));
}

test('user ids of any characters are stored in the lists as they were sent', async () => {
  const setup = await setUp(new PeriodUserCache());
  const odd = [
    'plain',
    'with "quotes"',
    'back\\slash',
    'ends with \\',
    'comma,brace{}',
    'tab\there',
    'new\nline',
    'carriage\rreturn',
    '  spaces  ',
    'NULL',
    '',
    'émoji 🎉',
    '"',
    '\\"',
  ].filter((user) => user !== '');
  const sent = odd.map((user, i) => ({ user, type: 'view', at: D0 + i * 1000 }));
  consume(setup, sent);
  await flush(setup);
  const listed = await setup.client.query<{ user_id: string }>(
    'SELECT u AS user_id FROM period_users l, unnest(l.user_ids) u WHERE l.period = $1 AND l.activity_type = $2',
    ['day', ''],
  );
  assert.deepEqual(listed.rows.map((row) => row.user_id).sort(), [...odd].sort());
  // A later flush with the same users adds none: the held set recognises them.
  consume(
    setup,
    odd.map((user, i) => ({ user, type: 'view', at: D0 + 60_000 + i })),
  );
  await flush(setup);
  await assertExact(setup.client, [
    ...sent,
    ...odd.map((user, i) => ({ user, type: 'view', at: D0 + 60_000 + i })),
  ]);
});

test('the held users stay exact across a failed flush and a new epoch', async (t) => {
  const cache = new PeriodUserCache();
  const setup = await setUp(cache);
  const sent: Sent[] = [];
  consume(setup, events('a', 3000, 1200, D0));
  await flush(setup);
  sent.push(...events('a', 3000, 1200, D0));
  assert.ok(cache.heldUsers > 0, 'the open day is held');

  // A flush that fails after its rollups, before COMMIT: its backend is terminated.
  const admin = new pg.Client({ connectionString: stack.databaseUrl });
  await admin.connect();
  t.after(() => admin.end());
  const failing = events('a', 2000, 1500, D0 + HOUR_MS);
  consume(setup, failing);
  const pid = (await setup.client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]
    ?.pid;
  await assert.rejects(
    flush(setup, {
      ms: 2000,
      onPause: () => {
        admin.query('SELECT pg_terminate_backend($1)', [pid]).catch(() => {});
      },
    }),
  );
  assert.equal(cache.heldUsers, 0, 'a failed flush forgets every held set');
  setup.client = await schemas.connect(setup.schema);
  await flush(setup);
  sent.push(...failing);
  assert.ok(cache.heldUsers > 0);
  assert.ok((await assertExact(setup.client, sent)) > 0);

  // Another instance takes the partition and counts users into the same day (some through the
  // windows this one closed); then this one takes it back under a newer epoch: the sets it held
  // under the old epoch lack those users and must not be trusted.
  const other: Setup = {
    client: await schemas.connect(setup.schema),
    schema: setup.schema,
    state: await claim(setup.client),
    offset: setup.offset,
    rollups: rollups(new PeriodUserCache()),
  };
  const others = events('b', 1000, 600, D0 + 30 * 60_000);
  consume(other, others);
  await flush(other);
  sent.push(...others);
  setup.state = await claim(setup.client);
  setup.offset = other.offset;
  const back = events('b', 1500, 900, D0 + 2 * HOUR_MS);
  consume(setup, back, D0 + DAY_MS);
  await flush(setup);
  sent.push(...back);
  await assertExact(setup.client, sent);
});

test('past the bound the oldest periods are forgotten, and read again when needed', async () => {
  // A bound below one day's users: the day is forgotten after each flush and read again.
  const cache = new PeriodUserCache(1000);
  const setup = await setUp(cache);
  const sent: Sent[] = [];
  for (const [i, batch] of [
    events('c', 3000, 1200, D0),
    events('c', 3000, 2000, D0 + 2 * HOUR_MS),
    events('d', 2000, 800, D0 + 4 * HOUR_MS),
  ].entries()) {
    consume(setup, batch, i === 2 ? D0 + DAY_MS : undefined);
    await flush(setup);
    sent.push(...batch);
    assert.ok(cache.heldUsers <= 1000, `${cache.heldUsers} held`);
  }
  await assertExact(setup.client, sent);
});

test('period users stored one row per user (version 5) are migrated into lists that count', async () => {
  const cache = new PeriodUserCache();
  const setup = await setUp(cache, 5);
  const before = events('m', 2000, 800, D0);
  // Version 5's flush path is gone; its rows are written as it wrote them.
  await setup.client.query(
    `INSERT INTO period_users (source_partition, site, period, period_start, activity_type, user_id)
     SELECT 0, 'default', p.period, p.start, p.activity_type, e.user_id
       FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS e(user_id, event_type, at)
      CROSS JOIN LATERAL (VALUES
        ('hour', date_trunc('hour', e.at), ''), ('day', date_trunc('day', e.at), ''),
        ('hour', date_trunc('hour', e.at), e.event_type),
        ('day', date_trunc('day', e.at), e.event_type)) AS p(period, start, activity_type)
     ON CONFLICT DO NOTHING`,
    [
      before.map((e) => e.user),
      before.map((e) => e.type),
      before.map((e) => new Date(e.at).toISOString()),
    ],
  );
  await setup.client.query(
    `INSERT INTO period_metrics (site, period, period_start, activity_type, source_partition,
                                 time_zone, period_end, unique_users, page_view_count, event_count)
     SELECT 'default', period, period_start, activity_type, 0, 'UTC',
            period_start + CASE period WHEN 'hour' THEN interval '1 hour' ELSE interval '1 day' END,
            count(*), 0, 0
       FROM period_users GROUP BY period, period_start, activity_type`,
  );
  await setup.client.query(
    `UPDATE period_metrics m SET event_count = e.events
       FROM (SELECT p.period, p.start, p.activity_type, count(*) AS events
               FROM unnest($1::text[], $2::timestamptz[]) AS e(event_type, at)
              CROSS JOIN LATERAL (VALUES
                ('hour', date_trunc('hour', e.at), ''), ('day', date_trunc('day', e.at), ''),
                ('hour', date_trunc('hour', e.at), e.event_type),
                ('day', date_trunc('day', e.at), e.event_type)) AS p(period, start, activity_type)
              GROUP BY 1, 2, 3) e
      WHERE m.period = e.period AND m.period_start = e.start AND m.activity_type = e.activity_type`,
    [before.map((e) => e.type), before.map((e) => new Date(e.at).toISOString())],
  );
  assert.deepEqual(await migrate(setup.client, setup.schema), [6]);
  const lists = await setup.client.query<{ n: string }>('SELECT count(*) AS n FROM period_users');
  // One list per period: 3 hours and a day, every type and each of 3.
  assert.equal(Number(lists.rows[0]?.n), 16);
  // Windows were closed under version 5 (their membership is in the rows above): new events
  // from the same and new users count against the migrated lists.
  setup.state = await claim(setup.client);
  const later = events('m', 1500, 1000, D0 + 30 * 60_000, 2);
  consume(setup, later);
  await flush(setup);
  await assertExact(setup.client, [...before, ...later]);
});

test('late users of a sealed day grow its sketch: a range over it stays exact', async () => {
  const setup = await setUp(new PeriodUserCache());
  const sent: Sent[] = [];
  // Two days, each closed and sealed: the second day's windows close past the first's end.
  for (const day of [0, 1]) {
    const batch = events(`u${day}-`, 600, 300, D0 + day * DAY_MS + HOUR_MS);
    consume(setup, batch, D0 + (day + 1) * DAY_MS + HOUR_MS);
    await flush(setup);
    sent.push(...batch);
  }
  const sealed = await setup.client.query<{ n: string }>(
    `SELECT count(*) AS n FROM period_metrics WHERE period = 'day' AND users_hll IS NOT NULL`,
  );
  assert.ok(Number(sealed.rows[0]?.n) >= 2, 'both days sealed');
  // Late events for the first day: users new to it and users it has.
  const late = events('late-', 200, 150, D0 + 5 * HOUR_MS, 1).map((event, i) =>
    i % 2 === 0 ? event : { ...event, user: `u0-${i % 300}` },
  );
  consume(setup, late, D0 + 2 * DAY_MS);
  await flush(setup);
  sent.push(...late);
  await assertExact(setup.client, sent);
  const answer = await uniqueUsersOverRange(setup.client, {
    site: 'default',
    period: 'day',
    fromMs: D0,
    toMs: D0 + 2 * DAY_MS,
  });
  assert.equal(answer.exact, true);
  assert.equal(answer.uniqueUsers, new Set(sent.map((event) => event.user)).size);
});
