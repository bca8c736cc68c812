import type { ClientBase } from 'pg';
import { PipelineError } from './errors.js';
import { HLL_EMPTY_SQL, hllAddAggSql, type UniqueUsersAnswer, uniqueUsersAnswer } from './hll.js';

/**
 * Unique users of a site over a range of whole hours or days: a true union, not a sum of each
 * period's uniques (a user active on two days is one user).
 *
 * One period is answered exactly from its own count (`period_metrics.unique_users`, exact per
 * partition, and users are partitioned). Several are answered from the union of the periods'
 * sketches (`users_hll`; a period not sealed yet contributes its users, `period_users`): exact
 * while the union holds at most `HLL_EXACT_UP_TO` users, else approximate within the error the
 * answer states (shared/hll.ts).
 */

/** The longest range answered: hour rows are kept 400 days by default. */
export const MAX_RANGE_DAYS = 400;
const DAY_MS = 86_400_000;

export interface RangeQuery {
  site: string;
  period: 'hour' | 'day';
  /** The first period's start, epoch ms (a whole hour or day of the site's zone). */
  fromMs: number;
  /** The end of the range, exclusive: periods starting before it count. */
  toMs: number;
  /** One activity type's users; every type by default. */
  activityType?: string;
}

export interface RangeAnswer extends UniqueUsersAnswer {
  /** Periods in the range that have any event. */
  periods: number;
}

export async function uniqueUsersOverRange(
  client: ClientBase,
  query: RangeQuery,
): Promise<RangeAnswer> {
  if (!(query.toMs > query.fromMs)) {
    throw new PipelineError('range_invalid', 'the range must end after it starts');
  }
  if (query.toMs - query.fromMs > MAX_RANGE_DAYS * DAY_MS) {
    throw new PipelineError('range_too_long', `a range may span at most ${MAX_RANGE_DAYS} days`);
  }
  const result = await client.query<{ periods: string; summed: string | null; sketch: string }>(
    `WITH selected AS (
       SELECT * FROM period_metrics
        WHERE site = $1 AND period = $2 AND activity_type = $3
          AND period_start >= $4 AND period_start < $5
     ), sketches AS (
       SELECT users_hll AS sketch FROM selected WHERE users_hll IS NOT NULL
       UNION ALL
       SELECT ${hllAddAggSql('u.user_id')}
         FROM selected r
         JOIN period_users l
           ON l.source_partition = r.source_partition AND l.site = r.site
          AND l.period = r.period AND l.period_start = r.period_start
          AND l.activity_type = r.activity_type
        CROSS JOIN LATERAL unnest(l.user_ids) AS u(user_id)
        WHERE r.users_hll IS NULL
     )
     SELECT (SELECT count(DISTINCT period_start) FROM selected) AS periods,
            (SELECT sum(unique_users) FROM selected) AS summed,
            (SELECT coalesce(hll_union_agg(sketch), ${HLL_EMPTY_SQL})::text FROM sketches)
              AS sketch`,
    [
      query.site,
      query.period,
      query.activityType ?? '',
      new Date(query.fromMs).toISOString(),
      new Date(query.toMs).toISOString(),
    ],
  );
  const row = result.rows[0];
  const periods = Number(row?.periods ?? 0);
  if (periods <= 1) {
    return {
      periods,
      uniqueUsers: Number(row?.summed ?? 0),
      exact: true,
      relativeStandardError: 0,
      relativeErrorBound: 0,
    };
  }
  return { periods, ...uniqueUsersAnswer(row?.sketch ?? '') };
}
