import pg from 'pg';
import { PipelineError } from '../shared/errors.js';
import { withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { QueryError } from './errors.js';

export interface QueryDatabaseOptions {
  url: string;
  schema: string;
  poolSize: number;
  /** `statement_timeout` of every connection, and the deadline of each `use`. */
  timeoutMs: number;
  logger: Logger;
}

/** Requests waiting for a connection, at most: past it, 503 at once rather than a queue. */
const MAX_WAITING = 1000;

/**
 * The pool the answers are read through. Every connection reads the pipeline's schema and has
 * `statement_timeout` set to the query deadline, so PostgreSQL itself stops a query that passes
 * it; `use` adds the same deadline on the client side, which also covers waiting for a
 * connection or for a lock.
 */
export class QueryDatabase {
  private readonly pool: pg.Pool;

  constructor(private readonly options: QueryDatabaseOptions) {
    this.pool = new pg.Pool({
      connectionString: options.url,
      application_name: 'query',
      max: options.poolSize,
      connectionTimeoutMillis: options.timeoutMs,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
      options: `-c search_path=${options.schema},public -c statement_timeout=${options.timeoutMs} -c default_transaction_read_only=on`,
    });
    this.pool.on('error', (err) => options.logger.warn({ err }, 'idle database connection lost'));
  }

  /** Runs `work` on a pooled connection within the deadline; maps timeouts to 503. */
  async use<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    if (this.pool.waitingCount >= MAX_WAITING) {
      throw new QueryError('unavailable', 'too many queries are waiting; retry', undefined, 1);
    }
    const run = async (): Promise<T> => {
      const client = await this.pool.connect();
      try {
        return await work(client);
      } finally {
        client.release();
      }
    };
    try {
      return await withDeadline(run(), this.options.timeoutMs, 'the query');
    } catch (err) {
      throw asQueryError(err, this.options.timeoutMs);
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** A database failure as the API answers it. */
export function asQueryError(err: unknown, timeoutMs: number): unknown {
  if (err instanceof QueryError) return err;
  const deadline = new QueryError(
    'deadline_exceeded',
    `the query did not finish within its deadline of ${timeoutMs} ms; retry later or ask for a shorter range`,
    undefined,
    1,
  );
  if (err instanceof PipelineError && err.code === 'deadline_exceeded') return deadline;
  if (err instanceof PipelineError && err.code === 'range_too_long') {
    return new QueryError('range_too_long', err.message, 'to');
  }
  const code = (err as { code?: unknown }).code;
  // 57014: canceled by statement_timeout.
  if (code === '57014') return deadline;
  // 42P01: no such table: the aggregator has not created the schema yet.
  if (code === '42P01') {
    return new QueryError(
      'unavailable',
      'the pipeline has not created its tables yet (the aggregator does, at start-up); retry',
      undefined,
      5,
    );
  }
  if (
    typeof code === 'string' &&
    (code.startsWith('08') ||
      code.startsWith('57P') ||
      code.startsWith('53') ||
      code === 'ECONNREFUSED')
  ) {
    return new QueryError('unavailable', 'the database is unavailable; retry', undefined, 1);
  }
  if (
    err instanceof Error &&
    /timeout exceeded when trying to connect|Connection terminated/i.test(err.message)
  ) {
    return new QueryError('unavailable', 'the database is unavailable; retry', undefined, 1);
  }
  return err;
}
