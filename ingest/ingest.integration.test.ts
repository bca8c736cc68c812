/**
 * Ingest against the real broker: every status the README documents, produced for real by a few
 * ingest instances with different settings (each on its own port, all producing to one topic of
 * this file), then the topic read back with a real consumer. The contract checked at the end:
 * exactly the events answered as accepted are in the topic, keyed by `user_id`, normalised and
 * stamped with the default site; no event answered with anything else is. Named sites:
 * `sites.integration.test.ts`.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { createKafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, uniqueName, waitFor } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

const stack = stackFromEnv();
const topic = uniqueName('ingest_it');
const groupId = `${topic}-reader`;
const logger = createLogger('test', 'warn');

const ALLOWED_ORIGIN = 'https://app.example.com';
const API_KEYS = ['key-alpha-1f3e', 'key-beta-9c2d'];
const MAX_BODY_BYTES = 2048;
const MAX_DECOMPRESSED_BYTES = 8192;
const MAX_BATCH_EVENTS = 10;
const MAX_EVENT_AGE_SEC = 3600;

/** Every instance started by this file, closed in `after` whatever happened. */
const instances: IngestService[] = [];
/** Defaults everywhere; CORS, small body and batch limits, a one-hour maximum event age. */
let main: IngestService;
/** API_KEYS set. */
let auth: IngestService;
/** RATE_LIMIT_PER_SEC=2, RATE_LIMIT_BURST=2. */
let limited: IngestService;
/** REQUEST_TIMEOUT_SEC=1, ACK_TIMEOUT_SEC=0.5. */
let hasty: IngestService;
/** MAX_IN_FLIGHT_EVENTS=1: a batch of two can never be admitted. */
let tight: IngestService;

/** A normalised event as the topic should hold it; no `timestamp`: the receive time. */
interface StoredEvent {
  user_id: string;
  activity_type: string;
  timestamp?: number;
  event_id?: string;
  properties?: Record<string, unknown>;
}

/** What the topic must hold: every event answered as accepted, by `user_id` (unique per event). */
const accepted = new Map<string, { event: StoredEvent; sentAtMs: number; answeredAtMs: number }>();
/** `user_id`s of events answered with anything but acceptance: none may be in the topic. */
const notStored = new Set<string>();

const runTag = randomBytes(3).toString('hex');
let sequence = 0;
/** A `user_id` no other event of this run has, so each record can be traced to its request. */
const userId = (label: string): string => `${runTag}-${label}-${++sequence}`;
/** A numeric `user_id`, unique in this run: ingest must store it as its decimal string. */
const numericBase = randomInt(1, 2 ** 30) * 1000;
const numericUserId = (): number => numericBase + ++sequence;

async function startInstance(env: Record<string, string>): Promise<IngestService> {
  const service = await startIngest(
    readIngestConfig({
      KAFKA_BROKERS: stack.kafkaBrokers,
      TOPIC: topic,
      TOPIC_PARTITIONS: '3',
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: String(await freeTcpPort()),
      SHUTDOWN_GRACE_SEC: '5',
      ...env,
    }),
    logger.child({ service: 'ingest' }),
  );
  instances.push(service);
  return service;
}

before(async () => {
  // The first instance creates the topic; the others find it.
  main = await startInstance({
    CORS_ALLOWED_ORIGINS: ALLOWED_ORIGIN,
    MAX_BODY_BYTES: String(MAX_BODY_BYTES),
    MAX_DECOMPRESSED_BYTES: String(MAX_DECOMPRESSED_BYTES),
    MAX_BATCH_EVENTS: String(MAX_BATCH_EVENTS),
    MAX_EVENT_AGE_SEC: String(MAX_EVENT_AGE_SEC),
  });
  [auth, limited, hasty, tight] = await Promise.all([
    startInstance({ API_KEYS: API_KEYS.join(',') }),
    startInstance({ RATE_LIMIT_PER_SEC: '2', RATE_LIMIT_BURST: '2' }),
    startInstance({ REQUEST_TIMEOUT_SEC: '1', ACK_TIMEOUT_SEC: '0.5' }),
    startInstance({ MAX_IN_FLIGHT_EVENTS: '1' }),
  ]);
});

after(async () => {
  const results = await Promise.allSettled(
    instances.map((service, i) => withDeadline(service.close(), 15_000, `closing ingest #${i}`)),
  );
  const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'test-cleanup', logger });
  const admin = kafka.admin();
  await withDeadline(
    (async () => {
      await admin.connect();
      try {
        await admin.deleteGroups([groupId]).catch(() => {});
        await admin.deleteTopics({ topics: [topic], timeout: 10_000 });
      } finally {
        await admin.disconnect();
      }
    })(),
    20_000,
    'deleting the test topic',
  );
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

// ---------------------------------------------------------------------------------------------
// HTTP helpers

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body as a JSON object; `{}` when it is not one. */
  json: Record<string, unknown>;
  sentAtMs: number;
  answeredAtMs: number;
}

/** One request on its own connection, with exactly the headers and bytes given. */
function call(
  service: IngestService,
  method: string,
  path: string,
  options: { body?: string | Buffer; headers?: Record<string, string> } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const body = options.body === undefined ? undefined : Buffer.from(options.body);
    const headers = {
      ...(body === undefined ? {} : { 'content-length': String(body.length) }),
      ...options.headers,
    };
    const sentAtMs = Date.now();
    const req = httpRequest(
      { host: '127.0.0.1', port: service.port, method, path, headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text,
            json: parseObject(text),
            sentAtMs,
            answeredAtMs: Date.now(),
          });
        });
      },
    );
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error(`${method} ${path}: no answer in 15 s`)));
    req.end(body);
  });
}

const JSON_TYPE = { 'content-type': 'application/json' };
const NDJSON_TYPE = { 'content-type': 'application/x-ndjson' };

