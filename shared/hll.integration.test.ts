/**
 * The accuracy of unique-user answers (hll.ts) against exact counts, in the real PostgreSQL with
 * the `hll` extension: sets from 1 to 6,000,000 users, each the union of two overlapping stored
 * sketches, and a month of daily sketches of returning users. The data is generated inside
 * PostgreSQL and is the same on every run, so the measured errors are too; they are printed as
 * diagnostics. The extension's own `hll_cardinality()` is printed beside ours for comparison.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import {
  HLL_COLUMN_TYPE_SQL,
  HLL_EXACT_UP_TO,
  HLL_RELATIVE_ERROR_BOUND,
  hllAddAggSql,
  hllUnionAggTextSql,
  type UniqueUsersAnswer,
  uniqueUsersAnswer,
} from './hll.js';
import { withDeadline } from './lifecycle.js';
import { stackFromEnv } from './testing.js';

const stack = stackFromEnv();
/** The user id of generated user number `i`, as SQL. */
const USER_ID = `'user-' || i`;

let db: pg.Client;

before(async () => {
  db = new pg.Client({ connectionString: stack.databaseUrl, query_timeout: 60_000 });
  db.on('error', () => {});
  await db.connect();
  // Per database, and the aggregator's migrations create it too: it is left in place. The test's
  // tables are temporary, gone when this session ends.
  await db.query('CREATE EXTENSION IF NOT EXISTS hll');
  await db.query(`
    SELECT set_config('search_path', current_setting('search_path') || ', ' || quote_ident(nspname), false)
      FROM pg_extension JOIN pg_namespace ON pg_namespace.oid = extnamespace
     WHERE extname = 'hll'`);
});

after(async () => {
  await withDeadline(db.end(), 5_000, 'closing the test connection');
});

interface Measured {
  what: string;
  exact: number;
  answer: UniqueUsersAnswer;
  /** The extension's own estimate of the same union. */
  extension: number;
  bytes: number;
}

const percent = (value: number, exact: number): string =>
  `${value >= exact ? '+' : ''}${(((value - exact) / exact) * 100).toFixed(3)} %`;

function describeMeasured(m: Measured): string {
  const kind = m.answer.exact ? 'exact' : `approximate, ${percent(m.answer.uniqueUsers, m.exact)}`;
  return `${m.what}: exact ${m.exact}, answer ${m.answer.uniqueUsers} (${kind}); hll_cardinality ${percent(m.extension, m.exact)}; union sketch ${m.bytes} bytes`;
}

/** The promise every answer makes: exact when it says so, else within the bound it states. */
function assertWithinPromise(m: Measured): void {
  if (m.answer.exact) {
    assert.equal(m.answer.uniqueUsers, m.exact, `${m.what}: an exact answer is exact`);
    assert.equal(m.answer.relativeErrorBound, 0);
    return;
  }
  assert.equal(m.answer.relativeErrorBound, HLL_RELATIVE_ERROR_BOUND);
  const error = Math.abs(m.answer.uniqueUsers - m.exact) / m.exact;
  assert.ok(
    error <= HLL_RELATIVE_ERROR_BOUND,
    `${describeMeasured(m)}: error beyond the ${HLL_RELATIVE_ERROR_BOUND * 100} % promised`,
  );
}

