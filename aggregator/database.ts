import pg from 'pg';
import { PipelineError } from '../shared/errors.js';
import { sleep } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';

/**
 * Session settings of every aggregator connection besides its search_path. JIT off: the flush's
 * statements are short, but on tables of a few tens of thousands of rows their estimated cost
 * passes `jit_above_cost`, and compiling them took about 2 s per flush (measured: flushes of
 * 2.4 s against 0.12 s with it off, and a retention run of 30 s against 7 s).
 */
export const SESSION_OPTIONS = '-c jit=off -c idle_in_transaction_session_timeout=30000';

export interface DatabaseOptions {
  url: string;
  schema: string;
  /** Client-side deadline of one query: a hung server cannot hold a flush forever. */
  queryTimeoutMs: number;
  onRetry: (what: string) => void;
  logger: Logger;
}

/** The seed's connect policy: 10 attempts, exponential backoff from 1 s to 10 s. */
const CONNECT_ATTEMPTS = 10;

/**
 * One PostgreSQL connection for the aggregator's flushes and recovery reads, replaced whenever
 * it fails: a query that errors or times out drops the connection (its transaction, if any, is
 * rolled back by the server), and the next use connects again.
 */
export class Database {
  private client: pg.Client | undefined;

  constructor(private readonly options: DatabaseOptions) {}

  /**
   * Connects, retrying with backoff; throws `database_unavailable` after the last of `attempts`.
   * Start-up and checkpoint reads take the seed's 10; a flush takes 1, because the flush has a
   * retry policy of its own and must report a lasting outage within seconds, not minutes.
   */
  async connect(attempts = CONNECT_ATTEMPTS): Promise<pg.Client> {
    if (this.client !== undefined) return this.client;
    let delayMs = 1000;
    for (let attempt = 1; ; attempt++) {
      const client = new pg.Client({
        connectionString: this.options.url,
        application_name: 'aggregator',
        connectionTimeoutMillis: 5000,
        query_timeout: this.options.queryTimeoutMs,
        keepAlive: true,
        // The server ends a session stuck inside a transaction, so a dead aggregator never holds
        // row locks for long.
        options: `-c search_path=${this.options.schema},public ${SESSION_OPTIONS}`,
      });
      client.on('error', (err) => {
        this.options.logger.warn({ err }, 'database connection lost');
        if (this.client === client) this.client = undefined;
      });
      try {
        await client.connect();
        this.client = client;
        return client;
      } catch (err) {
        client.end().catch(() => {});
        if (attempt >= attempts) {
          throw new PipelineError(
            'database_unavailable',
            `cannot connect to PostgreSQL after ${attempt} attempts; check DATABASE_URL`,
            { cause: err, retryable: true },
          );
        }
        this.options.onRetry('connect');
        this.options.logger.warn({ err, attempt, delayMs }, 'database connect failed; retrying');
        await sleep(delayMs);
        delayMs = Math.min(delayMs * 2, 10_000);
      }
    }
  }

  /**
   * Runs `work` on the connection (connecting first, with up to `connectAttempts` attempts); on
   * failure the connection is dropped before rethrowing.
   */
  async use<T>(
    work: (client: pg.Client) => Promise<T>,
    connectAttempts = CONNECT_ATTEMPTS,
  ): Promise<T> {
    const client = await this.connect(connectAttempts);
    try {
      return await work(client);
    } catch (err) {
      this.drop(client);
      throw err;
    }
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    await client?.end();
  }

  private drop(client: pg.Client): void {
    if (this.client === client) this.client = undefined;
    // Not awaited: against a hung server `end` would wait as long as the server does.
    client.end().catch(() => {});
  }
}