function postJson(
  service: IngestService,
  path: '/activity' | '/activities',
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  return call(service, 'POST', path, {
    body: JSON.stringify(body),
    headers: { ...JSON_TYPE, ...headers },
  });
}

function parseObject(text: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : {};
  } catch {
    return {};
  }
}

/** Asserts the documented error shape: status, `code`, a human `message`, `field` if given. */
function assertError(reply: Reply, status: number, code: string, field?: string): void {
  assert.equal(reply.status, status, `expected ${status} ${code}, got ${reply.text}`);
  assert.equal(reply.json.code, code, reply.text);
  assert.equal(typeof reply.json.message, 'string', reply.text);
  assert.ok((reply.json.message as string).length > 0, reply.text);
  assert.equal(reply.headers['content-type'], 'application/json');
  if (field !== undefined) assert.equal(reply.json.field, field, reply.text);
}

/** The rejected list of a batch answer without the human messages, which are checked apart. */
function rejectedOf(reply: Reply): Array<Record<string, unknown>> {
  const rejected = reply.json.rejected;
  assert.ok(Array.isArray(rejected), `no rejected list in ${reply.text}`);
  return (rejected as Array<Record<string, unknown>>).map(({ message, ...rest }) => {
    assert.equal(typeof message, 'string', JSON.stringify(rest));
    return rest;
  });
}

function recordAccepted(event: StoredEvent, reply: Reply): void {
  accepted.set(event.user_id, {
    event,
    sentAtMs: reply.sentAtMs,
    answeredAtMs: reply.answeredAtMs,
  });
}

/**
 * Records a batch's events from its answer: those listed as rejected are not stored, the others
 * are (for 200 and 207; for any other status none is).
 */
function recordBatch(events: ReadonlyArray<StoredEvent | string>, reply: Reply): void {
  const rejected = new Set(
    Array.isArray(reply.json.rejected)
      ? (reply.json.rejected as Array<{ index: number }>).map((entry) => entry.index)
      : [],
  );
  const stored = reply.status === 200 || reply.status === 207;
  events.forEach((event, index) => {
    const id = typeof event === 'string' ? event : event.user_id;
    if (stored && !rejected.has(index) && typeof event !== 'string') recordAccepted(event, reply);
    else notStored.add(id);
  });
}

/** RFC 3339 with a +05:30 offset and milliseconds, naming the instant `ms`. */
function rfc3339At(ms: number): string {
  return new Date(ms + 330 * 60_000).toISOString().replace('Z', '+05:30');
}

/**
 * A hand-written HTTP/1.1 exchange on a raw socket, for what an HTTP client will not send: a
 * body that never finishes, a Content-Length larger than the body, a body sent in two steps.
 */
class RawConnection {
  private received = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    // A reset after the server's answer is part of some scenarios; `response` reports the rest.
    socket.on('error', () => {});
  }

  static open(service: IngestService): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port: service.port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket));
      });
    });
  }

  write(data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) =>
      this.socket.write(data, (err) => (err ? reject(err) : resolve())),
    );
  }

  /** The first complete response, or a failure saying what arrived by `timeoutMs`. */
  async response(timeoutMs: number): Promise<{
    status: number;
    headers: Record<string, string>;
    json: Record<string, unknown>;
  }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parsed = parseRawResponse(this.received);
      if (parsed !== undefined) return parsed;
      const seen = JSON.stringify(this.received.toString('latin1'));
      if (this.closed) throw new Error(`connection closed before a whole response; got ${seen}`);
      if (!(await this.until(deadline))) {
        throw new Error(`no whole response within ${timeoutMs} ms; got ${seen}`);
      }
    }
  }

  /** True once the server has closed the connection, false if it is still open at `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) if (!(await this.until(deadline))) return this.closed;
    return true;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Waits for news on the socket; false when `deadline` passed first. */
  private until(deadline: number): Promise<boolean> {
    const left = deadline - Date.now();
    if (left <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), left);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve(true);
      };
    });
  }
}

function parseRawResponse(
  bytes: Buffer,
): { status: number; headers: Record<string, string>; json: Record<string, unknown> } | undefined {
  const end = bytes.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const [statusLine = '', ...lines] = bytes.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1]);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? 0);
  if (bytes.length < end + 4 + length) return undefined;
  const body = bytes.subarray(end + 4, end + 4 + length).toString();
  return { status, headers, json: parseObject(body) };
}

function rawPostHead(path: string, headers: Record<string, string>): string {
  const lines = Object.entries({ host: '127.0.0.1', ...headers }).map(([k, v]) => `${k}: ${v}`);
  return `POST ${path} HTTP/1.1\r\n${lines.join('\r\n')}\r\n\r\n`;
}

// ---------------------------------------------------------------------------------------------
// 200: single events

test('POST /activity answers 200 once the broker has the event, for each accepted form', async () => {
  const now = Date.now();
  const numeric = numericUserId();
  const [noTs, full, beacon] = [userId('no-ts'), userId('full'), userId('beacon')];
  const properties = { plan: 'pro', nested: { seats: 3, tags: ['a', 'b'] } };
  const cases: Array<{
    raw: Record<string, unknown>;
    stored: StoredEvent;
    headers?: Record<string, string>;
  }> = [
    {
      // Numeric user_id becomes its decimal string; RFC 3339 with an offset becomes epoch ms.
      raw: { user_id: numeric, activity_type: 'page_view', timestamp: rfc3339At(now - 61_234) },
      stored: { user_id: String(numeric), activity_type: 'page_view', timestamp: now - 61_234 },
    },
    {
      // No timestamp: the receive time.
      raw: { user_id: noTs, activity_type: 'click' },
      stored: { user_id: noTs, activity_type: 'click' },
    },
    {
      raw: {
        user_id: full,
        activity_type: 'signup',
        timestamp: now - 120_000,
        event_id: `evt-${runTag}`,
        properties,
      },
      stored: {
        user_id: full,
        activity_type: 'signup',
        timestamp: now - 120_000,
        event_id: `evt-${runTag}`,
        properties,
      },
    },
    {
      // What navigator.sendBeacon sends for a string body.
      raw: { user_id: beacon, activity_type: 'page_view', timestamp: now - 5_000 },
      stored: { user_id: beacon, activity_type: 'page_view', timestamp: now - 5_000 },
      headers: { 'content-type': 'text/plain;charset=UTF-8' },
    },
  ];
  for (const { raw, stored, headers } of cases) {
    const reply = await postJson(main, '/activity', raw, headers);
    assert.equal(reply.status, 200, reply.text);
    assert.deepEqual(
      reply.json,
      stored.event_id === undefined
        ? { status: 'accepted' }
        : { status: 'accepted', event_id: stored.event_id },
    );
    recordAccepted(stored, reply);
  }
});

