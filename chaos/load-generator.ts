/**
 * A steady load for the chaos scenarios: batches posted to ingest's `POST /activities` at a fixed
 * rate, each on its own connection (so a kill or a drain shows up on exactly the requests it
 * hit), every event recorded in an `OutcomeLedger` with what ingest answered for it.
 */
import { request as httpRequest } from 'node:http';
import type { ClientEvent } from '../e2e/activity-oracle.js';
import { SeededRandom } from '../e2e/activity-oracle.js';
import type { Outcome, OutcomeLedger, Settle } from '../e2e/outcome-ledger.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { sleep } from '../shared/lifecycle.js';

/** 503 codes that mean the broker may have stored the events (see ingest/openapi.json). */
const UNKNOWN_CODES = new Set(['broker_timeout', 'deadline_exceeded']);

/** One request, as the scenarios look at it. */
export interface RequestRecord {
  startedAt: number;
  endedAt: number;
  /** HTTP status; 0 when no answer arrived. */
  status: number;
  /** The error `code` of the answer, or of the connection failure. */
  code: string;
  retryAfter: boolean;
  events: number;
}

export interface LoadOptions {
  port: number;
  ledger: OutcomeLedger;
  seed: number;
  eventsPerSecond: number;
  batchSize: number;
  users: number;
  /** Event time of the next event; default: now, up to half a second earlier. */
  timestamp?: (random: SeededRandom) => number;
  /** Client-side limit of one request: past it, the outcome is unknown. */
  requestTimeoutMs: number;
  /** Requests in flight at most; a tick finding this many sends nothing. */
  maxInFlight?: number;
}

export class LoadGenerator {
  private readonly random: SeededRandom;
  private running = false;
  private loop: Promise<void> | undefined;
  /** The requests in flight, with the time each was sent. */
  private readonly inFlight = new Map<Promise<void>, number>();
  private readonly listeners = new Set<(record: RequestRecord) => void>();
  private sequence = 0;
  /** Requests by status (0: no answer) and, for errors, code. */
  readonly answers = new Map<string, number>();
  skippedTicks = 0;
  /** The slowest answer, by status. */
  readonly slowestMs = new Map<number, number>();
  /** 503 and 429 answers without Retry-After. */
  withoutRetryAfter = 0;

  constructor(private readonly options: LoadOptions) {
    this.random = new SeededRandom(options.seed);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    const intervalMs = (1000 * this.options.batchSize) / this.options.eventsPerSecond;
    this.loop = (async () => {
      let due = Date.now();
      while (this.running) {
        if (this.inFlight.size >= (this.options.maxInFlight ?? 64)) this.skippedTicks++;
        else {
          const sentAt = Date.now();
          const sending = this.send().finally(() => this.inFlight.delete(sending));
          this.inFlight.set(sending, sentAt);
        }
        due += intervalMs;
        await sleep(Math.max(0, due - Date.now()));
      }
    })();
  }

  /** Stops sending and waits for every request in flight to end. */
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await Promise.all(this.inFlight.keys());
  }

  /** How long the oldest request still in flight has been waiting for its answer; 0 when none. */
  oldestInFlightMs(nowMs: number): number {
    let oldest = nowMs;
    for (const at of this.inFlight.values()) if (at < oldest) oldest = at;
    return nowMs - oldest;
  }

  /** Calls `listener` with every finished request until the returned function is called. */
  onRequest(listener: (record: RequestRecord) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private nextEvent(): ClientEvent & { event_id: string } {
    const random = this.random;
    const n = Math.floor(random.next() ** 2 * this.options.users);
    return {
      user_id: `user-${n}`,
      activity_type: random.next() < 0.5 ? PAGE_VIEW : 'click',
      timestamp: this.options.timestamp?.(random) ?? Date.now() - random.int(500),
      event_id: `chaos-${this.options.seed}-${++this.sequence}`,
    };
  }

  private async send(): Promise<void> {
    const events = Array.from({ length: this.options.batchSize }, () => this.nextEvent());
    const settles = events.map((event) => this.options.ledger.sent(event));
    const startedAt = Date.now();
    const reply = await post(this.options.port, JSON.stringify(events), this.options);
    const endedAt = Date.now();
    settleAll(settles, reply);
    const key = reply.status === 200 ? '200' : `${reply.status} ${reply.code}`;
    this.answers.set(key, (this.answers.get(key) ?? 0) + 1);
    this.slowestMs.set(
      reply.status,
      Math.max(this.slowestMs.get(reply.status) ?? 0, endedAt - startedAt),
    );
    if ((reply.status === 503 || reply.status === 429) && !reply.retryAfter) {
      this.withoutRetryAfter++;
    }
    const record: RequestRecord = {
      startedAt,
      endedAt,
      status: reply.status,
      code: reply.code,
      retryAfter: reply.retryAfter,
      events: events.length,
    };
    for (const listener of this.listeners) listener(record);
  }
}

interface Reply {
  status: number;
  code: string;
  retryAfter: boolean;
  rejected: Array<{ index: number; code: string }>;
}

/** What each event's outcome is, from the answer to its batch. */
function settleAll(settles: Settle[], reply: Reply): void {
  const outcomeOf = (code: string): Outcome => (UNKNOWN_CODES.has(code) ? 'unknown' : 'rejected');
  if (reply.status === 200) {
    for (const settle of settles) settle('acknowledged');
    return;
  }
  if (reply.status === 207) {
    const rejected = new Map(reply.rejected.map((entry) => [entry.index, entry.code]));
    settles.forEach((settle, index) => {
      const code = rejected.get(index);
      settle(code === undefined ? 'acknowledged' : outcomeOf(code));
    });
    return;
  }
  if (reply.status === 0) {
    // Refused: the request never reached a server. Any other failure may have reached it.
    const outcome: Outcome = reply.code === 'ECONNREFUSED' ? 'rejected' : 'unknown';
    for (const settle of settles) settle(outcome);
    return;
  }
  // 503 "not stored" and 4xx: rejected; 503 "outcome unknown" and any other 5xx: unknown.
  const outcome: Outcome =
    reply.status === 503 ? outcomeOf(reply.code) : reply.status >= 500 ? 'unknown' : 'rejected';
  for (const settle of settles) settle(outcome);
}

/** One POST on its own connection; status 0 with the error code when no answer arrived. */
function post(port: number, body: string, options: LoadOptions): Promise<Reply> {
  return new Promise((resolve) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/activities',
        agent: false,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          let parsed: { code?: unknown; rejected?: unknown } = {};
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString()) as typeof parsed;
          } catch {
            // Not JSON: the status tells.
          }
          resolve({
            status: res.statusCode ?? 0,
            code: typeof parsed.code === 'string' ? parsed.code : '',
            retryAfter: res.headers['retry-after'] !== undefined,
            rejected: Array.isArray(parsed.rejected)
              ? (parsed.rejected as Array<{ index: number; code: string }>)
              : [],
          });
        });
        res.on('error', (err: NodeJS.ErrnoException) =>
          resolve({
            status: 0,
            code: err.code ?? 'response_error',
            retryAfter: false,
            rejected: [],
          }),
        );
      },
    );
    req.setTimeout(options.requestTimeoutMs, () => {
      const err: NodeJS.ErrnoException = new Error('client timeout');
      err.code = 'client_timeout';
      req.destroy(err);
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      resolve({ status: 0, code: err.code ?? 'request_error', retryAfter: false, rejected: [] }),
    );
    req.end(body);
  });
}
