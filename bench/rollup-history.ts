/**
 * The rollups scenario's history: days of one site's users written straight into a migrated
 * schema's hour and day rows (`period_metrics`, `period_users`), in the state the aggregator
 * leaves them, generated in PostgreSQL so that 30 days of 200,000 users take a minute or two.
 *
 * Why not through the aggregator: it takes no event older than MAX_EVENT_AGE_SEC (7 days) at
 * its receive time, so history cannot be replayed through it; and the range query reads only
 * these two tables.
 *
 * The users: a population of `population` ids (`user-<n>`), user n active on a day with
 * probability min(1, c · (1 + n / (population / 30))^-1.2), independently each day, c chosen so
 * that a day has `usersPerDay` users on average: a few thousand come every day, most now and
 * then, so consecutive days share about 40 % of their users and a month has about 6 times a
 * day's. Each (user, day) is active in 1 to 3 hours (mostly 08:00-24:00), with 1 to 6 events in
 * each. Every draw is a hash of (user, day), so the truth of any range is a query away
 * (`trueUniqueUsers`).
 */
import type { ClientBase } from 'pg';
import { hllAddAggSql } from '../shared/hll.js';

export interface HistoryOptions {
  site: string;
  /** The end of the last day: a UTC midnight (the site's zone is UTC). */
  endMs: number;
  days: number;
  usersPerDay: number;
  population: number;
  /** The last days whose users are kept in `period_users`, as retention keeps them. */
  membershipDays: number;
  /** Source partitions the users are split across by a hash (the topic's partitions). */
  partitions: number;
}