// ---------------------------------------------------------------------------------------------
// Batches: 200, 207, 400, 413, 503, as a JSON array and as NDJSON

test('POST /activities: every event valid gives 200 with all accepted (JSON array and NDJSON)', async () => {
  const now = Date.now();
  const numeric = numericUserId();
  const array: StoredEvent[] = [
    { user_id: userId('arr'), activity_type: 'page_view', timestamp: now - 1_000 },
    { user_id: String(numeric), activity_type: 'click', timestamp: now - 2_000 },
    { user_id: userId('arr'), activity_type: 'page_view', properties: { path: '/home' } },
  ];
  const sent = array.map((event, i) =>
    i === 1 ? { ...event, user_id: numeric, timestamp: rfc3339At(now - 2_000) } : event,
  );
  const arrayReply = await postJson(main, '/activities', sent);
  assert.equal(arrayReply.status, 200, arrayReply.text);
  assert.deepEqual(arrayReply.json, { accepted: 3, rejected: [] });
  recordBatch(array, arrayReply);

  const lines: StoredEvent[] = [
    { user_id: userId('nd'), activity_type: 'page_view', timestamp: now - 3_000 },
    { user_id: userId('nd'), activity_type: 'scroll' },
    { user_id: userId('nd'), activity_type: 'page_view', timestamp: now - 4_000 },
  ];
  // A blank line in the middle and a trailing newline are skipped, not events.
  const ndjson = `${JSON.stringify(lines[0])}\n\n${JSON.stringify(lines[1])}\r\n${JSON.stringify(lines[2])}\n`;
  const ndReply = await call(main, 'POST', '/activities', { body: ndjson, headers: NDJSON_TYPE });
  assert.equal(ndReply.status, 200, ndReply.text);
  assert.deepEqual(ndReply.json, { accepted: 3, rejected: [] });
  recordBatch(lines, ndReply);
});

test('POST /activities: some invalid gives 207 listing the rejected by index (JSON array)', async () => {
  const now = Date.now();
  const ids = Array.from({ length: 7 }, () => userId('mix'));
  const events: Array<StoredEvent | string> = [
    { user_id: ids[0] as string, activity_type: 'page_view', timestamp: now - 1_000 },
    ids[1] as string,
    { user_id: ids[2] as string, activity_type: 'click' },
    ids[3] as string,
    ids[4] as string,
    ids[5] as string,
    { user_id: ids[6] as string, activity_type: 'page_view', timestamp: now - 7_000 },
  ];
  const body = [
    events[0],
    { user_id: ids[1], activity_type: 'click', colour: 'red' },
    events[2],
    { user_id: ids[3] },
    `not an object ${ids[4]}`,
    { user_id: ids[5], activity_type: 'click', timestamp: now - 2 * MAX_EVENT_AGE_SEC * 1000 },
    events[6],
  ];
  const reply = await postJson(main, '/activities', body);
  assert.equal(reply.status, 207, reply.text);
  assert.equal(reply.json.accepted, 3);
  assert.deepEqual(rejectedOf(reply), [
    { index: 1, code: 'unknown_field', field: 'colour' },
    { index: 3, code: 'missing_field', field: 'activity_type' },
    { index: 4, code: 'not_an_object' },
    { index: 5, code: 'timestamp_too_old', field: 'timestamp' },
  ]);
  recordBatch(events, reply);
});

test('POST /activities: some invalid gives 207 listing the rejected by index (NDJSON)', async () => {
  const now = Date.now();
  const ids = Array.from({ length: 6 }, () => userId('ndmix'));
  const events: Array<StoredEvent | string> = [
    { user_id: ids[0] as string, activity_type: 'page_view', timestamp: now - 1_000 },
    ids[1] as string,
    { user_id: ids[2] as string, activity_type: 'click', event_id: `e-${ids[2]}` },
    ids[3] as string,
    { user_id: ids[4] as string, activity_type: 'page_view' },
    ids[5] as string,
  ];
  const lines = [
    JSON.stringify(events[0]),
    `{"user_id":"${ids[1]}","activity_type":`,
    JSON.stringify(events[2]),
    JSON.stringify({ user_id: ids[3], activity_type: 'click', timestamp: now + 10 * 60_000 }),
    JSON.stringify(events[4]),
    JSON.stringify([ids[5], 'page_view']),
  ];
  const reply = await call(main, 'POST', '/activities', {
    body: lines.join('\n'),
    headers: NDJSON_TYPE,
  });
  assert.equal(reply.status, 207, reply.text);
  assert.equal(reply.json.accepted, 3);
  assert.deepEqual(rejectedOf(reply), [
    { index: 1, code: 'invalid_json' },
    { index: 3, code: 'timestamp_in_future', field: 'timestamp' },
    { index: 5, code: 'not_an_object' },
  ]);
  recordBatch(events, reply);
});

