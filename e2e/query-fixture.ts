/**
 * What the query service's integration tests share: figures written through the aggregator's
 * real write path (`PartitionWindows` fed by the worker logic, `writeFlush` into PostgreSQL), a
 * query service started in-process on them, an HTTP client for its JSON answers and a reader of
 * its Server-Sent Events.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { aggregateBatch, packRecords } from '../aggregator/batch-aggregator.js';
import { writeFlush } from '../aggregator/copy-writer.js';
import { claimPartition } from '../aggregator/partition-recovery.js';
import { PartitionWindows } from '../aggregator/window-state.js';
import { readQueryConfig } from '../query/config.js';
import { type QueryService, startQuery } from '../query/service.js';
import type { Logger } from '../shared/logger.js';
import { freeTcpPort } from '../shared/testing.js';
import type { SiteEvent } from './rollup-oracle.js';

const DAY_MS = 86_400_000;

/** One partition's windows, written as the aggregator writes them. */
export class PartitionWriter {
  private offset = 0;

  private constructor(
    private readonly client: pg.ClientBase,
    private readonly state: PartitionWindows,
  ) {}

  static async claim(
    client: pg.ClientBase,
    partition: number,
    windowMs: number,
  ): Promise<PartitionWriter> {
    const checkpoint = await claimPartition(client, partition, windowMs / 1000);
    return new PartitionWriter(
      client,
      new PartitionWindows(partition, windowMs, 1_000_000, 7 * DAY_MS, checkpoint),
    );
  }

  /**
   * Counts `events` (received `receivedAfterMs` after they happened) and flushes; with
   * `closeThrough`, the windows up to that start close, which writes their hours and days.
   */
  async write(
    events: SiteEvent[],
    options: {
      receivedAfterMs?: number;
      closeThrough?: number;
      /** Holds the transaction open before COMMIT (a slow flush of another instance). */
      pauseBeforeCommit?: { ms: number; onPause: () => void };
    } = {},
  ): Promise<void> {
    const records = events.map((event, i) => ({
      offset: this.offset + i,
      timestampMs: event.timestamp + (options.receivedAfterMs ?? 1000),
      value: Buffer.from(JSON.stringify(event)),
    }));
    const result = aggregateBatch(this.state.batchInput(packRecords(records)));
    assert.deepEqual(result.invalid, []);
    assert.deepEqual(result.late, []);
    this.state.merge(result, this.offset + events.length - 1);
    this.offset += events.length;
    if (options.closeThrough !== undefined) this.state.closeThrough(options.closeThrough);
    const snapshot = this.state.snapshot();
    const outcome = await writeFlush(this.client, [snapshot], undefined, options.pauseBeforeCommit);
    assert.ok(outcome.committed);
    this.state.settle(snapshot);
  }
}

/** A query service on a free port, reading `schema`, with the default settings but `env`. */
export async function startQueryOn(
  databaseUrl: string,
  schema: string,
  env: Record<string, string>,
  logger: Logger,
): Promise<{ service: QueryService; url: string }> {
  const port = await freeTcpPort();
  const service = await startQuery(
    readQueryConfig({
      DATABASE_URL: databaseUrl,
      DATABASE_SCHEMA: schema,
      QUERY_PORT: String(port),
      QUERY_HOST: '127.0.0.1',
      ...env,
    }),
    logger,
  );
  return { service, url: `http://127.0.0.1:${port}` };
}

export interface Answer {
  status: number;
  headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: answers are checked field by field by the tests
  body: any;
  text: string;
}

/** GETs `path` with `params`, presenting `key` as a Bearer token when given. */
export async function getJson(
  base: string,
  path: string,
  params: Record<string, string> = {},
  key?: string,
): Promise<Answer> {
  const url = new URL(path, base);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  const response = await fetch(url, {
    headers: key === undefined ? {} : { authorization: `Bearer ${key}` },
    signal: AbortSignal.timeout(30_000),
  });
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: response.status, headers: response.headers, body, text };
}

export interface StreamEvent {
  id: string | undefined;
  event: string;
  data: string;
  /** performance.now() when the event's last line arrived. */
  receivedAt: number;
}

/** A Server-Sent Events connection, read event by event. */
export class EventStreamReader {
  private readonly events: StreamEvent[] = [];
  private waiter: (() => void) | undefined;
  private buffer = '';
  private ended = false;
  comments = 0;

  private constructor(
    readonly response: Response,
    private readonly controller: AbortController,
  ) {
    void this.pump();
  }

  static async open(
    base: string,
    params: Record<string, string>,
    headers: Record<string, string> = {},
  ): Promise<EventStreamReader> {
    const url = new URL('/v1/stream', base);
    for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
    const controller = new AbortController();
    const response = await fetch(url, { headers, signal: controller.signal });
    return new EventStreamReader(response, controller);
  }

  /** The next event (comments skipped), or throws after `timeoutMs`. */
  async next(timeoutMs: number): Promise<StreamEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const event = this.events.shift();
      if (event !== undefined) return event;
      if (this.ended) throw new Error('the stream ended');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no stream event within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Events received so far and not taken. */
  drain(): StreamEvent[] {
    return this.events.splice(0);
  }

  close(): void {
    this.controller.abort();
  }

  private async pump(): Promise<void> {
    const body = this.response.body;
    if (body === null) {
      this.ended = true;
      return;
    }
    const decoder = new TextDecoder();
    try {
      for await (const chunk of body) {
        this.buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end = this.buffer.indexOf('\n\n');
        while (end >= 0) {
          this.parse(this.buffer.slice(0, end));
          this.buffer = this.buffer.slice(end + 2);
          end = this.buffer.indexOf('\n\n');
        }
      }
    } catch {
      // Aborted by close().
    }
    this.ended = true;
    this.waiter?.();
  }

  private parse(block: string): void {
    let id: string | undefined;
    let event = 'message';
    const data: string[] = [];
    let fields = 0;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) {
        this.comments++;
        continue;
      }
      const at = line.indexOf(':');
      const name = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
      if (name === 'id') id = value;
      else if (name === 'event') event = value;
      else if (name === 'data') data.push(value);
      else continue;
      fields++;
    }
    if (fields === 0 || data.length === 0) return;
    this.events.push({ id, event, data: data.join('\n'), receivedAt: performance.now() });
    this.waiter?.();
  }
}

/** The service's counter `name` (summed over its labels) from /metrics. */
export async function serviceCounter(base: string, name: string): Promise<number> {
  const text = await (await fetch(new URL('/metrics', base))).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) {
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return sum;
}