export interface History extends HistoryOptions {
  startMs: number;
  /** Users of the least and the most active day. */
  dailyUsers: { min: number; max: number };
  /** Users of the last day who were active the day before too, as a share of them. */
  returningShare: number;
  rows: { periodMetrics: number; periodUsers: number };
  /** Seconds each step took. */
  seconds: { users: number; periods: number; periodUsers: number; vacuum: number };
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** The exponent of the activity skew, and the population share of its scale. */
const SKEW = 1.2;
const SKEW_SCALE_SHARE = 1 / 30;
/** Hash seeds: activity on day d is seed d, the day's hours seed HOURS_SEED + d. */
const PARTITION_SEED = 1_000_003;
const HOURS_SEED = 2_000_000;
/** A 53-bit mask: hashes as exact doubles in [0, 2^53). */
const MASK = '9007199254740991';

/** The user id of user number `n`, in SQL. */
const USER_ID_SQL = (n: string): string => `'user-' || ${n}`;

/**
 * Writes the history into the schema `client` works in (migrated, empty): hour and day rows
 * (activity type '' only: the range query reads nothing else) with sealed sketches, except the
 * last day and its last hour, which are left as the aggregator leaves the periods still running
 * (no sketch; their users in `period_users`). The generated users stay in `history_users` for
 * `trueUniqueUsers`.
 */
export async function writeHistory(
  client: ClientBase,
  options: HistoryOptions,
  log: (line: string) => void,
): Promise<History> {
  const startMs = options.endMs - options.days * DAY_MS;
  const start = new Date(startMs).toISOString();
  const lastDay = options.days - 1;
  const timed = async (work: () => Promise<unknown>): Promise<number> => {
    const began = performance.now();
    await work();
    return (performance.now() - began) / 1000;
  };

  const users = await timed(async () => {
    await client.query(
      'CREATE UNLOGGED TABLE history_users (day INTEGER NOT NULL, user_no INTEGER NOT NULL, part INTEGER NOT NULL)',
    );
    await client.query(
      `INSERT INTO history_users
       SELECT d, n, (hashint8extended(n, ${PARTITION_SEED}) & ${MASK}) % $1
         FROM generate_series(0, $2::int - 1) d, generate_series(0, $3::int - 1) n
        WHERE (hashint8extended(n, d) & ${MASK}) / 9007199254740992.0::float8
              < least(1.0::float8, $4::float8 * (1 + n / $5::float8) ^ (-$6::float8))`,
      [
        options.partitions,
        options.days,
        options.population,
        activityScale(options.population, options.usersPerDay),
        options.population * SKEW_SCALE_SHARE,
        SKEW,
      ],
    );
    // A user's 1-3 hours of a day: distinct because the steps between them are at most 4.
    await client.query(
      `CREATE VIEW history_user_hours AS
       SELECT day, ((first_hour + (j - 1) * step) % 24)::int AS hour, user_no, part,
              (1 + (x / (96000 * j)) % 6)::int AS events
         FROM (SELECT day, user_no, part, x,
                      CASE WHEN x % 10 < 8 THEN 8 + (x / 10) % 16 ELSE (x / 10) % 24 END
                        AS first_hour,
                      1 + (x / 240) % 4 AS step,
                      CASE WHEN (x / 960) % 100 < 10 THEN 3
                           WHEN (x / 960) % 100 < 35 THEN 2 ELSE 1 END AS hours
                 FROM (SELECT day, user_no, part,
                              hashint8extended(user_no, ${HOURS_SEED} + day) & ${MASK} AS x
                         FROM history_users) s) b
        CROSS JOIN generate_series(1, 3) j
        WHERE j <= hours`,
    );
  });
  log(`  history: ${options.days} days of users drawn (${users.toFixed(0)} s)`);

  const periods = await timed(async () => {
    await client.query(
      `INSERT INTO period_metrics
         (site, period, period_start, activity_type, source_partition, time_zone, period_end,
          unique_users, page_view_count, event_count, users_hll)
       SELECT $1, 'hour', $2::timestamptz + (day * 24 + hour) * interval '1 hour', '', part, 'UTC',
              $2::timestamptz + (day * 24 + hour + 1) * interval '1 hour',
              count(*), sum((events + 1) / 2), sum(events),
              CASE WHEN day * 24 + hour < $3 * 24 + 23 THEN ${hllAddAggSql(USER_ID_SQL('user_no'))} END
         FROM history_user_hours GROUP BY day, hour, part`,
      [options.site, start, lastDay],
    );
    await client.query(
      `INSERT INTO period_metrics
         (site, period, period_start, activity_type, source_partition, time_zone, period_end,
          unique_users, page_view_count, event_count, users_hll)
       SELECT $1, 'day', $2::timestamptz + u.day * interval '1 day', '', u.part, 'UTC',
              $2::timestamptz + (u.day + 1) * interval '1 day',
              u.users, e.page_views, e.events, CASE WHEN u.day < $3 THEN u.sketch END
         FROM (SELECT day, part, count(*) AS users,
                      ${hllAddAggSql(USER_ID_SQL('user_no'))} AS sketch
                 FROM history_users GROUP BY day, part) u
         JOIN (SELECT day, part, sum((events + 1) / 2) AS page_views, sum(events) AS events
                 FROM history_user_hours GROUP BY day, part) e
        USING (day, part)`,
      [options.site, start, lastDay],
    );
  });
  log(`  history: hour and day rows with their sketches written (${periods.toFixed(0)} s)`);

  const firstKept = options.days - options.membershipDays;
  const periodUsers = await timed(async () => {
    await client.query(
      `SELECT activity_ensure_day_partitions(($1::timestamptz AT TIME ZONE 'UTC')::date + d)
         FROM generate_series($2::int, $3::int) d`,
      [start, firstKept, lastDay],
    );
    await client.query(
      `INSERT INTO period_users (source_partition, site, period, period_start, activity_type, user_ids)
       SELECT part, $1, 'day', $2::timestamptz + day * interval '1 day', '',
              array_agg(${USER_ID_SQL('user_no')})
         FROM history_users WHERE day >= $3 GROUP BY part, day`,
      [options.site, start, firstKept],
    );
    await client.query(
      `INSERT INTO period_users (source_partition, site, period, period_start, activity_type, user_ids)
       SELECT part, $1, 'hour', $2::timestamptz + (day * 24 + hour) * interval '1 hour', '',
              array_agg(${USER_ID_SQL('user_no')})
         FROM history_user_hours WHERE day >= $3 GROUP BY part, day, hour`,
      [options.site, start, firstKept],
    );
  });
  log(
    `  history: users of the last ${options.membershipDays} days in period_users (${periodUsers.toFixed(0)} s)`,
  );
  // What autovacuum would have done to tables written over 30 days: statistics, visibility map.
  const vacuum = await timed(async () => {
    await client.query('VACUUM ANALYZE period_metrics');
    await client.query('VACUUM ANALYZE period_users');
    await client.query('ANALYZE history_users');
  });

  const daily = await client.query<{ min: string; max: string }>(
    'SELECT min(users), max(users) FROM (SELECT count(*) AS users FROM history_users GROUP BY day) d',
  );
  const returning = await client.query<{ share: number }>(
    `SELECT (SELECT count(*) FROM history_users a
              WHERE a.day = $1
                AND EXISTS (SELECT 1 FROM history_users b WHERE b.day = $1 - 1 AND b.user_no = a.user_no))::float8
            / (SELECT count(*) FROM history_users WHERE day = $1) AS share`,
    [lastDay],
  );
  const rows = await client.query<{ metrics: string; users: string }>(
    'SELECT (SELECT count(*) FROM period_metrics) AS metrics, (SELECT sum(cardinality(user_ids)) FROM period_users) AS users',
  );
  return {
    ...options,
    startMs,
    dailyUsers: { min: Number(daily.rows[0]?.min), max: Number(daily.rows[0]?.max) },
    returningShare: Number(returning.rows[0]?.share),
    rows: {
      periodMetrics: Number(rows.rows[0]?.metrics),
      periodUsers: Number(rows.rows[0]?.users),
    },
    seconds: { users, periods, periodUsers, vacuum },
  };
}

/** The exact number of distinct users of the history in `[fromMs, toMs)`, by its hours or days. */
export async function trueUniqueUsers(
  client: ClientBase,
  history: History,
  period: 'hour' | 'day',
  fromMs: number,
  toMs: number,
): Promise<number> {
  const unitMs = period === 'day' ? DAY_MS : HOUR_MS;
  const from = Math.ceil((fromMs - history.startMs) / unitMs);
  const to = Math.ceil((toMs - history.startMs) / unitMs);
  // A range of whole days has the same users by hour: every active user has an hour.
  const result =
    period === 'day' || (from % 24 === 0 && to % 24 === 0)
      ? await client.query<{ users: string }>(
          'SELECT count(DISTINCT user_no) AS users FROM history_users WHERE day >= $1 AND day < $2',
          period === 'day' ? [from, to] : [from / 24, to / 24],
        )
      : await client.query<{ users: string }>(
          `SELECT count(DISTINCT user_no) AS users FROM history_user_hours
            WHERE day * 24 + hour >= $1 AND day * 24 + hour < $2`,
          [from, to],
        );
  return Number(result.rows[0]?.users);
}

/**
 * The c of the activity probability min(1, c · w(n)), w(n) = (1 + n / scale)^-SKEW, for which
 * the expected number of users a day is `usersPerDay` (bisection).
 */
export function activityScale(population: number, usersPerDay: number): number {
  if (!(usersPerDay < population)) throw new Error('usersPerDay must be below the population');
  const scale = population * SKEW_SCALE_SHARE;
  const weights = new Float64Array(population);
  for (let n = 0; n < population; n++) weights[n] = (1 + n / scale) ** -SKEW;
  const expected = (c: number): number => {
    let sum = 0;
    for (let n = 0; n < population; n++) sum += Math.min(1, c * (weights[n] as number));
    return sum;
  };
  let low = 0;
  let high = 1;
  while (expected(high) < usersPerDay) high *= 2;
  for (let i = 0; i < 50; i++) {
    const mid = (low + high) / 2;
    if (expected(mid) < usersPerDay) low = mid;
    else high = mid;
  }
  return (low + high) / 2;
}