test('POST /activities: no valid event gives 400 no_valid_events with every reason', async () => {
  const [a, b, c, d] = [userId('none'), userId('none'), userId('none'), userId('none')];
  const arrayReply = await postJson(main, '/activities', [
    { user_id: a },
    { user_id: '', activity_type: `click-${b}` },
  ]);
  assertError(arrayReply, 400, 'no_valid_events');
  assert.equal(arrayReply.json.accepted, 0);
  assert.deepEqual(rejectedOf(arrayReply), [
    { index: 0, code: 'missing_field', field: 'activity_type' },
    { index: 1, code: 'empty_string', field: 'user_id' },
  ]);
  recordBatch([a, b], arrayReply);

  const ndReply = await call(main, 'POST', '/activities', {
    body: `nope ${c}\n${JSON.stringify({ user_id: d, activity_type: 'x', extra: 1 })}\n`,
    headers: NDJSON_TYPE,
  });
  assertError(ndReply, 400, 'no_valid_events');
  assert.equal(ndReply.json.accepted, 0);
  assert.deepEqual(rejectedOf(ndReply), [
    { index: 0, code: 'invalid_json' },
    { index: 1, code: 'unknown_field', field: 'extra' },
  ]);
  recordBatch([c, d], ndReply);
});

test('POST /activities: a body that is not a batch gives 400 for the whole batch', async () => {
  const id = userId('notbatch');
  notStored.add(id);
  const valid = { user_id: id, activity_type: 'click' };
  assertError(
    await call(main, 'POST', '/activities', {
      body: `[${JSON.stringify(valid)},`,
      headers: JSON_TYPE,
    }),
    400,
    'invalid_json',
  );
  assertError(await postJson(main, '/activities', valid), 400, 'not_an_array');
  assertError(await postJson(main, '/activities', []), 400, 'empty_batch');
  assertError(
    await call(main, 'POST', '/activities', { body: '\n  \n\n', headers: NDJSON_TYPE }),
    400,
    'empty_batch',
  );
});

test('POST /activities: more than MAX_BATCH_EVENTS gives 413 too_many_events, none stored', async () => {
  const events = Array.from({ length: MAX_BATCH_EVENTS + 1 }, () => ({
    user_id: userId('many'),
    activity_type: 'click',
  }));
  const arrayReply = await postJson(main, '/activities', events);
  assertError(arrayReply, 413, 'too_many_events');
  const ndReply = await call(main, 'POST', '/activities', {
    body: events.map((event) => JSON.stringify(event)).join('\n'),
    headers: NDJSON_TYPE,
  });
  assertError(ndReply, 413, 'too_many_events');
  for (const event of events) notStored.add(event.user_id);
});

test('POST /activities: 503 + Retry-After when the producer admits none of the events', async () => {
  // MAX_IN_FLIGHT_EVENTS=1 on `tight`: two valid events can never be admitted together.
  const ids = [userId('full'), userId('full'), userId('full')];
  const arrayReply = await postJson(tight, '/activities', [
    { user_id: ids[0], activity_type: 'click' },
    { user_id: ids[1], activity_type: 'page_view' },
    { user_id: ids[2], activity_type: 'click', colour: 'red' },
  ]);
  assertError(arrayReply, 503, 'queue_full');
  assert.equal(arrayReply.headers['retry-after'], '1');
  assert.equal(arrayReply.json.accepted, 0);
  assert.deepEqual(rejectedOf(arrayReply), [
    { index: 0, code: 'queue_full', retryable: true },
    { index: 1, code: 'queue_full', retryable: true },
    { index: 2, code: 'unknown_field', field: 'colour' },
  ]);
  recordBatch(ids, arrayReply);

  const ndIds = [userId('fullnd'), userId('fullnd')];
  const ndReply = await call(tight, 'POST', '/activities', {
    body: ndIds.map((id) => JSON.stringify({ user_id: id, activity_type: 'click' })).join('\n'),
    headers: NDJSON_TYPE,
  });
  assertError(ndReply, 503, 'queue_full');
  assert.equal(ndReply.headers['retry-after'], '1');
  assert.equal(ndReply.json.accepted, 0);
  assert.deepEqual(rejectedOf(ndReply), [
    { index: 0, code: 'queue_full', retryable: true },
    { index: 1, code: 'queue_full', retryable: true },
  ]);
  recordBatch(ndIds, ndReply);

  // A batch of one fits: the same instance still stores events.
  const single: StoredEvent = { user_id: userId('fits'), activity_type: 'click' };
  const fits = await postJson(tight, '/activities', [single]);
  assert.equal(fits.status, 200, fits.text);
  recordBatch([single], fits);
});

test('POST /activity: 503 queue_full + Retry-After for requests beyond MAX_IN_FLIGHT_EVENTS', async () => {
  const events: StoredEvent[] = Array.from({ length: 20 }, () => ({
    user_id: userId('burst'),
    activity_type: 'click',
  }));
  const replies = await Promise.all(events.map((event) => postJson(tight, '/activity', event)));
  replies.forEach((reply, i) => {
    const event = events[i] as StoredEvent;
    if (reply.status === 200) {
      recordAccepted(event, reply);
      return;
    }
    notStored.add(event.user_id);
    assertError(reply, 503, 'queue_full');
    assert.equal(reply.headers['retry-after'], '1');
  });
  const statuses = replies.map((reply) => reply.status);
  assert.ok(statuses.includes(200), `no request was admitted: ${statuses}`);
  assert.ok(statuses.includes(503), `no request was refused: ${statuses}`);
});

// ---------------------------------------------------------------------------------------------
// 400: single events

