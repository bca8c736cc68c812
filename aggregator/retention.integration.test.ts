/**
 * Retention: rows and membership past their retention disappear without blocking writes. A run
 * (`enforceRetentionOnce`, on the defaults of the config reader) drops the membership partitions
 * of days no late event can reach any more, deletes the default partitions' stray rows of those
 * days, the minute rows past MINUTE retention (each partition's newest kept: it holds the
 * partition's position), the hour rows past HOUR retention and, only when a retention is set, the
 * day rows; and creates the partitions of the days ahead. Meanwhile other connections keep
 * writing real flushes (`PartitionWindows` fed by the worker logic, `writeFlush`): none waits
 * on retention's locks, and creating the days ahead never deadlocks with them. A second
 * instance's run is skipped. Every figure expected is derived from the rules stated in
 * `retention.ts` and the rows the test wrote.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type pg from 'pg';
import {
  figureDifferences,
  RollupOracle,
  readMinutes,
  readPeriods,
  type SiteEvent,
} from '../e2e/rollup-oracle.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { stackFromEnv, waitFor } from '../shared/testing.js';
import { aggregateBatch, packRecords } from './batch-aggregator.js';
import { readAggregatorConfig } from './config.js';
import { writeFlush } from './copy-writer.js';
import { migrate } from './migrations.js';
import { claimPartition } from './partition-recovery.js';
import {
  enforceRetentionOnce,
  ensureDailyPartitions,
  membershipHorizon,
  type RetentionOutcome,
  type RetentionSettings,
} from './retention.js';
import { TestSchemas } from './test-schemas.js';
import { PartitionWindows } from './window-state.js';

const stack = stackFromEnv();
const MINUTE_MS = 60_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const schemas = new TestSchemas(stack.databaseUrl, 'retention');
after(() => schemas.dropAll());

/** The settings the aggregator runs with when nothing is configured. */
const config = readAggregatorConfig({});
const DEFAULTS: RetentionSettings = {
  maxEventAgeMs: config.maxEventAgeMs,
  minuteRowsMs: config.minuteRowsRetentionMs,
  hourRowsMs: config.hourRowsRetentionMs,
  dayRowsMs: config.dayRowsRetentionMs,
};
/** The run's clock: a fixed instant, so that every day below is the same on every run. */
const NOW = Date.UTC(2031, 0, 15, 12, 0, 0);
const HORIZON = membershipHorizon(NOW, DEFAULTS.maxEventAgeMs);
/** Partitions of days ending at or before this are dropped: a day after the horizon passed them. */
const DROP_BEFORE = HORIZON - DAY_MS;
/** A day period (site zones reach 14 hours west of UTC) takes events two days longer. */
const PERIOD_DROP_BEFORE = DROP_BEFORE - 2 * DAY_MS;
const MINUTE_CUTOFF = NOW - DEFAULTS.minuteRowsMs;
const HOUR_CUTOFF = NOW - DEFAULTS.hourRowsMs;
/** Membership rows written into each old day's partitions, per table. */
const ROWS_PER_DAY = 200;
/**
 * The longest a concurrent flush may take. Unblocked, one takes a few hundred milliseconds at
 * most here; a drop or a creation waits at most `lock_timeout` (500 ms) for its lock, and the
 * flushes queued behind it no longer than that. Retention that blocked writes — a lock held
 * across its batches, a lock request waiting without a bound behind a slow transaction — would
 * hold a flush for much of the run, which lasts several seconds. So this is a check that nothing
 * waits on retention's locks, not a speed test.
 */
const FLUSH_BOUND_MS = 2_000;

const day = (ms: number): string => new Date(ms).toISOString().slice(0, 10).replaceAll('-', '');
const iso = (ms: number): string => new Date(ms).toISOString();

/** The membership partitions in the schema, by name (defaults included). */
async function partitions(client: pg.Client): Promise<string[]> {
  const result = await client.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i
       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
      WHERE p.relnamespace = to_regnamespace(current_schema())
        AND p.relname IN ('window_users', 'window_events', 'period_users')
      ORDER BY 1`,
  );
  return result.rows.map((row) => row.name);
}

async function count(client: pg.Client, sql: string, params: unknown[] = []): Promise<number> {
  const result = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${sql}`, params);
  return Number(result.rows[0]?.n);
}

