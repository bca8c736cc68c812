/**
 * The rows in PostgreSQL are the aggregator's only bookkeeping: these tests write rows through
 * the real COPY + fenced upsert and read checkpoints back with the real SQL, against the real
 * PostgreSQL of the test run, each test in a fresh schema.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type pg from 'pg';
import { withDeadline } from '../shared/lifecycle.js';
import { loadStoredPositions } from '../shared/stored-positions.js';
import { stackFromEnv } from '../shared/testing.js';
import { ByteStringSet } from './byte-string-set.js';
import { writeFlush } from './copy-writer.js';
import { LATEST_SCHEMA_VERSION, migrate } from './migrations.js';
import { loadCheckpoint } from './partition-recovery.js';
import { TestSchemas } from './test-schemas.js';
import type { WindowRow } from './window-state.js';

const stack = stackFromEnv();
const WINDOW_SEC = 60;
const WINDOW_MS = WINDOW_SEC * 1000;
/** A window start: 2024-05-01T12:00:00Z. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const w = (n: number): number => T0 + n * WINDOW_MS;

const schemas = new TestSchemas(stack.databaseUrl, 'recovery');
const connect = (schema: string): Promise<pg.Client> => schemas.connect(schema);
const freshSchema = (): Promise<pg.Client> => schemas.fresh();

function row(overrides: Partial<WindowRow> & Pick<WindowRow, 'windowStart'>): WindowRow {
  return {
    windowSeconds: WINDOW_SEC,
    partition: 0,
    site: 'default',
    timeZone: 'UTC',
    uniqueUsers: 1,
    pageViews: 0,
    events: 1,
    firstOffset: 0,
    throughOffset: 0,
    watermark: overrides.windowStart,
    isFinal: false,
    membershipStored: false,
    ...overrides,
  };
}

/**
 * Writes cumulative rows through the real flush (no membership, no closed-window events), as the
 * partitions' current owner.
 */
async function writeWindowRows(client: pg.Client, rows: readonly WindowRow[]): Promise<number> {
  const epochs = new Map<string, number>();
  for (const r of rows) {
    const result = await client.query<{ epoch: string }>(
      `INSERT INTO partition_epochs AS e (window_seconds, source_partition, epoch) VALUES ($1, $2, 1)
       ON CONFLICT (window_seconds, source_partition) DO UPDATE SET epoch = e.epoch
       RETURNING epoch`,
      [r.windowSeconds, r.partition],
    );
    epochs.set(`${r.windowSeconds}:${r.partition}`, Number(result.rows[0]?.epoch));
  }
  const outcome = await writeFlush(
    client,
    rows.map((r) => ({
      partition: r.partition,
      epoch: epochs.get(`${r.windowSeconds}:${r.partition}`) ?? 0,
      windowSeconds: r.windowSeconds,
      throughOffset: r.throughOffset,
      watermark: r.watermark,
      closedThrough: Number.NEGATIVE_INFINITY,
      rows: [r],
      memberships: [
        {
          windowStart: r.windowStart,
          site: r.site,
          users: new ByteStringSet(),
          eventIds: new ByteStringSet(),
          userCount: 0,
          pageViews: new Uint8Array(),
          eventUsers: new Int32Array(),
          eventTypes: new Uint32Array(),
          typeNames: [],
        },
      ],
      closedWindowEvents: [],
      finals: [],
      unrebuilt: [],
    })),
  );
  return outcome.rows;
}

async function stored(client: pg.Client, partition = 0) {
  const result = await client.query(
    `SELECT (extract(epoch FROM "timestamp") * 1000)::bigint::float8 AS start,
            unique_users, page_view_count::int AS page_views, event_count::int AS events,
            first_offset::int, through_offset::int, watermark_ms::float8 AS watermark, is_final
       FROM user_activity_metrics WHERE source_partition = $1 ORDER BY "timestamp"`,
    [partition],
  );
  return result.rows;
}

after(() => schemas.dropAll());