test('POST /activity: 400 for each kind of bad body, naming the field at fault', async () => {
  const now = Date.now();
  const bad: Array<{ body: string | Buffer; code: string; field?: string; id: string }> = [];
  const add = (code: string, field: string | undefined, make: (id: string) => string | Buffer) => {
    const id = userId(code);
    bad.push({ body: make(id), code, id, ...(field === undefined ? {} : { field }) });
  };
  add('invalid_json', undefined, (id) => `{"user_id":"${id}","activity_type":`);
  add('invalid_utf8', undefined, (id) =>
    Buffer.concat([
      Buffer.from(`{"user_id":"${id}`),
      Buffer.from([0xff]),
      Buffer.from('","activity_type":"click"}'),
    ]),
  );
  // JSON escapes that decode to a lone surrogate and to NUL: valid JSON, forbidden strings.
  add('invalid_string', 'user_id', (id) => `{"user_id":"${id}\\ud800","activity_type":"click"}`);
  add('invalid_string', 'activity_type', (id) => `{"user_id":"${id}","activity_type":"a\\u0000"}`);
  add('unknown_field', 'userId', (id) =>
    JSON.stringify({ user_id: id, activity_type: 'click', userId: id }),
  );
  add('timestamp_in_future', 'timestamp', (id) =>
    JSON.stringify({ user_id: id, activity_type: 'click', timestamp: now + 10 * 60_000 }),
  );
  add('timestamp_too_old', 'timestamp', (id) =>
    JSON.stringify({
      user_id: id,
      activity_type: 'click',
      timestamp: rfc3339At(now - 2 * MAX_EVENT_AGE_SEC * 1000),
    }),
  );
  add('invalid_timestamp', 'timestamp', (id) =>
    JSON.stringify({ user_id: id, activity_type: 'click', timestamp: '2026-02-30T10:00:00Z' }),
  );
  add('missing_field', 'activity_type', (id) => JSON.stringify({ user_id: id }));
  add('not_an_object', undefined, (id) => JSON.stringify([id, 'click']));

  for (const { body, code, field, id } of bad) {
    notStored.add(id);
    const reply = await call(main, 'POST', '/activity', { body, headers: JSON_TYPE });
    assertError(reply, 400, code, field);
    if (code === 'unknown_field') assert.match(reply.json.message as string, /"userId"/);
  }

  const gzipId = userId('gz');
  notStored.add(gzipId);
  const notGzip = await call(main, 'POST', '/activity', {
    body: JSON.stringify({ user_id: gzipId, activity_type: 'click' }),
    headers: { ...JSON_TYPE, 'content-encoding': 'gzip' },
  });
  assertError(notGzip, 400, 'invalid_gzip');
});

// ---------------------------------------------------------------------------------------------
// 401, 403/204 (CORS), 404, 405

test('API_KEYS: 401 + WWW-Authenticate without a valid key; 200 with one, either header', async () => {
  const missing = userId('nokey');
  const wrong = [userId('badkey'), userId('badkey')];
  notStored
    .add(missing)
    .add(wrong[0] as string)
    .add(wrong[1] as string);
  const noKey = await postJson(auth, '/activity', { user_id: missing, activity_type: 'click' });
  assertError(noKey, 401, 'missing_api_key');
  assert.equal(noKey.headers['www-authenticate'], 'Bearer');

  const badBearer = await postJson(
    auth,
    '/activity',
    { user_id: wrong[0], activity_type: 'click' },
    { authorization: 'Bearer not-a-key' },
  );
  assertError(badBearer, 401, 'invalid_api_key');
  assert.equal(badBearer.headers['www-authenticate'], 'Bearer');
  const badHeader = await postJson(
    auth,
    '/activities',
    [{ user_id: wrong[1], activity_type: 'click' }],
    { 'x-api-key': `${API_KEYS[0]}x` },
  );
  assertError(badHeader, 401, 'invalid_api_key');

  const viaBearer: StoredEvent = { user_id: userId('bearer'), activity_type: 'click' };
  const bearerReply = await postJson(auth, '/activity', viaBearer, {
    authorization: `Bearer ${API_KEYS[0]}`,
  });
  assert.equal(bearerReply.status, 200, bearerReply.text);
  recordAccepted(viaBearer, bearerReply);
  const viaHeader: StoredEvent = { user_id: userId('xkey'), activity_type: 'page_view' };
  const headerReply = await postJson(auth, '/activities', [viaHeader], {
    'x-api-key': API_KEYS[1] as string,
  });
  assert.equal(headerReply.status, 200, headerReply.text);
  recordBatch([viaHeader], headerReply);
});