/** The old days that get membership partitions: a month up to the horizon's day. */
const OLD_DAYS = Array.from({ length: 31 }, (_, i) => HORIZON - (30 - i) * DAY_MS);

/** Fills the membership partitions of `OLD_DAYS`, `ROWS_PER_DAY` rows per table and day. */
async function writeOldMembership(client: pg.Client): Promise<void> {
  for (const start of OLD_DAYS) {
    await client.query('SELECT activity_ensure_day_partitions($1::date)', [iso(start)]);
  }
  const days = [iso(OLD_DAYS[0] as number), iso(OLD_DAYS.at(-1) as number)];
  // 20 windows of 10 users a day; period users in the day's first 20 hours.
  const grid = `generate_series($1::timestamptz, $2::timestamptz, interval '1 day') d,
                generate_series(0, 19) w, generate_series(0, ${ROWS_PER_DAY / 20 - 1}) u`;
  await client.query(
    `INSERT INTO window_users (window_start, window_seconds, source_partition, site, user_id)
     SELECT d + w * interval '1 minute', 60, 0, 'old', 'u' || u FROM ${grid}`,
    days,
  );
  await client.query(
    `INSERT INTO window_events (window_start, window_seconds, source_partition, site, page_view,
                                user_id, activity_type, event_id)
     SELECT d + w * interval '1 minute', 60, 0, 'old', u = 0, 'u' || u, 'click', 'e' || w || '-' || u
       FROM ${grid}`,
    days,
  );
  await client.query(
    `INSERT INTO period_users (source_partition, site, period, period_start, activity_type, user_ids)
     SELECT 0, 'old', 'hour', d + w * interval '1 hour', '', ARRAY['u' || u] FROM ${grid}`,
    days,
  );
}

/**
 * Rows that went to the default partitions (their day had no partition): on days long before
 * the horizon (to delete) and on days after it without partitions (to keep). Returns how many
 * are to be deleted.
 */
async function writeStrayRows(client: pg.Client): Promise<{ deleted: number; kept: number }> {
  const old = [10, 19].map((n) => (OLD_DAYS[0] as number) - n * DAY_MS + 5 * MINUTE_MS);
  const recent = [HORIZON + DAY_MS, HORIZON + 3 * DAY_MS].map((start) => start + 7 * MINUTE_MS);
  for (const start of [...old, ...recent]) {
    const at = [iso(start)];
    await client.query(
      `INSERT INTO window_users VALUES ($1, 60, 1, 'stray', 'x'), ($1, 60, 1, 'stray', 'y')`,
      at,
    );
    await client.query(
      `INSERT INTO window_events VALUES ($1, 60, 1, 'stray', false, 'x', 'click', 'ex')`,
      at,
    );
    await client.query(
      `INSERT INTO period_users VALUES (1, 'stray', 'day', $1, '', ARRAY['x'])`,
      at,
    );
  }
  // Four rows per instant (two users, an event, a period user).
  return { deleted: old.length * 4, kept: recent.length * 4 };
}

/**
 * Partition `p`'s minute rows of `site`: minute k (from `firstK`, `minutes` of them) starts k
 * minutes after `from` and reflects the partition through offset 1000 + k.
 */
async function writeMinuteRows(
  client: pg.Client,
  p: number,
  from: number,
  minutes: number,
  site = 'old',
  firstK = 0,
): Promise<void> {
  await client.query(
    `INSERT INTO user_activity_metrics ("timestamp", window_seconds, source_partition, site,
       unique_users, page_view_count, event_count, first_offset, through_offset, is_final,
       membership_stored)
     SELECT $1::timestamptz + k * interval '1 minute', 60, $2, $4, 1, 0, 1, 1000 + k, 1000 + k,
            true, true
       FROM generate_series($5::int, $5::int + $3::int - 1) k`,
    [iso(from), p, minutes, site, firstK],
  );
}

/** `n` rows of `period`, one an hour or a day from `from`. */
async function writePeriodRows(
  client: pg.Client,
  period: 'hour' | 'day',
  from: number,
  n: number,
): Promise<void> {
  await client.query(
    `INSERT INTO period_metrics (site, period, period_start, activity_type, source_partition,
       time_zone, period_end, unique_users, page_view_count, event_count)
     SELECT 'old', $1, $2::timestamptz + k * $3::interval, '', 0, 'UTC',
            $2::timestamptz + (k + 1) * $3::interval, 1, 0, 1
       FROM generate_series(0, $4::int - 1) k`,
    [period, iso(from), period === 'hour' ? '1 hour' : '1 day', n],
  );
}