describe('migrations', () => {
  test('a fresh schema gets every migration once; running them again applies nothing', async () => {
    const schema = schemas.name();
    const client = await connect(schema);
    const versions = Array.from({ length: LATEST_SCHEMA_VERSION }, (_, i) => i + 1);
    assert.deepEqual(await migrate(client, schema), versions);
    assert.deepEqual(await migrate(client, schema), []);
    const applied = await client.query('SELECT version FROM schema_migrations ORDER BY version');
    assert.deepEqual(
      applied.rows.map((r) => r.version),
      versions,
    );
    // The table and the view exist, with the columns the checkpoint needs.
    const columns = await client.query(
      `SELECT column_name FROM information_schema.columns
        WHERE table_schema = $1 AND table_name = 'user_activity_metrics'`,
      [schema],
    );
    const names = columns.rows.map((r) => r.column_name);
    for (const name of ['first_offset', 'through_offset', 'watermark_ms', 'is_final']) {
      assert.ok(names.includes(name), `missing column ${name}`);
    }
    await client.query('SELECT * FROM user_activity_window_totals');
  });

  test('migrations started concurrently from 3 connections on one fresh schema apply exactly once', async () => {
    const versions = Array.from({ length: LATEST_SCHEMA_VERSION }, (_, i) => i + 1);
    // A few rounds: which connection wins the race differs from round to round.
    for (let round = 0; round < 5; round++) {
      const schema = schemas.name();
      const racers = await Promise.all([connect(schema), connect(schema), connect(schema)]);
      const pids = await Promise.all(racers.map(backendPid));
      const results = await withDeadline(
        Promise.all(racers.map((client) => migrate(client, schema))),
        30_000,
        'concurrent migrations',
      );
      assert.deepEqual(
        results.map((applied) => applied.length).sort(),
        [0, 0, versions.length],
        JSON.stringify(results),
      );
      assert.deepEqual(results.flat().sort(), versions);
      const applied = await racers[0]?.query(
        'SELECT version, count(*)::int AS n FROM schema_migrations GROUP BY version ORDER BY version',
      );
      assert.deepEqual(
        applied?.rows,
        versions.map((version) => ({ version, n: 1 })),
      );
      // No session was left inside a transaction or waiting on the lock.
      const busy = await racers[0]?.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE pid = ANY($1) AND pid <> pg_backend_pid() AND state <> 'idle'`,
        [pids],
      );
      assert.equal(busy?.rows[0]?.n, 0);
    }
  });
});

async function backendPid(client: pg.Client): Promise<number> {
  // Our own backend is 'active' while it runs this query: ask for the pid only.
  const result = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return result.rows[0]?.pid ?? 0;
}

describe('loadCheckpoint', () => {
  test('a partition without rows: no position, nothing to rebuild', async () => {
    const client = await freshSchema();
    assert.deepEqual(await loadCheckpoint(client, 0, WINDOW_SEC), {
      resumeFrom: null,
      replayFrom: null,
      openWindows: [],
      closedOpenWindows: [],
      closedThrough: Number.NEGATIVE_INFINITY,
      finalThrough: Number.NEGATIVE_INFINITY,
      legacyFinalThrough: Number.NEGATIVE_INFINITY,
      watermark: Number.NEGATIVE_INFINITY,
      epoch: 0,
    });
  });

  test('open and final windows: resume after the newest offset, replay from the oldest open window', async () => {
    const client = await freshSchema();
    // Written by three flushes of partition 0, as the aggregator would.
    await writeWindowRows(client, [
      row({ windowStart: w(0), firstOffset: 100, throughOffset: 120, watermark: w(0) + 50_000 }),
    ]);
    await writeWindowRows(client, [
      row({
        windowStart: w(0),
        firstOffset: 100,
        throughOffset: 180,
        watermark: w(2) + 15_000,
        isFinal: true,
      }),
      row({
        windowStart: w(1),
        firstOffset: 121,
        throughOffset: 180,
        watermark: w(2) + 15_000,
        isFinal: true,
      }),
      row({ windowStart: w(2), firstOffset: 150, throughOffset: 180, watermark: w(2) + 15_000 }),
    ]);
    // The third flush touches only w(3), a window with an out-of-order first event: w(2) keeps
    // its older through_offset.
    await writeWindowRows(client, [
      row({ windowStart: w(3), firstOffset: 140, throughOffset: 230, watermark: w(3) + 2_000 }),
    ]);
    // Noise that must not count: another partition, and another window length.
    await writeWindowRows(client, [
      row({ windowStart: w(5), partition: 1, firstOffset: 1, throughOffset: 9_999 }),
      row({ windowStart: w(9), partition: 1, firstOffset: 0, throughOffset: 10, isFinal: true }),
      row({ windowStart: w(6), windowSeconds: 300, firstOffset: 7, throughOffset: 8_888 }),
    ]);

    const checkpoint = await loadCheckpoint(client, 0, WINDOW_SEC);
    assert.deepEqual(
      { ...checkpoint, openWindows: [...checkpoint.openWindows].sort((a, b) => a - b) },
      {
        resumeFrom: 231,
        replayFrom: 140,
        openWindows: [w(2), w(3)],
        closedOpenWindows: [],
        // Final rows without stored membership: as a version before membership wrote them.
        closedThrough: w(1),
        finalThrough: w(1),
        legacyFinalThrough: w(1),
        watermark: w(3) + 2_000,
        epoch: 1,
      },
    );
  });

  test('only final windows: replay starts where the partition resumes', async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [
      row({ windowStart: w(0), firstOffset: 0, throughOffset: 40, isFinal: true }),
      row({
        windowStart: w(1),
        firstOffset: 10,
        throughOffset: 40,
        isFinal: true,
        watermark: w(3),
      }),
    ]);
    assert.deepEqual(await loadCheckpoint(client, 0, WINDOW_SEC), {
      resumeFrom: 41,
      replayFrom: 41,
      openWindows: [],
      closedOpenWindows: [],
      closedThrough: w(1),
      finalThrough: w(1),
      legacyFinalThrough: w(1),
      watermark: w(3),
      epoch: 1,
    });
  });

  test('the newest final window sets finalThrough even when an older final row has the newest offset', async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [
      row({
        windowStart: w(4),
        firstOffset: 20,
        throughOffset: 30,
        isFinal: true,
        watermark: w(6),
      }),
    ]);
    // Rewritten later (a stalled replica of the same figures, say): newest offset, older window.
    await writeWindowRows(client, [
      row({ windowStart: w(1), firstOffset: 1, throughOffset: 31, isFinal: true, watermark: w(6) }),
    ]);
    const checkpoint = await loadCheckpoint(client, 0, WINDOW_SEC);
    assert.equal(checkpoint.finalThrough, w(4));
    assert.equal(checkpoint.resumeFrom, 32);
  });

  test('rows without a watermark (written before migration 2) give an unknown watermark, not 0', async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [
      row({ windowStart: w(0), throughOffset: 5, watermark: Number.NEGATIVE_INFINITY }),
    ]);
    const checkpoint = await loadCheckpoint(client, 0, WINDOW_SEC);
    assert.equal(checkpoint.watermark, Number.NEGATIVE_INFINITY);
    assert.equal(checkpoint.resumeFrom, 6);
    assert.equal(checkpoint.replayFrom, 0);
  });

  test('offsets beyond 2^31 survive the round trip', async () => {
    const client = await freshSchema();
    const big = 2 ** 40;
    await writeWindowRows(client, [
      row({ windowStart: w(0), firstOffset: big, throughOffset: big + 5 }),
    ]);
    const checkpoint = await loadCheckpoint(client, 0, WINDOW_SEC);
    assert.equal(checkpoint.resumeFrom, big + 6);
    assert.equal(checkpoint.replayFrom, big);
  });
});

describe('loadStoredPositions', () => {
  test("each partition's first offset not yet stored, or 'beginning' without rows", async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [
      row({ windowStart: w(0), firstOffset: 100, throughOffset: 180, isFinal: true }),
      row({ windowStart: w(1), firstOffset: 150, throughOffset: 230 }),
      // An older window written later keeps its older offset: the newest one counts.
      row({ windowStart: w(2), firstOffset: 160, throughOffset: 200 }),
      row({ windowStart: w(0), partition: 2, firstOffset: 0, throughOffset: 41 }),
      // Another window length is another aggregation: not counted.
      row({ windowStart: w(3), windowSeconds: 300, firstOffset: 7, throughOffset: 8_888 }),
    ]);
    assert.deepEqual(
      await loadStoredPositions(client, [0, 1, 2], WINDOW_SEC),
      new Map<number, number | 'beginning'>([
        [0, 231],
        [1, 'beginning'],
        [2, 42],
      ]),
    );
  });
});

describe('writeWindowRows: the fence', () => {
  test('a write with an older through_offset does not overwrite the row and is not counted', async () => {
    const client = await freshSchema();
    const newer = row({
      windowStart: w(0),
      uniqueUsers: 5,
      events: 9,
      pageViews: 4,
      firstOffset: 10,
      throughOffset: 30,
      watermark: w(0) + 30_000,
    });
    assert.equal(await writeWindowRows(client, [newer]), 1);
    const before = await stored(client);

    const stale = {
      ...newer,
      uniqueUsers: 3,
      events: 4,
      pageViews: 1,
      throughOffset: 20,
      watermark: w(2),
      isFinal: true,
    };
    assert.equal(await writeWindowRows(client, [stale]), 0);
    assert.deepEqual(await stored(client), before);

    // In one write, the fenced row is left out of the count and the others go through.
    const fresh = row({ windowStart: w(1), firstOffset: 25, throughOffset: 29 });
    assert.equal(await writeWindowRows(client, [stale, fresh]), 1);
    assert.deepEqual((await stored(client)).at(0), before[0]);
    assert.equal((await stored(client)).length, 2);
  });

  test('the same through_offset replaces the row (a retried flush is idempotent)', async () => {
    const client = await freshSchema();
    const first = row({ windowStart: w(0), uniqueUsers: 2, events: 2, throughOffset: 30 });
    await writeWindowRows(client, [first]);
    const retried = { ...first, isFinal: true };
    assert.equal(await writeWindowRows(client, [retried]), 1);
    assert.equal(await writeWindowRows(client, [retried]), 1);
    const rows = await stored(client);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.is_final, true);
  });

  test('a newer write replaces the figures; first_offset keeps the oldest', async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [
      row({ windowStart: w(0), uniqueUsers: 2, events: 2, firstOffset: 10, throughOffset: 30 }),
    ]);
    await writeWindowRows(client, [
      row({
        windowStart: w(0),
        uniqueUsers: 7,
        events: 11,
        pageViews: 3,
        firstOffset: 12,
        throughOffset: 50,
        watermark: w(1),
      }),
    ]);
    assert.deepEqual(await stored(client), [
      {
        start: w(0),
        unique_users: 7,
        page_views: 3,
        events: 11,
        first_offset: 10,
        through_offset: 50,
        watermark: w(1),
        is_final: false,
      },
    ]);
  });

  test('the fence is per (window, partition): another partition is never fenced by this one', async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [row({ windowStart: w(0), partition: 0, throughOffset: 1_000 })]);
    assert.equal(
      await writeWindowRows(client, [row({ windowStart: w(0), partition: 1, throughOffset: 3 })]),
      1,
    );
    const totals = await client.query(
      'SELECT unique_users::int, event_count::int FROM user_activity_window_totals',
    );
    assert.deepEqual(totals.rows, [{ unique_users: 2, event_count: 2 }]);
  });

  test('a failed write leaves nothing behind and the connection usable', async () => {
    const client = await freshSchema();
    await writeWindowRows(client, [row({ windowStart: w(0), throughOffset: 1 })]);
    // Two rows for the same key in one write: the upsert cannot affect a row twice.
    await assert.rejects(
      writeWindowRows(client, [
        row({ windowStart: w(1), throughOffset: 2 }),
        row({ windowStart: w(1), throughOffset: 2, uniqueUsers: 9 }),
      ]),
    );
    assert.equal((await stored(client)).length, 1);
    // Not left inside an aborted transaction: the next statement runs.
    assert.equal((await client.query('SELECT 1 AS one')).rows[0]?.one, 1);
    assert.equal(await writeWindowRows(client, [row({ windowStart: w(2), throughOffset: 3 })]), 1);
  });

  test('thousands of rows in one write (several COPY chunks)', async () => {
    const client = await freshSchema();
    const rows = Array.from({ length: 2_500 }, (_, i) =>
      row({ windowStart: w(i), uniqueUsers: i, events: i + 1, throughOffset: 7 }),
    );
    assert.equal(await writeWindowRows(client, rows), 2_500);
    const sum = await client.query(
      'SELECT count(*)::int AS n, sum(unique_users)::int AS users FROM user_activity_metrics',
    );
    assert.deepEqual(sum.rows[0], { n: 2_500, users: (2_499 * 2_500) / 2 });
  });
});