test('CORS: 403 preflight and write from another origin; 204 and 200 from an allowed one', async () => {
  const preflight = (origin: string, path: string) =>
    call(main, 'OPTIONS', path, {
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type',
      },
    });
  const refused = await preflight('https://evil.example.net', '/activity');
  assertError(refused, 403, 'origin_not_allowed');
  assert.equal(refused.headers['access-control-allow-origin'], undefined);

  for (const path of ['/activity', '/activities']) {
    const allowed = await preflight(ALLOWED_ORIGIN, path);
    assert.equal(allowed.status, 204, allowed.text);
    assert.equal(allowed.text, '');
    assert.equal(allowed.headers['access-control-allow-origin'], ALLOWED_ORIGIN);
    assert.match(allowed.headers.vary ?? '', /origin/i);
    assert.match(allowed.headers['access-control-allow-methods'] ?? '', /\bPOST\b/);
    const allowHeaders = (allowed.headers['access-control-allow-headers'] ?? '').toLowerCase();
    for (const header of ['content-type', 'content-encoding', 'authorization', 'x-api-key']) {
      assert.ok(allowHeaders.includes(header), `${header} missing from ${allowHeaders}`);
    }
    assert.ok(Number(allowed.headers['access-control-max-age']) > 0);
  }

  // The actual POST from the allowed origin carries the CORS headers, success or error.
  const event: StoredEvent = { user_id: userId('cors'), activity_type: 'page_view' };
  const posted = await postJson(main, '/activity', event, { origin: ALLOWED_ORIGIN });
  assert.equal(posted.status, 200, posted.text);
  assert.equal(posted.headers['access-control-allow-origin'], ALLOWED_ORIGIN);
  assert.match(posted.headers.vary ?? '', /origin/i);
  recordAccepted(event, posted);
  const badId = userId('corsbad');
  notStored.add(badId);
  const rejected = await postJson(
    main,
    '/activity',
    { user_id: badId },
    { origin: ALLOWED_ORIGIN },
  );
  assertError(rejected, 400, 'missing_field', 'activity_type');
  assert.equal(rejected.headers['access-control-allow-origin'], ALLOWED_ORIGIN);

  // With CORS_ALLOWED_ORIGINS set, a write from another origin is refused whatever its media
  // type: a text/plain POST (sendBeacon, a forged form) needs no preflight, so CORS headers
  // alone would not keep it from being stored.
  for (const contentType of ['application/json', 'text/plain']) {
    const foreignId = userId('foreign');
    notStored.add(foreignId);
    const foreignReply = await call(main, 'POST', '/activity', {
      body: JSON.stringify({ user_id: foreignId, activity_type: 'click' }),
      headers: { 'content-type': contentType, origin: 'https://evil.example.net' },
    });
    assertError(foreignReply, 403, 'origin_not_allowed');
    assert.equal(foreignReply.headers['access-control-allow-origin'], undefined);
  }
  const foreignBatchId = userId('foreign-batch');
  notStored.add(foreignBatchId);
  assertError(
    await call(main, 'POST', '/activities', {
      body: JSON.stringify([{ user_id: foreignBatchId, activity_type: 'click' }]),
      headers: { 'content-type': 'text/plain', origin: 'null' },
    }),
    403,
    'origin_not_allowed',
  );
  // Without Origin (a server, an app) a write is not a browser's cross-origin request.
  const originless: StoredEvent = { user_id: userId('originless'), activity_type: 'click' };
  const originlessReply = await call(main, 'POST', '/activity', {
    body: JSON.stringify(originless),
    headers: { 'content-type': 'text/plain' },
  });
  assert.equal(originlessReply.status, 200, originlessReply.text);
  recordAccepted(originless, originlessReply);
});

test('refused from its head: a small body sent along is discarded, the answer arrives whole', async () => {
  const id = userId('unauth-body');
  notStored.add(id);
  // Under 64 KiB: drained unread rather than closed under the client.
  const body = JSON.stringify({ user_id: id, activity_type: 'click', pad: 'x'.repeat(60_000) });
  const connection = await RawConnection.open(auth);
  try {
    await connection.write(
      `${rawPostHead('/activity', { ...JSON_TYPE, 'content-length': String(body.length) })}${body}`,
    );
    const response = await connection.response(5_000);
    assert.equal(response.status, 401, JSON.stringify(response));
    assert.equal(response.json.code, 'missing_api_key');
    assert.equal(response.headers.connection, 'close');
  } finally {
    connection.destroy();
  }
});

test('404 for an unknown path, 405 with Allow for a wrong method', async () => {
  assertError(await call(main, 'GET', '/nope'), 404, 'not_found');
  const id = userId('404');
  notStored.add(id);
  const wrongPath = await call(main, 'POST', '/v1/activity', {
    body: JSON.stringify({ user_id: id, activity_type: 'click' }),
    headers: JSON_TYPE,
  });
  assertError(wrongPath, 404, 'not_found');

  const getActivity = await call(main, 'GET', '/activity');
  assertError(getActivity, 405, 'method_not_allowed');
  assert.equal(getActivity.headers.allow, 'POST, OPTIONS');
  const putBatch = await call(main, 'PUT', '/activities', { body: '[]', headers: JSON_TYPE });
  assertError(putBatch, 405, 'method_not_allowed');
  assert.equal(putBatch.headers.allow, 'POST, OPTIONS');
  const postHealth = await call(main, 'POST', '/healthz', { body: '{}', headers: JSON_TYPE });
  assertError(postHealth, 405, 'method_not_allowed');
  assert.equal(postHealth.headers.allow, 'GET, HEAD');
});

// ---------------------------------------------------------------------------------------------
// 408, 413, 415, 429, 503 draining

test('408 request_timeout when the body never finishes within REQUEST_TIMEOUT_SEC', async () => {
  const connection = await RawConnection.open(hasty);
  try {
    const started = Date.now();
    await connection.write(
      `${rawPostHead('/activity', { ...JSON_TYPE, 'content-length': '100' })}{"user_id"`,
    );
    const response = await connection.response(5_000);
    const elapsed = Date.now() - started;
    assert.equal(response.status, 408, JSON.stringify(response));
    assert.equal(response.json.code, 'request_timeout');
    assert.ok(elapsed >= 900 && elapsed < 3_000, `answered after ${elapsed} ms, expected ~1 s`);
    assert.ok(await connection.closedWithin(2_000), 'the connection stayed open after the 408');
  } finally {
    connection.destroy();
  }
  // The instance is still serving.
  assert.equal((await call(hasty, 'GET', '/healthz')).status, 200);
});