/** A writer like an aggregator's flushes: a window of events at a time, closed and written. */
class LiveWriter {
  readonly oracle = new RollupOracle(MINUTE_MS);
  readonly durations: number[] = [];
  private next = 0;

  private constructor(
    private readonly client: pg.Client,
    private readonly state: PartitionWindows,
    private readonly firstWindow: number,
    readonly sites: string,
  ) {}

  /**
   * A writer of source partition `partition` on `client`, claimed as an aggregator claims it on
   * assignment, writing windows from `firstWindow` for the sites `<sites>-a` and `<sites>-b`.
   */
  static async claim(
    client: pg.Client,
    partition: number,
    firstWindow: number,
    sites = 'live',
  ): Promise<LiveWriter> {
    const checkpoint = await claimPartition(client, partition, MINUTE_MS / 1000);
    const state = new PartitionWindows(
      partition,
      MINUTE_MS,
      config.allowedLatenessMs,
      DEFAULTS.maxEventAgeMs,
      checkpoint,
    );
    return new LiveWriter(client, state, firstWindow, sites);
  }

  /**
   * One flush: 200 events of two sites in the next window, which closes. Returns how long
   * `writeFlush` took; `pause` holds it before its COMMIT, as a slow flush would.
   */
  async flushOnce(pause?: { ms: number; onPause: () => void }): Promise<number> {
    const window = this.firstWindow + this.next * MINUTE_MS;
    const events: SiteEvent[] = Array.from({ length: 200 }, (_, i) => ({
      site: `${this.sites}-${i % 2 === 0 ? 'a' : 'b'}`,
      time_zone: 'UTC',
      user_id: `v${(i * 7 + this.next) % 60}`,
      activity_type: i % 5 === 0 ? PAGE_VIEW : 'click',
      timestamp: window + i * 100,
      event_id: `w${this.next}-${i}`,
    }));
    const from = this.state.throughOffset + 1;
    const result = aggregateBatch(
      this.state.batchInput(
        packRecords(
          events.map((event, i) => ({
            offset: from + i,
            timestampMs: event.timestamp,
            value: Buffer.from(JSON.stringify(event)),
          })),
        ),
        membershipHorizon(NOW, DEFAULTS.maxEventAgeMs),
      ),
    );
    assert.deepEqual([result.invalid, result.late], [[], []]);
    this.state.merge(result, from + events.length - 1);
    this.state.closeThrough(window);
    for (const event of events) this.oracle.add(event);
    this.next++;
    const snapshot = this.state.snapshot();
    const started = performance.now();
    const outcome = await writeFlush(this.client, [snapshot], undefined, pause);
    const ms = performance.now() - started;
    assert.ok(outcome.committed, 'a concurrent flush committed');
    assert.equal(outcome.rollups.events, events.length);
    this.state.settle(snapshot);
    this.durations.push(ms);
    return ms;
  }
}

/** Whether `pid` holds the session lock that `enforceRetentionOnce` takes for `schema`. */
async function holdsRetentionLock(client: pg.Client, pid: number, schema: string) {
  const held = await count(
    client,
    `pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1 AND objsubid = 1
        AND objid::bigint = (hashtext($2)::bigint & 4294967295)`,
    [pid, `retention:${schema}`],
  );
  return held > 0 ? true : undefined;
}

/** Whether `pid` waits for a lock. */
async function waitsForLock(client: pg.Client, pid: number) {
  return (await count(client, 'pg_locks WHERE pid = $1 AND NOT granted', [pid])) > 0
    ? true
    : undefined;
}

async function backendPid(client: pg.Client): Promise<number> {
  const result = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return Number(result.rows[0]?.pid);
}

