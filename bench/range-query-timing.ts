/**
 * Times `uniqueUsersOverRange` as a reader calls it: in the bench process, around the call
 * (query, transfer and decoding of the union sketch, and the estimate in JavaScript). The first
 * call is made on a new connection and reported apart; then `calls` more on it. The statement it
 * sent is then run under `EXPLAIN (ANALYZE, TIMING OFF)` for PostgreSQL's own planning and
 * execution time, without the transfer and the estimate.
 */
import pg from 'pg';
import {
  type RangeAnswer,
  type RangeQuery,
  uniqueUsersOverRange,
} from '../shared/range-uniques.js';

export interface RangeTiming {
  answer: RangeAnswer;
  /** The first call, on a new connection (its backend's caches empty; the data's pages are not). */
  firstMs: number;
  /** The calls after it. */
  callsMs: number[];
  /** Planning plus execution time that EXPLAIN ANALYZE reports, per run of it. */
  sqlMs: number[];
}

const EXPLAIN_RUNS = 5;

export async function timeRangeQuery(
  databaseUrl: string,
  schema: string,
  query: RangeQuery,
  calls: number,
): Promise<RangeTiming> {
  const client = new pg.Client({
    connectionString: databaseUrl,
    options: `-c search_path=${schema},public`,
    query_timeout: 60_000,
  });
  await client.connect();
  try {
    const sent: Array<{ text: string; values: unknown[] }> = [];
    const recording = recordQueries(client, sent);
    let began = performance.now();
    let answer = await uniqueUsersOverRange(recording, query);
    const firstMs = performance.now() - began;
    const callsMs: number[] = [];
    for (let i = 0; i < calls; i++) {
      began = performance.now();
      answer = await uniqueUsersOverRange(client, query);
      callsMs.push(performance.now() - began);
    }
    const statement = sent[0];
    if (sent.length !== 1 || statement === undefined) {
      throw new Error(
        `uniqueUsersOverRange sent ${sent.length} statements; the bench explains one`,
      );
    }
    const sqlMs: number[] = [];
    for (let i = 0; i < EXPLAIN_RUNS; i++) {
      const plan = await client.query<{ 'QUERY PLAN': Array<Record<string, number>> }>(
        `EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ${statement.text}`,
        statement.values,
      );
      const top = plan.rows[0]?.['QUERY PLAN'][0] ?? {};
      sqlMs.push((top['Planning Time'] ?? Number.NaN) + (top['Execution Time'] ?? Number.NaN));
    }
    return { answer, firstMs, callsMs, sqlMs };
  } finally {
    await client.end().catch(() => {});
  }
}

/** `client`, whose `query(text, values)` calls are also listed in `sent`. */
function recordQueries(
  client: pg.Client,
  sent: Array<{ text: string; values: unknown[] }>,
): pg.Client {
  const recording = Object.create(client) as pg.Client;
  const query = (text: string, values: unknown[] = []) => {
    sent.push({ text, values });
    return client.query(text, values);
  };
  recording.query = query as typeof client.query;
  return recording;
}