test('413 body_too_large: declared Content-Length, chunked body, gzip inflating past the cap', async () => {
  // Declared: answered at once, before any of the body arrives.
  const declared = await RawConnection.open(main);
  try {
    const started = Date.now();
    await declared.write(
      rawPostHead('/activity', { ...JSON_TYPE, 'content-length': String(MAX_BODY_BYTES * 2) }),
    );
    const response = await declared.response(5_000);
    assert.equal(response.status, 413, JSON.stringify(response));
    assert.equal(response.json.code, 'body_too_large');
    assert.equal(response.json.limit, MAX_BODY_BYTES);
    assert.ok(Date.now() - started < 1_000, 'the 413 waited for a body');
    assert.ok(await declared.closedWithin(2_000), 'the connection stayed open after the 413');
  } finally {
    declared.destroy();
  }

  // Chunked: no length declared; the limit is enforced while the body streams in.
  const chunked = await RawConnection.open(main);
  try {
    const chunk = `${'x'.repeat(1000)}`;
    const frame = `${chunk.length.toString(16)}\r\n${chunk}\r\n`;
    await chunked.write(
      `${rawPostHead('/activities', { ...JSON_TYPE, 'transfer-encoding': 'chunked' })}${frame}${frame}${frame}0\r\n\r\n`,
    );
    const response = await chunked.response(5_000);
    assert.equal(response.status, 413, JSON.stringify(response));
    assert.equal(response.json.code, 'body_too_large');
  } finally {
    chunked.destroy();
  }

  // Gzip: small as sent, past MAX_DECOMPRESSED_BYTES once inflated.
  const bombId = userId('bomb');
  notStored.add(bombId);
  const inflated = `[${JSON.stringify({ user_id: bombId, activity_type: 'click' })}${' '.repeat(MAX_DECOMPRESSED_BYTES * 4)}]`;
  const bomb = gzipSync(inflated);
  assert.ok(bomb.length < MAX_BODY_BYTES);
  const bombReply = await call(main, 'POST', '/activities', {
    body: bomb,
    headers: { ...JSON_TYPE, 'content-encoding': 'gzip' },
  });
  assertError(bombReply, 413, 'body_too_large');

  // The same path with a gzip body inside the cap is accepted.
  const events: StoredEvent[] = [
    { user_id: userId('gzip'), activity_type: 'page_view' },
    { user_id: userId('gzip'), activity_type: 'click' },
  ];
  const gzipReply = await call(main, 'POST', '/activities', {
    body: gzipSync(JSON.stringify(events)),
    headers: { ...JSON_TYPE, 'content-encoding': 'gzip' },
  });
  assert.equal(gzipReply.status, 200, gzipReply.text);
  assert.deepEqual(gzipReply.json, { accepted: 2, rejected: [] });
  recordBatch(events, gzipReply);
});

test('CORS headers are on every answer to an allowed origin, the 413 of the HTTP layer too', async () => {
  // Without them a browser cannot read the 413 and sees a network error: it cannot tell that
  // retrying the same body is pointless.
  const connection = await RawConnection.open(main);
  try {
    await connection.write(
      rawPostHead('/activity', {
        ...JSON_TYPE,
        origin: ALLOWED_ORIGIN,
        'content-length': String(MAX_BODY_BYTES * 2),
      }),
    );
    const response = await connection.response(5_000);
    assert.equal(response.status, 413, JSON.stringify(response));
    assert.equal(
      response.headers['access-control-allow-origin'],
      ALLOWED_ORIGIN,
      `413 to an allowed origin without CORS headers: ${JSON.stringify(response.headers)}`,
    );
  } finally {
    connection.destroy();
  }
});

test('415 for an unsupported content type, content encoding or charset', async () => {
  const cases: Array<{ path: string; headers: Record<string, string>; code: string }> = [
    { path: '/activity', headers: { 'content-type': 'text/html' }, code: 'unsupported_media_type' },
    { path: '/activity', headers: NDJSON_TYPE, code: 'unsupported_media_type' },
    {
      path: '/activities',
      headers: { 'content-type': 'application/xml' },
      code: 'unsupported_media_type',
    },
    { path: '/activity', headers: {}, code: 'unsupported_media_type' },
    {
      path: '/activity',
      headers: { ...JSON_TYPE, 'content-encoding': 'br' },
      code: 'unsupported_encoding',
    },
    {
      path: '/activity',
      headers: { 'content-type': 'application/json; charset=latin1' },
      code: 'unsupported_charset',
    },
  ];
  for (const { path, headers, code } of cases) {
    const id = userId('415');
    notStored.add(id);
    const event = { user_id: id, activity_type: 'click' };
    const body = JSON.stringify(path === '/activities' ? [event] : event);
    const reply = await call(main, 'POST', path, { body, headers });
    assertError(reply, 415, code);
  }
});

