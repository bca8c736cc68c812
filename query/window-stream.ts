/**
 * The live window updates of `/v1/stream`. The aggregator's flush transaction notifies channel
 * `activity_flush` right before COMMIT (PostgreSQL delivers it only on commit), with the
 * transaction's timestamp as payload. One connection LISTENs; each notification is answered by
 * one read of the windows that flush wrote, for every site at once, and each row goes to the
 * clients of its site. No client polls.
 *
 * Every event carries a cursor (`id:`): when a flush last wrote that window, in microseconds. A
 * client that reconnects with `Last-Event-ID` first gets the windows written after its cursor
 * less `RESUME_MARGIN_MS`, bounded to the last `REALTIME_WINDOWS` windows.
 */
import pg from 'pg';
import { sleep } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { REALTIME_WINDOWS } from './answers.js';
import type { QueryDatabase } from './database.js';
import { QueryError } from './errors.js';
import type { QueryMetrics } from './metrics.js';
import { readChangedWindows, type SiteWindowFigures } from './read-model.js';

export const FLUSH_CHANNEL = 'activity_flush';
const HEARTBEAT_MS = 15_000;
/** Bytes a slow client may leave unread before it is dropped (it can reconnect and resume). */
const MAX_UNREAD_BYTES = 1_048_576;
const CURSOR = /^\d{1,20}$/;
/**
 * A cursor is a flush transaction's start (`now()`), and it becomes visible at its commit. With
 * several aggregators, a flush that started before the one that handed out a cursor can commit
 * after it, with an older cursor: reading only after the cursor would skip its windows. A resume
 * therefore reads from this long before the cursor, and may repeat windows (harmless: each event
 * is the window's whole figures). The bound: every statement of a flush has the aggregator's
 * `DATABASE_QUERY_TIMEOUT_SEC` deadline (15 s by default), and PostgreSQL ends a session idle in
 * its transaction after 30 s (`idle_in_transaction_session_timeout`, aggregator/database.ts);
 * 60 s covers a flush several statements of which run near their deadline. A flush open longer
 * (no transaction-wide timeout exists) can still be missed by a resume, not by a live stream.
 */
export const RESUME_MARGIN_MS = 60_000;
const RESUME_MARGIN_US = BigInt(RESUME_MARGIN_MS) * 1000n;

/** The cursor a resume from `cursor` reads after. */
export function resumeFrom(cursor: bigint): bigint {
  return cursor > RESUME_MARGIN_US ? cursor - RESUME_MARGIN_US : 0n;
}

/** Where a stream writes: the HTTP layer's response. */
export interface EventSink {
  write(text: string): void;
  /** Bytes written and not yet taken by the client. */
  readonly unreadBytes: number;
  end(): void;
  onClose(listener: () => void): void;
}

interface Client {
  site: string;
  sink: EventSink;
  /** Events held while the resume read runs, sent after it. */
  held: string[] | undefined;
}

export interface WindowStreamOptions {
  databaseUrl: string;
  schema: string;
  windowMs: number;
  maxStreams: number;
  database: QueryDatabase;
  metrics: QueryMetrics;
  /** Called on every flush notification (the answer cache is dropped). */
  onFlush: () => void;
  logger: Logger;
}

export class WindowStream {
  private readonly clients = new Set<Client>();
  private listener: pg.Client | undefined;
  private closed = false;
  private heartbeat: NodeJS.Timeout | undefined;
  /** The oldest flush not read yet (a cursor), while notifications wait. */
  private pending: bigint | undefined;
  private reading = false;
  /** The newest cursor read: after a lost LISTEN connection, reading resumes from it. */
  private newestCursor: string | undefined;
  private connectedOnce = false;

  constructor(private readonly options: WindowStreamOptions) {}

  get size(): number {
    return this.clients.size;
  }

  /** Streams held at most (`QUERY_MAX_STREAMS`). */
  get capacity(): number {
    return this.options.maxStreams;
  }

  /** True while the LISTEN connection is up. */
  get listening(): boolean {
    return this.listener !== undefined;
  }