describe('unique users from hll sketches, against exact counts', () => {
  test('sets of 1 to 6,000,000 users, each the union of two overlapping sketches', async (t) => {
    // Users 1..0.6n in one sketch and 0.4n+1..n in the other: a fifth of them are in both.
    const sizes = [
      1,
      10,
      100,
      1_000,
      HLL_EXACT_UP_TO,
      HLL_EXACT_UP_TO + 1,
      20_000,
      100_000,
      200_000,
      // Where hll_cardinality() switches estimators and answers 2 % high with these parameters.
      350_000,
      1_000_000,
      6_000_000,
    ];
    await db.query(
      `
      CREATE TEMP TABLE pieces AS
      SELECT n, piece, lo, hi FROM unnest($1::int[]) AS n,
        LATERAL (VALUES (1, 1, ceil(n * 0.6)::int), (2, floor(n * 0.4)::int + 1, n)) AS p(piece, lo, hi)`,
      [sizes],
    );
    await db.query(`
      CREATE TEMP TABLE sketches AS
      SELECT n, piece, ${hllAddAggSql(USER_ID)}::${HLL_COLUMN_TYPE_SQL} AS users
        FROM pieces, generate_series(lo, hi) AS i
       GROUP BY n, piece`);
    const exact = await db.query<{ n: number; exact: string }>(`
      SELECT n, count(DISTINCT i) AS exact
        FROM pieces, generate_series(lo, hi) AS i
       GROUP BY n`);
    const unions = await db.query<{ n: number; sketch: string; extension: number; bytes: number }>(`
      SELECT n, ${hllUnionAggTextSql('users')} AS sketch,
             hll_cardinality(hll_union_agg(users)) AS extension,
             pg_column_size(hll_union_agg(users)) AS bytes
        FROM sketches GROUP BY n ORDER BY n`);
    const exactByN = new Map(exact.rows.map((row) => [row.n, Number(row.exact)]));
    assert.deepEqual(
      unions.rows.map((row) => row.n),
      sizes,
    );
    const measured = unions.rows.map((row) => ({
      what: `${row.n} users`,
      exact: exactByN.get(row.n) ?? Number.NaN,
      answer: uniqueUsersAnswer(row.sketch),
      extension: row.extension,
      bytes: row.bytes,
    }));
    for (const m of measured) t.diagnostic(describeMeasured(m));
    assert.deepEqual(
      measured.map((m) => m.exact),
      sizes,
      'the two pieces of each set cover it',
    );
    for (const m of measured) {
      assert.equal(m.answer.exact, m.exact <= HLL_EXACT_UP_TO, `${m.what}: exact up to the cutoff`);
      assertWithinPromise(m);
    }
  });

  test('a month of daily sketches of returning users, unioned', async (t) => {
    // 200,000 users a day: 100,000 loyal ones every day, 60,000 of a pool of 400,000 regulars
    // (a different stride through the pool each day) and 40,000 never seen before.
    await db.query(`
      CREATE TEMP TABLE daily_users AS
      SELECT day, i FROM generate_series(1, 30) AS day,
        LATERAL (
          SELECT generate_series(1, 100000) AS i
          UNION ALL
          SELECT 100001 + (k * 7919 + day * 104729) % 400000 FROM generate_series(0, 59999) AS k
          UNION ALL
          SELECT 500000 + (day - 1) * 40000 + generate_series(1, 40000)
        ) AS users`);
    await db.query(`
      CREATE TEMP TABLE daily AS
      SELECT day, ${hllAddAggSql(USER_ID)}::${HLL_COLUMN_TYPE_SQL} AS users
        FROM daily_users GROUP BY day`);
    const days = await db.query<{ day: number; exact: string; sketch: string }>(`
      SELECT day, exact, users::text AS sketch
        FROM daily
        JOIN (SELECT day, count(DISTINCT i) AS exact FROM daily_users GROUP BY day) AS e USING (day)
       ORDER BY day`);
    const month = await db.query<{
      exact: string;
      sketch: string;
      extension: number;
      bytes: number;
      lossless: boolean;
    }>(`
      SELECT (SELECT count(DISTINCT i) FROM daily_users) AS exact,
             ${hllUnionAggTextSql('users')} AS sketch,
             hll_cardinality(hll_union_agg(users)) AS extension,
             pg_column_size(hll_union_agg(users)) AS bytes,
             hll_union_agg(users) = (SELECT ${hllAddAggSql(USER_ID)} FROM daily_users) AS lossless
        FROM daily`);
    assert.equal(days.rows.length, 30);
    let worstDay: { day: number; answer: number } | undefined;
    for (const row of days.rows) {
      const answer = uniqueUsersAnswer(row.sketch);
      assert.equal(Number(row.exact), 200_000, 'every day has 200,000 users');
      assertWithinPromise({
        what: `day ${row.day}`,
        exact: 200_000,
        answer,
        extension: 0,
        bytes: 0,
      });
      const error = Math.abs(answer.uniqueUsers - 200_000);
      if (worstDay === undefined || error > Math.abs(worstDay.answer - 200_000)) {
        worstDay = { day: row.day, answer: answer.uniqueUsers };
      }
    }
    const [row] = month.rows;
    assert.ok(row);
    const union: Measured = {
      what: '30 days',
      exact: Number(row.exact),
      answer: uniqueUsersAnswer(row.sketch),
      extension: row.extension,
      bytes: row.bytes,
    };
    if (worstDay !== undefined) {
      t.diagnostic(
        `worst of the 30 days: day ${worstDay.day}, answer ${worstDay.answer} for 200000 (${percent(worstDay.answer, 200_000)})`,
      );
    }
    t.diagnostic(`${describeMeasured(union)}; 30 × 200,000 = 6,000,000 user-days`);
    // Heavy overlap, and more users than any single day.
    assert.ok(union.exact > 1_000_000 && union.exact < 2_000_000, `union of ${union.exact}`);
    assert.equal(union.answer.exact, false);
    assertWithinPromise(union);
    // A union of daily sketches is the sketch of the month's users, bit for bit: unioning loses
    // nothing, so a range's error is that of one sketch of its size.
    assert.equal(row.lossless, true);
  });
});