test('429 rate_limited + Retry-After for the request past RATE_LIMIT_BURST', async () => {
  // Sent together, so that the bucket (2 tokens, 2 per second) cannot refill in between.
  const events: StoredEvent[] = [0, 1, 2].map(() => ({
    user_id: userId('rate'),
    activity_type: 'click',
  }));
  const replies = await Promise.all(events.map((event) => postJson(limited, '/activity', event)));
  const statuses = replies.map((reply) => reply.status).sort();
  assert.deepEqual(statuses, [200, 200, 429], replies.map((reply) => reply.text).join('\n'));
  let retryAfter = 0;
  replies.forEach((reply, i) => {
    const event = events[i] as StoredEvent;
    if (reply.status === 200) {
      recordAccepted(event, reply);
      return;
    }
    notStored.add(event.user_id);
    assertError(reply, 429, 'rate_limited');
    retryAfter = Number(reply.headers['retry-after']);
  });
  assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After: ${retryAfter}`);

  // Honouring Retry-After is enough to be admitted again.
  await sleep(retryAfter * 1000);
  const later: StoredEvent = { user_id: userId('rate-later'), activity_type: 'click' };
  const laterReply = await postJson(limited, '/activity', later);
  assert.equal(laterReply.status, 200, laterReply.text);
  recordAccepted(later, laterReply);
});

test('shutting down: a request admitted before is served; one arriving after gets 503 draining', async () => {
  const draining = await startInstance({});
  const admittedId = userId('admitted');
  const refusedId = userId('draining');
  notStored.add(refusedId);
  const admittedEvent: StoredEvent = { user_id: admittedId, activity_type: 'click' };
  const body = JSON.stringify(admittedEvent);
  const late = JSON.stringify({ user_id: refusedId, activity_type: 'click' });
  const connection = await RawConnection.open(draining);
  // Accepted by the server before close(), which stops accepting new connections at once.
  const idle = await RawConnection.open(draining);
  try {
    const sentAtMs = Date.now();
    await connection.write(
      `${rawPostHead('/activity', { ...JSON_TYPE, 'content-length': String(body.length) })}${body.slice(0, -5)}`,
    );
    await sleep(200);
    const closing = draining.close();
    assert.equal(draining.state.state, 'draining');
    // Its head passed the gates while running: it is read to the end and produced.
    await connection.write(body.slice(-5));
    const served = await connection.response(5_000);
    assert.equal(served.status, 200, JSON.stringify(served));
    assert.equal(served.headers.connection, 'close');
    accepted.set(admittedId, { event: admittedEvent, sentAtMs, answeredAtMs: Date.now() });
    // A head arriving after close() meets the shutdown gate, before its body is read.
    await idle.write(
      `${rawPostHead('/activity', { ...JSON_TYPE, 'content-length': String(late.length) })}${late}`,
    );
    const response = await idle.response(5_000);
    assert.equal(response.status, 503, JSON.stringify(response));
    assert.equal(response.json.code, 'draining');
    assert.equal(response.headers['retry-after'], '1');
    assert.equal(response.headers.connection, 'close');
    await withDeadline(closing, 10_000, 'closing the draining instance');
    assert.equal(draining.state.state, 'stopped');
  } finally {
    connection.destroy();
    idle.destroy();
  }
  // No new connections once draining.
  await assert.rejects(call(draining, 'GET', '/healthz'), /ECONNREFUSED/);
});

// ---------------------------------------------------------------------------------------------
// What the broker holds

test('the topic holds exactly the accepted events, keyed by user_id, normalised, stamped', async () => {
  assert.ok(accepted.size > 0);
  const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'test-reader', logger });
  const admin = kafka.admin();
  await admin.connect();
  let offsetsTotal = 0;
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    for (const partition of offsets) offsetsTotal += Number(partition.high) - Number(partition.low);
  } finally {
    await admin.disconnect();
  }

  const records: Array<{
    key: string | undefined;
    value: string;
    timestamp: number;
    contentType: string | undefined;
    partition: number;
  }> = [];
  const consumer = kafka.consumer({ kafkaJS: { groupId, fromBeginning: true } });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic] });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const header = message.headers?.['content-type'];
        records.push({
          key: message.key?.toString(),
          value: message.value?.toString() ?? '',
          timestamp: Number(message.timestamp),
          contentType: header === undefined ? undefined : String(header),
          partition,
        });
      },
    });
    await waitFor(async () => (records.length >= accepted.size ? true : undefined), {
      timeoutMs: 30_000,
      what: `${accepted.size} records`,
      describe: () => `${records.length} records`,
    });
    // Anything produced by a request answered otherwise would have arrived with the rest.
    await sleep(1_500);
  } finally {
    await withDeadline(consumer.disconnect(), 10_000, 'disconnecting the consumer');
  }

  const intruders = records.filter((record) => notStored.has(record.key ?? ''));
  assert.deepEqual(
    intruders.map((record) => record.value),
    [],
    'events answered as not stored are in the topic',
  );
  assert.equal(records.length, accepted.size, 'records in the topic vs events answered accepted');
  assert.equal(offsetsTotal, accepted.size, 'offsets in the topic vs events answered accepted');

  const partitionOf = new Map<string, number>();
  const assignedIds = new Set<string>();
  for (const record of records) {
    assert.ok(record.key !== undefined, `a record without key: ${record.value}`);
    const expected = accepted.get(record.key);
    assert.ok(expected !== undefined, `unexpected record ${record.key}: ${record.value}`);
    assert.equal(record.contentType, 'application/json');
    const value = JSON.parse(record.value) as StoredEvent & { site?: string; time_zone?: string };
    assert.equal(value.user_id, record.key, 'the key is the user_id');
    // The Kafka timestamp is the receive time, and a missing event time is that time too.
    const { sentAtMs, answeredAtMs } = expected;
    assert.ok(
      record.timestamp >= sentAtMs && record.timestamp <= answeredAtMs,
      `record time ${record.timestamp} outside the request's [${sentAtMs}, ${answeredAtMs}]`,
    );
    // Without API_KEYS, and with keys of the form before sites: the default site, in UTC.
    const { site, time_zone: timeZone, ...stored } = value;
    assert.deepEqual([site, timeZone], ['default', 'UTC'], record.value);
    // An event sent without an event_id gets one from ingest, unique to the event.
    const { event_id: eventId, ...rest } = stored;
    assert.ok(typeof eventId === 'string' && eventId.length > 0, record.value);
    if (expected.event.event_id === undefined) {
      assert.ok(!assignedIds.has(eventId), `event_id ${eventId} assigned twice`);
      assignedIds.add(eventId);
    } else {
      assert.equal(eventId, expected.event.event_id);
    }
    const { event_id: _sent, ...sent } = expected.event;
    if (expected.event.timestamp === undefined) {
      assert.equal(value.timestamp, record.timestamp, record.value);
      assert.deepEqual(rest, { ...sent, timestamp: record.timestamp });
    } else {
      assert.deepEqual(rest, sent);
    }
    // The Java client's partitioner: any Kafka client keyed by user_id agrees on the partition.
    assert.equal(record.partition, javaPartition(record.key, 3), `partition of ${record.key}`);
    partitionOf.set(record.key, record.partition);
  }
  assert.equal(partitionOf.size, accepted.size, 'each accepted event exactly once');
});

/** The partition Kafka's Java DefaultPartitioner picks for `key`: murmur2, positive, modulo. */
function javaPartition(key: string, partitions: number): number {
  const data = Buffer.from(key);
  const m = 0x5bd1e995;
  let h = (0x9747b28c ^ data.length) | 0;
  const whole = data.length - (data.length % 4);
  for (let i = 0; i < whole; i += 4) {
    let k = data.readInt32LE(i);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m) ^ k;
  }
  const rest = data.length % 4;
  if (rest === 3) h ^= (data[whole + 2] as number) << 16;
  if (rest >= 2) h ^= (data[whole + 1] as number) << 8;
  if (rest >= 1) {
    h ^= data[whole] as number;
    h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return (h & 0x7fffffff) % partitions;
}