  /** Connects the LISTEN connection (and keeps reconnecting it) and starts the heartbeat. */
  async start(): Promise<void> {
    try {
      await this.connect();
    } catch (err) {
      // Not ready meanwhile (`listening` is false); the API answers 503 until PostgreSQL does.
      this.options.logger.warn({ err }, 'cannot LISTEN yet; retrying');
      void this.reconnect();
    }
    this.heartbeat = setInterval(() => this.broadcastAll(': heartbeat\n\n'), HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  /**
   * Adds a client of `site`; with `lastEventId`, first sends the windows written after it.
   * Throws `too_many_streams` past the bound.
   */
  async attach(site: string, lastEventId: string | undefined, sink: EventSink): Promise<void> {
    if (this.clients.size >= this.options.maxStreams) {
      throw new QueryError(
        'too_many_streams',
        `this server holds ${this.options.maxStreams} streams already; retry later`,
        undefined,
        5,
      );
    }
    const resume = lastEventId !== undefined && CURSOR.test(lastEventId) ? lastEventId : undefined;
    const client: Client = { site, sink, held: resume === undefined ? undefined : [] };
    this.clients.add(client);
    this.options.metrics.streamClients.set(this.clients.size);
    sink.onClose(() => this.detach(client));
    // The reconnection delay browsers use, and a first line so that proxies pass the headers on.
    sink.write('retry: 1000\n: connected\n\n');
    if (resume === undefined) return;
    try {
      const rows = await this.options.database.use((db) =>
        readChangedWindows(db, {
          fromMs: this.horizon(),
          windowSeconds: this.options.windowMs / 1000,
          cursor: resumeFrom(BigInt(resume)).toString(),
          inclusive: false,
          site,
        }),
      );
      // The missed windows first, then what flushes sent meanwhile (newer or the same).
      const held = client.held ?? [];
      client.held = undefined;
      for (const row of rows) this.send(client, event(row));
      for (const text of held) this.send(client, text);
    } catch (err) {
      this.options.logger.warn({ err, site }, 'stream resume read failed; the client reconnects');
      client.sink.end();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.heartbeat);
    for (const client of [...this.clients]) client.sink.end();
    this.clients.clear();
    this.options.metrics.streamClients.set(0);
    const listener = this.listener;
    this.listener = undefined;
    await listener?.end().catch(() => {});
  }

  private detach(client: Client): void {
    if (this.clients.delete(client)) this.options.metrics.streamClients.set(this.clients.size);
  }

  private horizon(): number {
    const now = Date.now();
    const { windowMs } = this.options;
    return now - (now % windowMs) - (REALTIME_WINDOWS - 1) * windowMs;
  }

  private async connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.options.databaseUrl,
      application_name: 'query-listen',
      connectionTimeoutMillis: 5000,
      keepAlive: true,
    });
    client.on('notification', (message) => {
      if (message.channel !== FLUSH_CHANNEL) return;
      this.options.metrics.flushNotifications.inc();
      this.options.onFlush();
      const payload = message.payload ?? '';
      this.notified(CURSOR.test(payload) ? BigInt(payload) : undefined);
    });
    const lost = (err?: Error): void => {
      if (this.listener !== client || this.closed) return;
      this.options.logger.warn({ err }, 'LISTEN connection lost; reconnecting');
      this.listener = undefined;
      client.end().catch(() => {});
      void this.reconnect();
    };
    client.on('error', lost);
    client.on('end', () => lost());
    try {
      await client.connect();
      await client.query(`LISTEN ${FLUSH_CHANNEL}`);
    } catch (err) {
      client.end().catch(() => {});
      throw err;
    }
    this.listener = client;
    // Flushes committed while no connection listened: read from the newest cursor seen, less
    // the margin for flushes that started before it and committed after.
    if (this.connectedOnce && this.newestCursor !== undefined) {
      this.notified(resumeFrom(BigInt(this.newestCursor)));
    }
    this.connectedOnce = true;
  }

  private async reconnect(): Promise<void> {
    for (let delayMs = 500; !this.closed; delayMs = Math.min(delayMs * 2, 10_000)) {
      await sleep(delayMs);
      if (this.closed) return;
      try {
        await this.connect();
        this.options.logger.info('LISTEN connection restored');
        return;
      } catch (err) {
        this.options.logger.warn({ err, delayMs }, 'LISTEN reconnect failed');
      }
    }
  }

  /** A flush committed at `cursor` (unknown: since the newest read). Reads are one at a time. */
  private notified(cursor: bigint | undefined): void {
    const from = cursor ?? (this.newestCursor === undefined ? 0n : BigInt(this.newestCursor) + 1n);
    this.pending = this.pending === undefined || from < this.pending ? from : this.pending;
    if (!this.reading) void this.readPending();
  }

  private async readPending(): Promise<void> {
    this.reading = true;
    try {
      while (this.pending !== undefined && !this.closed) {
        const cursor = this.pending;
        this.pending = undefined;
        if (this.clients.size === 0) {
          continue;
        }
        let rows: SiteWindowFigures[];
        try {
          rows = await this.options.database.use((db) =>
            readChangedWindows(db, {
              fromMs: this.horizon(),
              windowSeconds: this.options.windowMs / 1000,
              cursor: cursor.toString(),
              inclusive: true,
            }),
          );
        } catch (err) {
          this.options.logger.warn({ err }, 'reading flushed windows failed; retrying');
          this.pending =
            this.pending === undefined || cursor < this.pending ? cursor : this.pending;
          await sleep(1000);
          continue;
        }
        for (const row of rows) {
          if (this.newestCursor === undefined || BigInt(row.cursor) > BigInt(this.newestCursor)) {
            this.newestCursor = row.cursor;
          }
          const text = event(row);
          for (const client of this.clients) {
            if (client.site === row.site) this.send(client, text);
          }
        }
      }
    } finally {
      this.reading = false;
    }
  }

  private send(client: Client, text: string): void {
    if (client.held !== undefined) {
      client.held.push(text);
      return;
    }
    if (client.sink.unreadBytes > MAX_UNREAD_BYTES) {
      this.options.logger.warn({ site: client.site }, 'stream client too slow; closed');
      client.sink.end();
      this.detach(client);
      return;
    }
    client.sink.write(text);
    this.options.metrics.streamEvents.inc();
  }

  private broadcastAll(text: string): void {
    for (const client of this.clients) {
      if (client.held === undefined) client.sink.write(text);
    }
  }
}

/** One window as a Server-Sent Event. */
function event(row: SiteWindowFigures): string {
  const data = JSON.stringify({
    site: row.site,
    start: new Date(row.start).toISOString(),
    unique_users: row.uniqueUsers,
    page_views: row.pageViews,
    events: row.events,
    complete: row.isFinal,
  });
  return `id: ${row.cursor}\nevent: window\ndata: ${data}\n\n`;
}