describe('retention', () => {
  test('rows and membership past their retention disappear without blocking writes', async (t) => {
    // The horizon is a UTC midnight a day (a lagging consumer's allowance) past the age bound.
    assert.equal(HORIZON % DAY_MS, 0);
    assert.ok(HORIZON <= NOW - DEFAULTS.maxEventAgeMs - DAY_MS);
    assert.ok(HORIZON > NOW - DEFAULTS.maxEventAgeMs - 2 * DAY_MS);
    assert.equal(DEFAULTS.dayRowsMs, null, 'day rows are kept forever by default');

    const schema = schemas.name();
    const setup = await schemas.connect(schema);
    await migrate(setup, schema);
    // Yesterday's run created yesterday, today and tomorrow; this run creates the day after.
    await ensureDailyPartitions(setup, NOW - DAY_MS);
    await writeOldMembership(setup);
    const stray = await writeStrayRows(setup);
    // Minute rows: partitions 0-2 from 20,000 minutes before the cut-off to 600 after; partition
    // 3 stopped long ago (its newest rows, two sites of one flush, hold its position).
    const OLD_MINUTES = 20_000;
    for (const p of [0, 1, 2]) {
      await writeMinuteRows(setup, p, MINUTE_CUTOFF - OLD_MINUTES * MINUTE_MS, OLD_MINUTES + 600);
    }
    const stoppedFrom = MINUTE_CUTOFF - OLD_MINUTES * MINUTE_MS;
    const STOPPED_ROWS = 2_000;
    const newestK = STOPPED_ROWS - 1;
    await writeMinuteRows(setup, 3, stoppedFrom, STOPPED_ROWS);
    await writeMinuteRows(setup, 3, stoppedFrom, 1, 'old2', newestK);
    const expectedMinuteDeletes = 3 * OLD_MINUTES + STOPPED_ROWS - 1;
    // Hour rows: 30,000 before the cut-off, 100 from it. Day rows: four years, to yesterday.
    const OLD_HOURS = 30_000;
    await writePeriodRows(setup, 'hour', HOUR_CUTOFF - OLD_HOURS * HOUR_MS, OLD_HOURS + 100);
    const DAY_ROWS = 4 * 365;
    await writePeriodRows(setup, 'day', NOW - (NOW % DAY_MS) - DAY_ROWS * DAY_MS, DAY_ROWS);
    // Statistics, as autovacuum keeps them on tables that grew over months. Without any, the
    // planner guesses a source partition holds a few rows and finds each old row's partition
    // maximum by reading the whole partition: 25 s a batch of 5,000 here, 20 ms with them.
    await setup.query('ANALYZE');
    const before = await partitions(setup);

    // The writer: partition 7, windows of today, claimed as an aggregator claims it.
    const writer = await LiveWriter.claim(await schemas.connect(schema), 7, NOW - 90 * MINUTE_MS);
    for (let i = 0; i < 3; i++) await writer.flushOnce();
    const quiet = Math.max(...writer.durations);
    const quietFlushes = writer.durations.length;

    const retention = await schemas.connect(schema);
    const other = await schemas.connect(schema);
    const pid = await backendPid(retention);
    let runMs = 0;
    let running = true;
    const started = performance.now();
    const run = enforceRetentionOnce(retention, DEFAULTS, NOW).finally(() => {
      runMs = performance.now() - started;
      running = false;
    });
    const writes = (async () => {
      let during = 0;
      while (running) {
        await writer.flushOnce();
        during++;
      }
      return during;
    })();
    // A second instance's run while the first holds the lock: skipped.
    await waitFor(() => holdsRetentionLock(other, pid, schema), {
      timeoutMs: 10_000,
      intervalMs: 20,
      what: 'the first run to hold the retention lock',
    });
    const skipped = await enforceRetentionOnce(other, DEFAULTS, NOW);
    assert.equal(skipped, undefined, 'a concurrent run is skipped');
    const [first, during] = await Promise.all([run, writes]);
    assert.ok(first !== undefined);
    // The flushes made while retention ran; the ones before it (the first after the bulk load
    // above may pay for a checkpoint) are the baseline.
    const slowest = Math.max(...writer.durations.slice(quietFlushes));
    t.diagnostic(
      `retention run ${Math.round(runMs)} ms: ${JSON.stringify(first)}; ${during} flushes meanwhile, ` +
        `slowest ${Math.round(slowest)} ms (${Math.round(quiet)} ms before the run)`,
    );
    assert.ok(during >= 3, `flushes kept going during the run (${during})`);
    assert.ok(slowest < FLUSH_BOUND_MS, `no flush waited on retention (slowest ${slowest} ms)`);
    if (runMs <= FLUSH_BOUND_MS) {
      t.diagnostic('the run was shorter than the bound: a blocking run would have gone unseen');
    }

    // A drop that could not get its lock within lock_timeout waits for the next run: this one,
    // with nothing else running, finds nothing else to do.
    const second = await enforceRetentionOnce(retention, DEFAULTS, NOW);
    assert.ok(second !== undefined, 'the lock was released');

    // What disappeared: the partitions of days before the cut-offs, nothing else.
    const ahead = [-1, 0, 1, 2].map((n) => day(NOW - (NOW % DAY_MS) + n * DAY_MS));
    const kept = ['period_users_default', 'window_events_default', 'window_users_default'];
    for (const start of OLD_DAYS) {
      if (start + DAY_MS > DROP_BEFORE) {
        kept.push(`window_users_p${day(start)}`, `window_events_p${day(start)}`);
      }
      if (start + DAY_MS > PERIOD_DROP_BEFORE) kept.push(`period_users_p${day(start)}`);
    }
    for (const d of ahead)
      kept.push(`window_users_p${d}`, `window_events_p${d}`, `period_users_p${d}`);
    const after = await partitions(setup);
    assert.deepEqual(after, [...kept].sort());
    const dropped = before.filter((name) => !after.includes(name));
    assert.equal(first.partitionsDropped + second.partitionsDropped, dropped.length);
    assert.ok(first.partitionsDropped > 0);
    // The tightest days: the last dropped ends exactly at the cut-off, the first kept a day later.
    assert.ok(dropped.includes(`window_users_p${day(DROP_BEFORE - DAY_MS)}`));
    assert.ok(after.includes(`window_users_p${day(DROP_BEFORE)}`));
    assert.ok(dropped.includes(`period_users_p${day(PERIOD_DROP_BEFORE - DAY_MS)}`));
    assert.ok(after.includes(`period_users_p${day(PERIOD_DROP_BEFORE)}`));
    // Today and the two days ahead exist; only the day after tomorrow was missing. The first
    // run creates it unless the flushes kept its lock past lock_timeout on every attempt (a
    // slow machine); then the next run does, as the aggregator's next hourly run would.
    assert.equal(first.partitionsCreated + second.partitionsCreated, 3);
    // The kept days' membership is all there.
    for (const name of kept.filter((n) => OLD_DAYS.some((start) => n.endsWith(day(start))))) {
      assert.equal(await count(setup, name), ROWS_PER_DAY, name);
    }

    // Rows: minute rows before the cut-off but each partition's newest, hour rows before theirs,
    // the stray rows of old days; no day rows. The second run deleted nothing more.
    assert.equal(first.rowsDeleted, expectedMinuteDeletes + OLD_HOURS + stray.deleted);
    assert.equal(second.rowsDeleted, 0);
    const oldMinutes = `user_activity_metrics WHERE site IN ('old', 'old2')`;
    assert.equal(await count(setup, oldMinutes), 3 * 600 + 2);
    assert.equal(
      await count(setup, `${oldMinutes} AND "timestamp" < $1`, [iso(MINUTE_CUTOFF)]),
      2,
      'only the stopped partition position rows are older than the cut-off',
    );
    assert.equal(
      await count(
        setup,
        `user_activity_metrics WHERE source_partition = 3 AND through_offset = $1`,
        [1000 + newestK],
      ),
      2,
    );
    assert.equal(
      await count(setup, `${oldMinutes} AND "timestamp" = $1`, [iso(MINUTE_CUTOFF)]),
      3,
      'a row exactly at the cut-off stays',
    );
    const oldPeriods = `period_metrics WHERE site = 'old' AND period = $1`;
    assert.equal(await count(setup, oldPeriods, ['hour']), 100);
    assert.equal(
      await count(setup, `${oldPeriods} AND period_start = $2`, ['hour', iso(HOUR_CUTOFF)]),
      1,
    );
    assert.equal(await count(setup, oldPeriods, ['day']), DAY_ROWS);
    const strays = `(SELECT site FROM window_users UNION ALL SELECT site FROM window_events
                     UNION ALL SELECT site FROM period_users) s WHERE site = 'stray'`;
    assert.equal(await count(setup, strays), stray.kept);
    assert.equal(await count(setup, 'window_users WHERE window_start < $1', [iso(DROP_BEFORE)]), 0);

    // Every concurrent flush is in the figures: minute, hour and day, exactly.
    const live = (key: string) => key.startsWith('live-');
    const minutes = (await readMinutes(setup, schema)).filter((figure) => live(figure.key));
    const expectedMinutes = writer.oracle.expectedMinutes();
    assert.ok(
      JSON.stringify(minutes) === JSON.stringify(expectedMinutes),
      figureDifferences(minutes, expectedMinutes),
    );
    const periods = (await readPeriods(setup, schema)).filter((figure) => live(figure.key));
    const expectedPeriods = writer.oracle.expectedPeriods();
    assert.ok(
      JSON.stringify(periods) === JSON.stringify(expectedPeriods),
      figureDifferences(periods, expectedPeriods),
    );

    // Day rows go once a retention is set for them: those that started before it, not one more.
    const dayRowsMs = 365 * DAY_MS;
    const third = await enforceRetentionOnce(retention, { ...DEFAULTS, dayRowsMs }, NOW);
    const keptDays = await count(setup, oldPeriods, ['day']);
    assert.equal(third?.rowsDeleted, DAY_ROWS - keptDays);
    assert.equal(
      await count(setup, `${oldPeriods} AND period_start < $2`, ['day', iso(NOW - dayRowsMs)]),
      0,
    );
    assert.equal(
      await count(setup, `${oldPeriods} AND period_start >= $2`, ['day', iso(NOW - dayRowsMs)]),
      keptDays,
    );
    assert.ok(keptDays > 0 && keptDays < DAY_ROWS);
  });

  test('the days ahead are created beside running flushes: no deadlock, no flush held', async (t) => {
    const schema = schemas.name();
    const setup = await schemas.connect(schema);
    await migrate(setup, schema);
    await ensureDailyPartitions(setup, NOW);
    const slow = await LiveWriter.claim(await schemas.connect(schema), 1, NOW, 'slow');
    const live = await LiveWriter.claim(await schemas.connect(schema), 2, NOW, 'live');
    const creator = await schemas.connect(schema);
    const creatorPid = await backendPid(creator);

    // 1. A flush holds its locks for seconds (paused before COMMIT, as a slow one would) while
    //    a day is created: the creation waits for it, but another flush must not wait behind
    //    the creation's lock request for all that time — one lock_timeout at most.
    let paused: () => void = () => {};
    const pausing = new Promise<void>((resolve) => {
      paused = resolve;
    });
    const slowFlush = slow.flushOnce({ ms: 3_000, onPause: () => paused() });
    await pausing;
    const creating = ensureDailyPartitions(creator, NOW + 10 * DAY_MS);
    await waitFor(() => waitsForLock(setup, creatorPid), {
      timeoutMs: 10_000,
      intervalMs: 20,
      what: 'the creation to wait for the slow flush',
    });
    const behind = await live.flushOnce();
    t.diagnostic(`a flush behind the waiting creation took ${Math.round(behind)} ms`);
    assert.ok(behind < 1_500, `a flush waited behind the creation (${behind} ms)`);
    await slowFlush;
    assert.equal(await creating, 9, 'the three days, once the slow flush committed');

    // 2. Day after day created while flushes run back to back: a creation holding one parent
    //    while it waits for another must never deadlock with a flush locking them in another
    //    order (nor make one wait more than a moment).
    const DAYS = 12;
    let creatingDays = true;
    const writes = (async () => {
      while (creatingDays) await live.flushOnce();
    })();
    let created = 0;
    try {
      for (let k = 0; k < DAYS; k++) {
        created += await ensureDailyPartitions(creator, NOW + (13 + k) * DAY_MS);
      }
    } finally {
      creatingDays = false;
      await writes;
    }
    assert.equal(created, 3 * (DAYS + 2), 'every day ahead created');
    const slowest = Math.max(...live.durations);
    t.diagnostic(`${live.durations.length} flushes, slowest ${Math.round(slowest)} ms`);
    assert.ok(slowest < FLUSH_BOUND_MS, `no flush waited on the creations (${slowest} ms)`);
    for (const writer of [slow, live]) {
      const minutes = (await readMinutes(setup, schema)).filter((figure) =>
        figure.key.startsWith(`${writer.sites}-`),
      );
      assert.deepEqual(minutes, writer.oracle.expectedMinutes());
    }
  });

  test('stray rows in the default partitions go exactly from the cut-offs back', async () => {
    const client = await schemas.fresh();
    // No day partitions: every membership row is in a default partition.
    const rows = [
      { at: DROP_BEFORE - MINUTE_MS, table: 'window', gone: true },
      { at: DROP_BEFORE, table: 'window', gone: false },
      { at: PERIOD_DROP_BEFORE - HOUR_MS, table: 'period', gone: true },
      { at: PERIOD_DROP_BEFORE, table: 'period', gone: false },
    ];
    for (const { at, table } of rows) {
      if (table === 'window') {
        await client.query(`INSERT INTO window_users VALUES ($1, 60, 0, 's', 'u')`, [iso(at)]);
        await client.query(
          `INSERT INTO window_events VALUES ($1, 60, 0, 's', false, 'u', 'click', 'e')`,
          [iso(at)],
        );
      } else {
        await client.query(`INSERT INTO period_users VALUES (0, 's', 'hour', $1, '', ARRAY['u'])`, [
          iso(at),
        ]);
      }
    }
    assert.equal(await count(client, 'window_users_default'), 2);
    const outcome = (await enforceRetentionOnce(client, DEFAULTS, NOW)) as RetentionOutcome;
    assert.equal(outcome.rowsDeleted, 3);
    assert.deepEqual((await client.query('SELECT window_start FROM window_users_default')).rows, [
      { window_start: new Date(DROP_BEFORE) },
    ]);
    assert.deepEqual((await client.query('SELECT window_start FROM window_events_default')).rows, [
      { window_start: new Date(DROP_BEFORE) },
    ]);
    assert.deepEqual((await client.query('SELECT period_start FROM period_users_default')).rows, [
      { period_start: new Date(PERIOD_DROP_BEFORE) },
    ]);
  });

  test('a day whose rows already sit in the default partition stays there; the others are made', async () => {
    const client = await schemas.fresh();
    const tomorrow = NOW - (NOW % DAY_MS) + DAY_MS;
    // Tomorrow's partition missing and a row of tomorrow in the default one (creation failed
    // for days): creating tomorrow would violate the default's constraint.
    await client.query(`INSERT INTO window_users VALUES ($1, 60, 0, 's', 'u')`, [
      iso(tomorrow + HOUR_MS),
    ]);
    const created = await ensureDailyPartitions(client, NOW);
    const names = (await partitions(client)).filter((name) => name.startsWith('window_users_p'));
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10).replaceAll('-', '');
    assert.ok(names.includes(`window_users_p${day(NOW)}`));
    assert.ok(!names.includes(`window_users_p${day(tomorrow)}`));
    assert.ok(names.includes(`window_users_p${day(tomorrow + DAY_MS)}`));
    assert.equal(created, 6, "today's and the day after tomorrow's three tables");
    // And a whole run goes on past it.
    assert.ok(await enforceRetentionOnce(client, DEFAULTS, NOW));
  });

  test('an event for a window older than the membership horizon is dead-lettered as late', () => {
    const state = new PartitionWindows(0, MINUTE_MS, 10_000, DEFAULTS.maxEventAgeMs);
    // Both valid (received within the age bound, long ago: a consumer far behind its topic).
    const events = [HORIZON - MINUTE_MS + 30_000, HORIZON + 30_000].map((timestamp, i) => ({
      offset: i,
      timestampMs: timestamp + HOUR_MS,
      value: Buffer.from(
        JSON.stringify({ user_id: `u${i}`, activity_type: 'click', timestamp, event_id: `e${i}` }),
      ),
    }));
    const packed = packRecords(events);
    const result = aggregateBatch(
      state.batchInput(packed, membershipHorizon(NOW, DEFAULTS.maxEventAgeMs)),
    );
    assert.deepEqual(result.invalid, []);
    assert.deepEqual(result.late, [0], 'the window before the horizon is late');
    assert.deepEqual(
      result.windows.map((window) => window.start),
      [HORIZON],
      'the window at the horizon is counted',
    );
    // Without a horizon (membership kept forever) the same event would be counted.
    const unbounded = aggregateBatch(state.batchInput(packRecords(events)));
    assert.deepEqual(unbounded.late, []);
    assert.equal(unbounded.windows.length, 2);
  });
});
