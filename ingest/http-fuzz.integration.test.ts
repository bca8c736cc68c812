/**
 * Property-based fuzz of the ingest HTTP API against a real ingest and the real broker: random
 * bytes, random JSON values, mutated events (unknown fields, wrong types, huge strings, deep
 * nesting, NUL and lone surrogates), batches and NDJSON, gzip (valid, broken, bombs), content
 * types, API keys, origins, and a sprinkle of other paths and methods.
 *
 * Every answer must be a status README.md documents for that path, every status >= 400 must
 * carry a JSON body with a string `code` (one documented for that status) and `message`, valid
 * events must be accepted, and the server must stay up and count every request it answered.
 *
 * The run is deterministic: the seed is printed first. Replay a failure with
 * `FUZZ_SEED=<seed> make test FILTER=http-fuzz`.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { EVENT_FIELDS } from '../shared/event-schema.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, freeTcpPort, stackFromEnv, uniqueName, waitFor } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

const DEFAULT_SEED = 20_261_125;
const seed = Number(process.env.FUZZ_SEED ?? DEFAULT_SEED);
const MAX_BODY_BYTES = 65_536;
const MAX_DECOMPRESSED_BYTES = 131_072;
const MAX_BATCH_EVENTS = 100;
const KEYS = ['fuzz-key-1', 'fuzz-key-2'];
const ORIGINS = ['https://app.example', 'https://admin.example'];
const HEALTH_PROBE_EVERY = 500;
const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

const stack = stackFromEnv();
const topic = uniqueName('http_fuzz');
const logger = createLogger('test', 'error');

type Target = 'open' | 'guarded';
const services: Partial<Record<Target, IngestService>> = {};
/** Requests sent to each instance: the server's own counters must add up to exactly this. */
const sent: Record<Target, number> = { open: 0, guarded: 0 };

before(async () => {
  const common = {
    KAFKA_BROKERS: stack.kafkaBrokers,
    TOPIC: topic,
    TOPIC_PARTITIONS: '3',
    INGEST_HOST: '127.0.0.1',
    MAX_BODY_BYTES: String(MAX_BODY_BYTES),
    MAX_DECOMPRESSED_BYTES: String(MAX_DECOMPRESSED_BYTES),
    MAX_BATCH_EVENTS: String(MAX_BATCH_EVENTS),
    ACK_TIMEOUT_SEC: '5',
    REQUEST_TIMEOUT_SEC: '10',
  };
  // `open`: no keys, no rate limit, any origin. `guarded`: keys, a low rate limit, two origins.
  services.open = await startIngest(
    readIngestConfig({
      ...common,
      INGEST_PORT: String(await freeTcpPort()),
      CORS_ALLOWED_ORIGINS: '*',
    }),
    logger,
  );
  services.guarded = await startIngest(
    readIngestConfig({
      ...common,
      INGEST_PORT: String(await freeTcpPort()),
      CORS_ALLOWED_ORIGINS: ORIGINS.join(','),
      API_KEYS: KEYS.join(','),
      RATE_LIMIT_PER_SEC: '10',
      RATE_LIMIT_BURST: '10',
    }),
    logger,
  );
});

after(async () => {
  const results = await Promise.allSettled([
    withDeadline(services.open?.close() ?? Promise.resolve(), 15_000, 'closing open ingest'),
    withDeadline(services.guarded?.close() ?? Promise.resolve(), 15_000, 'closing guarded ingest'),
    withDeadline(deleteTopic(), 15_000, 'deleting the fuzz topic'),
  ]);
  keepAlive.destroy();
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

function deleteTopic(): Promise<void> {
  return deleteTopics(stack.kafkaBrokers, [topic], logger);
}

// --- The wire ------------------------------------------------------------------------------

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 32, timeout: 5_000 });

function send(
  target: Target,
  request: { method: string; path: string; headers: Record<string, string>; body: Buffer },
  chunked = false,
): Promise<Answer> {
  const service = services[target];
  assert.ok(service !== undefined, 'the ingest services are running');
  sent[target]++;
  const headers = { ...request.headers };
  if (chunked) headers['transfer-encoding'] = 'chunked';
  else if (request.body.length > 0 || !BODYLESS.has(request.method)) {
    headers['content-length'] = String(request.body.length);
  }
  // HEAD goes over a fresh raw connection of its own, read up to the end of the headers: a HEAD
  // answer has thrown a kept-alive connection out of step before (see the HEAD test below), and
  // that must not fail unrelated cases here.
  if (request.method === 'HEAD') return sendHead(service.port, request.path, headers, request.body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: service.port,
        method: request.method,
        path: request.path,
        headers,
        agent: keepAlive,
        timeout: 20_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        );
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer within 20 s')));
    // An error after the answer arrived (the server closing after a 413) changes nothing.
    req.on('error', reject);
    if (chunked) {
      const half = request.body.length >> 1;
      req.write(request.body.subarray(0, half));
      req.end(request.body.subarray(half));
    } else {
      req.end(request.body);
    }
  });
}

/** A HEAD request on a fresh connection; the answer is read up to the end of its headers. */
function sendHead(
  port: number,
  path: string,
  headers: Record<string, string>,
  body: Buffer,
): Promise<Answer> {
  const lines = Object.entries({ host: 'fuzz', connection: 'close', ...headers }).map(
    ([name, value]) => `${name}: ${value}\r\n`,
  );
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    const timer = setTimeout(() => socket.destroy(new Error('no answer within 20 s')), 20_000);
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.destroy();
      const [statusLine = '', ...fields] = text.slice(0, end).split('\r\n');
      const parsed: http.IncomingHttpHeaders = {};
      for (const field of fields) {
        const colon = field.indexOf(':');
        parsed[field.slice(0, colon).trim().toLowerCase()] = field.slice(colon + 1).trim();
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers: parsed, body: '' });
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`connection closed before an answer: ${text}`)));
    socket.write(`HEAD ${path} HTTP/1.1\r\n${lines.join('')}\r\n`);
    const chunked = headers['transfer-encoding'] === 'chunked';
    socket.end(
      chunked && body.length > 0
        ? Buffer.concat([
            Buffer.from(`${body.length.toString(16)}\r\n`),
            body,
            Buffer.from('\r\n0\r\n\r\n'),
          ])
        : chunked
          ? '0\r\n\r\n'
          : body,
    );
  });
}

async function expectAlive(target: Target): Promise<void> {
  const answer = await send(target, { method: 'GET', path: '/healthz', headers: {}, body: EMPTY });
  assert.equal(answer.status, 200, `${target} /healthz: ${answer.status} ${answer.body}`);
}

async function metricsOf(target: Target): Promise<string> {
  const answer = await send(target, { method: 'GET', path: '/metrics', headers: {}, body: EMPTY });
  assert.equal(answer.status, 200);
  return answer.body;
}

/** Sum of a metric's samples whose labels contain every `match` (`status="500"`). */
function metricSum(text: string, name: string, ...match: string[]): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (match.every((part) => line.includes(part))) sum += Number(line.split(' ').at(-1));
  }
  return sum;
}

// --- The documented contract (README.md, "Errors" and "Send a batch") ------------------------

const EMPTY = Buffer.alloc(0);
/** Methods whose bodies ingest never reads, so they are never answered 413. */
const BODYLESS = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);
const ROUTES: Record<string, string> = {
  '/activity': 'POST, OPTIONS',
  '/activities': 'POST, OPTIONS',
  '/healthz': 'GET, HEAD',
  '/readyz': 'GET, HEAD',
  '/metrics': 'GET, HEAD',
};
const CODES: Record<number, readonly string[]> = {
  400: [
    'invalid_json',
    'invalid_utf8',
    'invalid_gzip',
    'unknown_field',
    'missing_field',
    'invalid_type',
    'empty_string',
    'too_long',
    'invalid_string',
    'invalid_timestamp',
    'timestamp_in_future',
    'timestamp_too_old',
    'properties_too_large',
    'properties_too_deep',
    'not_an_object',
    'not_an_array',
    'empty_batch',
    'no_valid_events',
  ],
  401: ['missing_api_key', 'invalid_api_key'],
  403: ['origin_not_allowed'],
  404: ['not_found'],
  405: ['method_not_allowed'],
  413: ['body_too_large', 'too_many_events'],
  415: ['unsupported_media_type', 'unsupported_charset', 'unsupported_encoding'],
  429: ['rate_limited'],
  503: [
    'broker_unavailable',
    'broker_timeout',
    'broker_outcome_unknown',
    'queue_full',
    'draining',
    'overloaded',
  ],
};

/**
 * The statuses README documents for this request. 408 is left out on purpose: every request
 * here arrives whole at once, so a 408 would mean the server stalled on a complete request.
 */
function documentedStatuses(
  target: Target,
  method: string,
  route: string,
  bytes: number,
  chunked: boolean,
) {
  // A declared Content-Length over the limit is refused first; a chunked body is refused as it
  // streams in, after the header checks have had their say.
  if (!BODYLESS.has(method) && bytes > MAX_BODY_BYTES) {
    return chunked ? [413, 401, 403, 404, 405, 415, 429, 503] : [413];
  }
  // `guarded` lists origins: a POST from another one is 403.
  const guarded = target === 'guarded' ? [401, 403, 429] : [];
  if (route === '/activity' || route === '/activities') {
    if (method === 'OPTIONS') return [204, 403];
    if (method !== 'POST') return [405];
    return [200, ...(route === '/activities' ? [207] : []), 400, 413, 415, 503, ...guarded];
  }
  const allow = ROUTES[route];
  if (allow === undefined) return [404];
  if (method !== 'GET' && method !== 'HEAD') return [405];
  return route === '/readyz' ? [200, 503] : [200];
}

// --- Generators ------------------------------------------------------------------------------

/** A request body before encoding; `valid` and `count` feed the oracles. */
interface Body {
  text?: string;
  bytes?: Uint8Array;
  /** `fill` repeated to `size` bytes: big bodies that print small in a counterexample. */
  big?: { fill: string; size: number };
  /** A valid event, or a batch of only valid events within the limit. */
  valid: boolean;
  /** Items in a batch that parses, for the accepted + rejected check. */
  count?: number;
  ndjson?: boolean;
}

const printable = (maxLength: number) => fc.string({ unit: 'grapheme-ascii', maxLength });
const cleanString = (minLength: number, maxChars: number) =>
  fc
    .string({ unit: 'binary', minLength, maxLength: maxChars })
    .filter((s) => s.length <= maxChars && !s.includes('\u0000'));

function rfc3339WithOffset(ms: number, offsetMin: number): string {
  const sign = offsetMin < 0 ? '-' : '+';
  const abs = Math.abs(offsetMin);
  const zone = `${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
  return new Date(ms + offsetMin * MINUTE).toISOString().replace('Z', zone);
}

// Inside the accepted window with a minute to spare either side: events are built just before
// they are sent.
const offsetMs = fc.integer({ min: -6 * DAY, max: 4 * MINUTE });
const validTimestamp = fc.oneof(
  offsetMs.map((offset) => Date.now() + offset),
  offsetMs.map((offset) => new Date(Date.now() + offset).toISOString()),
  fc
    .tuple(offsetMs, fc.integer({ min: -14 * 60, max: 14 * 60 }))
    .map(([offset, zone]) => rfc3339WithOffset(Date.now() + offset, zone)),
);
const validProperties = fc
  .dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 })
  .filter((p) => Buffer.byteLength(JSON.stringify(p)) <= 8192);
const validEvent = fc.record(
  {
    user_id: fc.oneof(cleanString(1, 128), fc.maxSafeNat()),
    activity_type: fc.oneof(fc.constantFrom('page_view', 'click', 'signup'), cleanString(1, 64)),
    timestamp: validTimestamp,
    event_id: fc.oneof(fc.uuid(), cleanString(1, 64)),
    properties: validProperties,
  },
  { requiredKeys: ['user_id', 'activity_type'] },
);
const validEventBody: fc.Arbitrary<Body> = validEvent.map((e) => ({
  text: JSON.stringify(e),
  valid: true,
}));

const invalid = (value: unknown): Body => ({ text: JSON.stringify(value), valid: false });
const STRING_FIELDS = ['user_id', 'activity_type', 'event_id'] as const;

/** Nests `properties` `depth` levels deep, as text: too deep to build with JSON.stringify. */
function deeplyNested([event, depth, arrays]: [Record<string, unknown>, number, boolean]): Body {
  const { properties: _, ...rest } = event;
  const inner = arrays
    ? `{"a":${'['.repeat(depth)}${']'.repeat(depth)}}`
    : `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
  return { text: `${JSON.stringify(rest).slice(0, -1)},"properties":${inner}}`, valid: false };
}

const mutatedEvent: fc.Arbitrary<Body> = fc.oneof(
  // An unknown field.
  fc
    .tuple(
      validEvent,
      fc
        .string({ unit: 'binary', maxLength: 20 })
        .filter((k) => !EVENT_FIELDS.some((f) => f === k)),
      fc.jsonValue({ maxDepth: 2 }),
    )
    .map(([e, key, value]) => invalid({ ...e, [key]: value })),
  // A field of another type, or missing.
  fc
    .tuple(validEvent, fc.constantFrom(...EVENT_FIELDS), fc.option(fc.jsonValue({ maxDepth: 2 })))
    .map(([e, field, value]) => invalid({ ...e, [field]: value ?? undefined })),
  // Strings just past their limit, and huge ones past the body limit.
  fc
    .tuple(
      validEvent,
      fc.constantFrom(...STRING_FIELDS, 'properties'),
      fc.oneof(fc.constantFrom(65, 129, 4_100), fc.integer({ min: 30_000, max: 40_000 })),
    )
    .map(([e, field, length]) => {
      const huge = 'é'.repeat(length);
      return invalid({ ...e, [field]: field === 'properties' ? { huge } : huge });
    }),
  // NUL and lone surrogates, in a field or in `properties` (key or value).
  fc
    .tuple(
      validEvent,
      fc.constantFrom(...STRING_FIELDS, 'properties'),
      fc.constantFrom('\u0000', '\ud800', '\udfff', 'a\udbffb'),
      fc.boolean(),
    )
    .map(([e, field, bad, inKey]) =>
      invalid(
        field !== 'properties'
          ? { ...e, [field]: `x${bad}` }
          : { ...e, properties: inKey ? { [`k${bad}`]: 1 } : { k: [`v${bad}`] } },
      ),
    ),
  // Nesting around the depth limit, and far past it.
  fc
    .tuple(
      validEvent,
      fc.oneof(fc.integer({ min: 7, max: 10 }), fc.integer({ min: 1_000, max: 12_000 })),
      fc.boolean(),
    )
    .map(deeplyNested),
  // Numbers and timestamps out of range.
  fc
    .tuple(
      validEvent,
      fc.constantFrom('user_id', 'timestamp'),
      fc.oneof(
        fc.constantFrom(-1, 1.5, 2 ** 53, 1e308, -0.5, '', 'yesterday', '2026-02-30T00:00:00Z'),
        fc.constantFrom('2026-11-25T10:00:00', '0000-01-01T00:00:00Z', '9999-12-31T23:59:59Z'),
        fc.integer({ min: 6 * MINUTE, max: 400 * DAY }).map((o) => Date.now() + o),
        fc.integer({ min: 8 * DAY, max: 400 * DAY }).map((o) => Date.now() - o),
      ),
    )
    .map(([e, field, value]) => invalid({ ...e, [field]: value })),
  // Broken JSON text: truncated, a stray character, a duplicated key.
  fc
    .tuple(validEvent, fc.nat(), fc.constantFrom('truncate', 'insert', 'duplicate'))
    .map(([e, at, how]): Body => {
      const text = JSON.stringify(e);
      const cut = at % text.length;
      if (how === 'truncate') return { text: text.slice(0, cut), valid: false };
      if (how === 'insert')
        return { text: `${text.slice(0, cut)}\u0001${text.slice(cut)}`, valid: false };
      return { text: text.replace('{', '{"user_id":[],'), valid: false };
    }),
);

const noise: fc.Arbitrary<Body> = fc.oneof(
  fc.jsonValue().map(invalid),
  fc.uint8Array({ maxLength: 1024 }).map((bytes) => ({ bytes, valid: false })),
  fc.string({ unit: 'binary', maxLength: 256 }).map((text) => ({ text, valid: false })),
  fc
    .record({
      fill: fc.constantFrom('x', ' ', '[', '{"a":', '\u00ff'),
      size: fc.integer({ min: MAX_BODY_BYTES - 16, max: MAX_BODY_BYTES + 4_096 }),
    })
    .map((big) => ({ big, valid: false })),
);

const singleBody: fc.Arbitrary<Body> = fc.oneof(
  { weight: 4, arbitrary: validEventBody },
  { weight: 5, arbitrary: mutatedEvent },
  { weight: 3, arbitrary: noise },
);

const batchItem = fc.oneof(
  { weight: 3, arbitrary: validEventBody },
  { weight: 2, arbitrary: mutatedEvent },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map(invalid) },
);
const arrayBatch = (items: Body[]): Body => ({
  text: `[${items.map((item) => item.text).join(',')}]`,
  valid: items.length > 0 && items.length <= MAX_BATCH_EVENTS && items.every((i) => i.valid),
  count: items.length,
});
/** NDJSON lines; blank ones are not events. */
function ndjsonBatch(lines: Body[], eol: string): Body {
  const events = lines.filter((line) => (line.text ?? '').trim() !== '');
  return {
    text: lines.map((line) => line.text).join(eol),
    valid:
      events.length > 0 && events.length <= MAX_BATCH_EVENTS && events.every((line) => line.valid),
    count: events.length,
    ndjson: true,
  };
}
const batchBody: fc.Arbitrary<Body> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.array(validEventBody, { minLength: 1, maxLength: 6 }).map(arrayBatch),
  },
  { weight: 4, arbitrary: fc.array(batchItem, { maxLength: 8 }).map(arrayBatch) },
  // Around MAX_BATCH_EVENTS, with cheap items: 100 pass the parser, 101 are too many.
  {
    weight: 1,
    arbitrary: fc
      .tuple(
        fc.array(fc.constantFrom('{}', '1', 'null', '{"user_id":"u","activity_type":"click"}'), {
          minLength: MAX_BATCH_EVENTS - 1,
          maxLength: MAX_BATCH_EVENTS + 2,
        }),
        fc.constantFrom('array', '\n', '\r\n'),
      )
      .map(([texts, form]) => {
        const items = texts.map((text) => ({ text, valid: false }));
        return form === 'array' ? arrayBatch(items) : ndjsonBatch(items, form);
      }),
  },
  // NDJSON: JSON lines, garbage lines, blank lines, LF or CRLF.
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        fc.array(
          fc.oneof(
            { weight: 4, arbitrary: batchItem },
            { weight: 1, arbitrary: printable(30).map((text) => ({ text, valid: false })) },
            {
              weight: 1,
              arbitrary: fc.constantFrom('', '   ', '\t').map((text) => ({ text, valid: true })),
            },
          ),
          { maxLength: 8 },
        ),
        fc.constantFrom('\n', '\r\n'),
      )
      .map(([lines, eol]) => ndjsonBatch(lines, eol)),
  },
  { weight: 2, arbitrary: noise },
  // A lone event where a batch belongs.
  {
    weight: 1,
    arbitrary: fc.oneof(validEventBody, mutatedEvent).map((b) => ({ ...b, valid: false })),
  },
);

type Encoding = 'none' | 'identity' | 'gzip' | 'x-gzip' | 'not-gzip' | 'truncated-gzip' | 'bomb';
const encoding = fc.oneof(
  { weight: 10, arbitrary: fc.constant<Encoding>('none') },
  {
    weight: 4,
    arbitrary: fc.constantFrom<Encoding>(
      'gzip',
      'x-gzip',
      'identity',
      'not-gzip',
      'truncated-gzip',
      'bomb',
    ),
  },
  {
    weight: 1,
    arbitrary: fc.oneof(fc.constantFrom('br', 'deflate', 'gzip, gzip', 'GZIP'), printable(12)),
  },
);
const GOOD_ENCODINGS: ReadonlySet<string> = new Set(['none', 'identity', 'gzip', 'x-gzip']);
const BOMB = gzipSync(Buffer.alloc(MAX_DECOMPRESSED_BYTES * 4, ' '));

/** `natural`: the right type for the body (NDJSON or JSON). Every one of these is accepted. */
const GOOD_TYPES = [
  'natural',
  'text/plain',
  'Application/JSON',
  'application/json; charset=utf-8',
  'text/plain;charset="UTF-8"',
];
const contentType = fc.oneof(
  { weight: 10, arbitrary: fc.constant('natural') },
  { weight: 3, arbitrary: fc.constantFrom(...GOOD_TYPES.slice(1)) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      'application/json; charset=latin1',
      'application/x-ndjson',
      'application/xml',
      'multipart/form-data; boundary=x',
      '',
      'absent',
    ),
  },
  { weight: 1, arbitrary: printable(30) },
);

/** Credentials: `ok` when they name a configured key. */
const credentials = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .constantFrom(...KEYS)
      .chain((key) =>
        fc.constantFrom(
          { headers: { authorization: `Bearer ${key}` }, ok: true },
          { headers: { authorization: `bearer  ${key}` }, ok: true },
          { headers: { 'x-api-key': key }, ok: true },
          { headers: { 'x-api-key': key, authorization: 'Bearer wrong' }, ok: true },
        ),
      ),
  },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      { headers: {}, ok: false },
      { headers: { authorization: 'Bearer wrong' }, ok: false },
      { headers: { 'x-api-key': 'wrong' }, ok: false },
      { headers: { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }, ok: false },
    ),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom('authorization', 'x-api-key'), printable(40))
      .map(([name, value]) => ({ headers: { [name]: value }, ok: false })),
  },
);
const origin = fc.option(
  fc.oneof(fc.constantFrom(...ORIGINS, 'https://evil.example', 'null'), printable(30)),
  { nil: undefined },
);
// Headers that change the framing or the connection are not fuzzed; the ones ingest reads are
// generated on purpose above.
const RESERVED = new Set([
  'host',
  'connection',
  'content-length',
  'transfer-encoding',
  'expect',
  'upgrade',
  'te',
  'trailer',
  'keep-alive',
  'proxy-connection',
  'content-type',
  'content-encoding',
  'authorization',
  'x-api-key',
  'origin',
]);
const extraHeaders = fc.dictionary(
  fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/).filter((name) => !RESERVED.has(name)),
  printable(40),
  { maxKeys: 3 },
);

interface FuzzCase {
  target: Target;
  method: string;
  path: string;
  body: Body;
  contentType: string;
  encoding: string;
  credentials: { headers: Record<string, string>; ok: boolean };
  origin: string | undefined;
  extraHeaders: Record<string, string>;
  chunked: boolean;
}

function fuzzCase(parts: {
  method: fc.Arbitrary<string>;
  path: fc.Arbitrary<string>;
  body: fc.Arbitrary<Body>;
}): fc.Arbitrary<FuzzCase> {
  return fc.record({
    target: fc.constantFrom<Target>('open', 'open', 'open', 'guarded'),
    method: parts.method,
    path: parts.path,
    body: parts.body,
    contentType,
    encoding,
    credentials,
    origin,
    extraHeaders,
    chunked: fc.oneof({ weight: 7, arbitrary: fc.constant(false) }, fc.constant(true)),
  });
}

const OTHER_PATHS = [
  '/',
  '/activity/',
  '/ACTIVITY',
  '/activities/1',
  '/activity?x=1',
  '/healthz',
  '/readyz',
  '/metrics',
  '/metrics?x',
  '//healthz',
  '/%61ctivity',
  '/activity%00',
];
const LANES: Array<{ name: string; runs: number; arbitrary: fc.Arbitrary<FuzzCase> }> = [
  ...Array.from({ length: 5 }, () => ({
    name: 'POST /activity',
    runs: 750,
    arbitrary: fuzzCase({
      method: fc.constant('POST'),
      path: fc.constant('/activity'),
      body: singleBody,
    }),
  })),
  ...Array.from({ length: 5 }, () => ({
    name: 'POST /activities',
    runs: 750,
    arbitrary: fuzzCase({
      method: fc.constant('POST'),
      path: fc.constant('/activities'),
      body: batchBody,
    }),
  })),
  ...Array.from({ length: 2 }, () => ({
    name: 'OPTIONS and other methods on the endpoints',
    runs: 750,
    arbitrary: fuzzCase({
      method: fc.constantFrom('OPTIONS', 'OPTIONS', 'GET', 'HEAD', 'PUT', 'PATCH', 'DELETE'),
      path: fc.constantFrom('/activity', '/activities', '/activity?a=b'),
      body: fc.oneof(validEventBody, noise),
    }),
  })),
  ...Array.from({ length: 2 }, () => ({
    name: 'other paths and methods',
    runs: 500,
    arbitrary: fuzzCase({
      // Only methods uWebSockets.js parses: it closes the connection, unanswered, on any other
      // (PROPFIND, a lower-case `post`), before ingest sees the request.
      method: fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE'),
      path: fc.oneof(
        fc.constantFrom(...OTHER_PATHS),
        fc.webPath().map((p) => (p.startsWith('/') ? p : `/${p}`)),
      ),
      body: fc.oneof(fc.constant<Body>({ text: '', valid: false }), validEventBody, noise),
    }),
  })),
];

const TOTAL_RUNS = LANES.reduce((sum, lane) => sum + lane.runs, 0);

// --- Sending a case and judging the answer -------------------------------------------------

interface Wire {
  headers: Record<string, string>;
  body: Buffer;
  /** The body is of a type and encoding the endpoint accepts. */
  decodable: boolean;
}

function materialize(c: FuzzCase): Wire {
  const raw =
    c.body.big !== undefined
      ? Buffer.alloc(c.body.big.size, c.body.big.fill)
      : Buffer.from(c.body.bytes ?? c.body.text ?? '');
  const headers: Record<string, string> = { ...c.extraHeaders, ...c.credentials.headers };
  let body = raw;
  switch (c.encoding) {
    case 'none':
      break;
    case 'gzip':
    case 'x-gzip':
      body = gzipSync(raw);
      headers['content-encoding'] = c.encoding;
      break;
    case 'not-gzip':
      headers['content-encoding'] = 'gzip';
      break;
    case 'truncated-gzip':
      body = gzipSync(raw).subarray(0, -4);
      headers['content-encoding'] = 'gzip';
      break;
    case 'bomb':
      body = BOMB;
      headers['content-encoding'] = 'gzip';
      break;
    default:
      headers['content-encoding'] = c.encoding;
  }
  if (c.contentType === 'natural') {
    headers['content-type'] = c.body.ndjson === true ? 'application/x-ndjson' : 'application/json';
  } else if (c.contentType !== 'absent') {
    headers['content-type'] = c.contentType;
  }
  if (c.origin !== undefined) headers.origin = c.origin;
  const typeOk =
    GOOD_TYPES.includes(c.contentType) && (c.body.ndjson !== true || c.contentType === 'natural');
  const encodingOk = GOOD_ENCODINGS.has(c.encoding) && raw.length <= MAX_DECOMPRESSED_BYTES;
  return { headers, body, decodable: typeOk && encodingOk };
}

interface AnswerBody {
  code?: unknown;
  message?: unknown;
  status?: unknown;
  event_id?: unknown;
  accepted?: unknown;
  rejected?: unknown;
}

/** Asserts the answer is documented and right for the case; returns its error code, if any. */
function check(c: FuzzCase, wire: Wire, answer: Answer): string | undefined {
  const route = c.path.split('?')[0] ?? c.path;
  const what = `${c.target}: ${c.method} ${c.path} (${wire.body.length} bytes) -> ${answer.status} ${answer.body.slice(0, 300)}`;
  const documented = documentedStatuses(c.target, c.method, route, wire.body.length, c.chunked);
  assert.ok(
    documented.includes(answer.status),
    `undocumented status ${answer.status} (documented here: ${documented.join(', ')}); ${what}`,
  );

  let parsed: AnswerBody = {};
  const isJson = /^application\/json\b/.test(answer.headers['content-type'] ?? '');
  if (c.method !== 'HEAD' && (answer.status >= 400 || (isJson && answer.body !== ''))) {
    assert.ok(isJson, `not JSON: ${what}`);
    assert.doesNotThrow(() => {
      parsed = JSON.parse(answer.body) as AnswerBody;
    }, `unparseable JSON: ${what}`);
  }
  if (answer.status >= 400 && c.method !== 'HEAD') {
    assert.equal(typeof parsed.code, 'string', `no string code: ${what}`);
    assert.equal(typeof parsed.message, 'string', `no string message: ${what}`);
    assert.ok(
      CODES[answer.status]?.includes(parsed.code as string),
      `code ${String(parsed.code)} is not documented for ${answer.status}: ${what}`,
    );
  }
  if (answer.status === 405) assert.equal(answer.headers.allow, ROUTES[route], what);
  if (answer.status === 401) assert.equal(answer.headers['www-authenticate'], 'Bearer', what);
  if (answer.status === 429 || answer.status === 503) {
    assert.match(answer.headers['retry-after'] ?? '', /^[1-9]\d*$/, `Retry-After: ${what}`);
  }

  const endpoint = route === '/activity' || route === '/activities';
  const tooLarge = !BODYLESS.has(c.method) && wire.body.length > MAX_BODY_BYTES;
  const code = typeof parsed.code === 'string' ? parsed.code : undefined;
  if (!endpoint || tooLarge) return code;
  const originAllowed =
    c.origin !== undefined && (c.target === 'open' || ORIGINS.includes(c.origin));
  const allowOrigin = c.target === 'open' ? '*' : c.origin;

  if (c.method === 'OPTIONS') {
    assert.equal(answer.status, originAllowed ? 204 : 403, `preflight: ${what}`);
    if (originAllowed) {
      assert.equal(answer.headers['access-control-allow-origin'], allowOrigin, what);
      assert.equal(answer.headers['access-control-allow-methods'], 'POST, OPTIONS', what);
    }
    return code;
  }
  if (c.method !== 'POST') return code;

  // With origins listed, a write from another origin is refused before anything else is read.
  const originRefused = c.target === 'guarded' && c.origin !== undefined && !originAllowed;
  assert.equal(answer.status === 403, originRefused, `origin refused: ${what}`);
  assert.equal(
    answer.headers['access-control-allow-origin'],
    originAllowed ? allowOrigin : undefined,
    `CORS: ${what}`,
  );
  if (originAllowed && c.target === 'guarded') assert.equal(answer.headers.vary, 'Origin', what);

  // A valid request is accepted: never refused for what it is.
  if (
    c.body.valid &&
    wire.decodable &&
    !originRefused &&
    (c.target === 'open' || c.credentials.ok)
  ) {
    const expected = c.target === 'open' ? [200] : [200, 429];
    assert.ok(expected.includes(answer.status), `a valid request was not accepted: ${what}`);
  }
  if (route === '/activity' && answer.status === 200) {
    assert.equal(parsed.status, 'accepted', what);
  }
  const perEvent =
    answer.status === 200 || answer.status === 207 || parsed.code === 'no_valid_events';
  if (route === '/activities' && perEvent) checkBatchOutcome(c, wire, answer.status, parsed, what);
  return code;
}

/** `accepted` plus `rejected` account for every event, each index once, in order. */
function checkBatchOutcome(
  c: FuzzCase,
  wire: Wire,
  status: number,
  parsed: AnswerBody,
  what: string,
): void {
  const { accepted, rejected } = parsed;
  assert.ok(typeof accepted === 'number' && Array.isArray(rejected), `batch shape: ${what}`);
  const indexes = (rejected as Array<{ index?: unknown; code?: unknown; message?: unknown }>).map(
    (entry) => {
      assert.ok(typeof entry.code === 'string' && typeof entry.message === 'string', what);
      assert.ok(typeof entry.index === 'number', what);
      return entry.index;
    },
  );
  assert.deepEqual(
    indexes,
    [...new Set(indexes)].sort((a, b) => a - b),
    `indexes sorted, unique: ${what}`,
  );
  if (status === 200) assert.equal(rejected.length, 0, what);
  if (status === 207) assert.ok(accepted > 0 && rejected.length > 0, what);
  if (status === 400) assert.equal(accepted, 0, what);
  if (c.body.count !== undefined && wire.decodable) {
    assert.equal(accepted + rejected.length, c.body.count, `events accounted for: ${what}`);
    assert.ok(
      indexes.every((i) => i >= 0 && i < (c.body.count as number)),
      what,
    );
  }
}

/** fast-check's report (seed, path, counterexample) and the assertion that failed. */
function describeFailure(reason: unknown): string {
  const cause = reason instanceof Error ? reason.cause : undefined;
  const detail = cause instanceof Error ? cause.message : String(cause ?? '');
  return `${String(reason).replace(/\n+Hint: .*$/s, '')}\nFailure: ${detail}`;
}

const aValidEvent = (): Buffer =>
  Buffer.from(JSON.stringify({ user_id: 'warm-up', activity_type: 'page_view' }));

test(`${TOTAL_RUNS} fuzzed requests get documented answers and ingest stays up`, async (t) => {
  t.diagnostic(
    `fast-check seed ${seed} (lane i runs with seed ${seed}+i); replay: FUZZ_SEED=${seed} make test FILTER=http-fuzz`,
  );
  // The producer's first acknowledgement can take a moment on a fresh broker.
  for (const target of ['open', 'guarded'] as const) {
    await waitFor(
      async () => {
        const answer = await send(target, {
          method: 'POST',
          path: '/activity',
          headers: { 'content-type': 'application/json', 'x-api-key': KEYS[0] as string },
          body: aValidEvent(),
        });
        return answer.status === 200 ? true : undefined;
      },
      { timeoutMs: 30_000, what: `${target} ingest accepting events` },
    );
  }

  const started = Date.now();
  const outcomes = new Map<string, number>();
  let cases = 0;
  const results = await Promise.allSettled(
    LANES.map((lane, i) =>
      fc.assert(
        fc.asyncProperty(lane.arbitrary, async (c) => {
          const wire = materialize(c);
          const request = {
            method: c.method,
            path: c.path,
            headers: wire.headers,
            body: wire.body,
          };
          const answer = await send(c.target, request, c.chunked);
          const code = check(c, wire, answer);
          const key = code === undefined ? `${answer.status}` : `${answer.status} ${code}`;
          outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
          if (++cases % HEALTH_PROBE_EVERY === 0) {
            await Promise.all([expectAlive('open'), expectAlive('guarded')]);
          }
        }),
        { seed: seed + i, numRuns: lane.runs },
      ),
    ),
  );
  const failures = results.flatMap((result, i) =>
    result.status === 'rejected'
      ? [`lane ${i} (${LANES[i]?.name}, seed ${seed + i}): ${describeFailure(result.reason)}`]
      : [],
  );
  assert.deepEqual(failures, [], failures.join('\n\n'));

  const summary = [...outcomes]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, n]) => `${k}: ${n}`);
  t.diagnostic(`${cases} cases in ${Date.now() - started} ms; answers ${summary.join(', ')}`);
  assert.ok(cases >= TOTAL_RUNS);

  // Still up, nothing in flight, no 500, and every request answered was counted exactly once.
  for (const target of ['open', 'guarded'] as const) {
    await expectAlive(target);
    let last = '';
    await waitFor(
      async () => {
        const before = sent[target];
        last = await metricsOf(target);
        const counted = metricSum(last, 'ingest_http_requests_total');
        return metricSum(last, 'ingest_http_in_flight_requests') === 0 && counted === before
          ? true
          : undefined;
      },
      {
        timeoutMs: 5_000,
        what: `${target}: nothing in flight and ${sent[target]} requests counted`,
        describe: () =>
          `in flight ${metricSum(last, 'ingest_http_in_flight_requests')}, counted ${metricSum(last, 'ingest_http_requests_total')}`,
      },
    );
    assert.equal(metricSum(last, 'ingest_http_requests_total', 'status="500"'), 0, target);
    assert.equal(metricSum(last, 'ingest_producer_in_flight_events'), 0, target);
  }
});

test('after a HEAD answer the kept-alive connection serves the next request', async () => {
  // A HEAD answer ends with its headers (RFC 9110, 9.3.2); whatever the server sends or expects
  // after them must not throw the connection out of step for the request after it, which is how
  // every keep-alive client (node's agent, browsers, load balancers' health checks) reuses it.
  const connection = await openConnection(services.open?.port ?? 0);
  try {
    for (const [path, status] of [
      ['/healthz', 200],
      ['/activity', 405],
    ] as const) {
      const head = await connection.exchange(`HEAD ${path} HTTP/1.1\r\nHost: fuzz\r\n\r\n`);
      assert.match(head, new RegExp(`^HTTP/1\\.1 ${status} [\\s\\S]*\r\n\r\n$`), `HEAD ${path}`);
      const get = await connection.exchange('GET /healthz HTTP/1.1\r\nHost: fuzz\r\n\r\n');
      assert.match(
        get,
        /^HTTP\/1\.1 200 [\s\S]*\r\n\r\n\{"status":"alive"\}$/,
        `GET /healthz on the connection after HEAD ${path}`,
      );
    }
  } finally {
    connection.close();
  }
});

// --- Framing: byte-boundary splits and absurd headers -----------------------------------------

/** What came back on a raw connection: the parsed first answer, or none before it closed. */
interface RawAnswer {
  status: number | undefined;
  code: string | undefined;
  headers: Record<string, string>;
  closedUnanswered: boolean;
}

/**
 * Writes `parts` on a fresh connection, each as its own TCP segment (no Nagle, a pause between),
 * and returns the first whole answer, or that the server closed the connection without one.
 * Gives up after `timeoutMs`.
 */
function rawExchange(port: number, parts: Buffer[], timeoutMs = 15_000): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (answer: RawAnswer | Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (answer instanceof Error) reject(answer);
      else resolve(answer);
    };
    const timer = setTimeout(
      () => finish(new Error(`no answer and not closed within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const parse = (): RawAnswer | undefined => {
      const end = received.indexOf('\r\n\r\n');
      if (end < 0) return undefined;
      const [statusLine = '', ...fields] = received
        .subarray(0, end)
        .toString('latin1')
        .split('\r\n');
      const headers: Record<string, string> = {};
      for (const field of fields) {
        const colon = field.indexOf(':');
        headers[field.slice(0, colon).trim().toLowerCase()] = field.slice(colon + 1).trim();
      }
      const length = Number(headers['content-length'] ?? 0);
      if (received.length < end + 4 + length) return undefined;
      let code: string | undefined;
      try {
        code = (
          JSON.parse(received.subarray(end + 4, end + 4 + length).toString()) as {
            code?: string;
          }
        ).code;
      } catch {
        code = undefined;
      }
      return { status: Number(statusLine.split(' ')[1]), code, headers, closedUnanswered: false };
    };
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const answer = parse();
      if (answer !== undefined) finish(answer);
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      const answer = parse();
      finish(
        answer ??
          (received.length === 0
            ? { status: undefined, code: undefined, headers: {}, closedUnanswered: true }
            : new Error(`closed after a partial answer: ${received.toString('latin1')}`)),
      );
    });
    socket.once('connect', async () => {
      for (const [i, part] of parts.entries()) {
        if (settled) return;
        if (i > 0) await new Promise((r) => setTimeout(r, 2));
        socket.write(part);
      }
    });
  });
}

/** Runs `jobs` with at most `width` at once. */
async function inParallel<T>(jobs: Array<() => Promise<T>>, width: number): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < jobs.length) {
        const i = next++;
        results[i] = await (jobs[i] as () => Promise<T>)();
      }
    }),
  );
  return results;
}

test('a request split at every byte boundary is answered as if it came whole', async (t) => {
  const port = services.open?.port ?? 0;
  const event = (n: number) =>
    Buffer.from(JSON.stringify({ user_id: `split-${n}`, activity_type: 'page_view' }));
  const plain = (n: number): Buffer => {
    const body = event(n);
    return Buffer.concat([
      Buffer.from(
        `POST /activity HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
      ),
      body,
    ]);
  };
  // Chunked, in three chunks. (uWebSockets.js closes the connection on a chunk extension,
  // `5;x=y`, unanswered: the absurd-headers test below covers unanswered closes.)
  const chunked = (n: number): Buffer => {
    const body = event(n);
    const a = body.subarray(0, 5);
    const b = body.subarray(5, 20);
    const c = body.subarray(20);
    const chunk = (bytes: Buffer, ext = '') =>
      Buffer.concat([
        Buffer.from(`${bytes.length.toString(16)}${ext}\r\n`),
        bytes,
        Buffer.from('\r\n'),
      ]);
    return Buffer.concat([
      Buffer.from(
        'POST /activity HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
      ),
      chunk(a),
      chunk(b),
      chunk(c),
      Buffer.from('0\r\n\r\n'),
    ]);
  };
  let n = 0;
  const jobs: Array<() => Promise<RawAnswer>> = [];
  for (const build of [plain, chunked]) {
    const length = build(0).length;
    for (let at = 1; at < length; at++) {
      const whole = build(++n);
      jobs.push(() => rawExchange(port, [whole.subarray(0, at), whole.subarray(at)]));
    }
  }
  // And one request a byte at a time.
  const trickled = plain(++n);
  jobs.push(() =>
    rawExchange(
      port,
      Array.from({ length: trickled.length }, (_, i) => trickled.subarray(i, i + 1)),
      30_000,
    ),
  );
  const answers = await inParallel(jobs, 8);
  const statuses = new Map<string, number>();
  for (const answer of answers) {
    const key = `${answer.status ?? 'closed'}`;
    statuses.set(key, (statuses.get(key) ?? 0) + 1);
  }
  t.diagnostic(`${answers.length} split requests: ${JSON.stringify(Object.fromEntries(statuses))}`);
  assert.deepEqual(Object.fromEntries(statuses), { 200: answers.length });
  await expectAlive('open');
});

test('absurd header counts and sizes: a documented answer or a closed connection, never a crash', async (t) => {
  const KIB = 1024;
  const body = JSON.stringify({ user_id: 'headers', activity_type: 'page_view' });
  const request = (extra: string, head = 'POST /activity HTTP/1.1', framing?: string) =>
    Buffer.from(
      `${head}\r\nHost: fuzz\r\nContent-Type: application/json\r\n${framing ?? `Content-Length: ${body.length}\r\n`}${extra}\r\n${body}`,
    );
  const many = (count: number, size = 1, name = (i: number) => `x-h${i}`) =>
    Array.from({ length: count }, (_, i) => `${name(i)}: ${'v'.repeat(size)}\r\n`).join('');
  const cases: Array<[string, Buffer]> = [
    ...[10, 40, 45, 46, 47, 48, 49, 50, 64, 100, 1_000, 10_000].map((count): [string, Buffer] => [
      `${count} headers`,
      request(many(count)),
    ]),
    ...[1, 4, 8, 16, 64, 256, 1024, 4096].map((kib): [string, Buffer] => [
      `one ${kib} KiB header`,
      request(many(1, kib * KIB)),
    ]),
    ['a 16 KiB header name', request(`${'n'.repeat(16 * KIB)}: 1\r\n`)],
    ['a 100 KiB path', request('', `POST /activity?${'q'.repeat(100 * KIB)} HTTP/1.1`)],
    ['a header line without a colon', request('no-colon-here\r\n')],
    ['an empty header name', request(': empty\r\n')],
    ['a header name with a space', request('bad name: 1\r\n')],
    ['a folded header (obs-fold)', request('x-folded: a\r\n b\r\n')],
    ['a NUL in a header value', request('x-nul: a\u0000b\r\n')],
    ['100 Authorization headers', request(many(100, 10, () => 'authorization'))],
    ['two Origin headers', request('origin: https://a.example\r\norigin: https://b.example\r\n')],
    [
      '2,000 X-Forwarded-For hops',
      request(`x-forwarded-for: ${'1.2.3.4, '.repeat(2_000)}5.6.7.8\r\n`),
    ],
    [
      'two different Content-Lengths',
      request('', undefined, `Content-Length: ${body.length}\r\nContent-Length: 3\r\n`),
    ],
    ['a non-numeric Content-Length', request('', undefined, 'Content-Length: abc\r\n')],
    ['a negative Content-Length', request('', undefined, 'Content-Length: -1\r\n')],
    [
      'a Content-Length of 2^64',
      request('', undefined, 'Content-Length: 18446744073709551616\r\n'),
    ],
    [
      'Content-Length and chunked',
      request('', undefined, `Content-Length: ${body.length}\r\nTransfer-Encoding: chunked\r\n`),
    ],
    ['an unknown transfer coding', request('', undefined, 'Transfer-Encoding: gzip, chunked\r\n')],
    [
      'HTTP/1.0 without Host',
      Buffer.from(
        `POST /activity HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      ),
    ],
    ['HTTP/2 preface', Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')],
    [
      'bare LF line ends',
      Buffer.from(
        `POST /activity HTTP/1.1\nHost: fuzz\nContent-Type: application/json\nContent-Length: ${body.length}\n\n${body}`,
      ),
    ],
  ];
  const documented = new Set(documentedStatuses('open', 'POST', '/activity', body.length, true));
  const port = services.open?.port ?? 0;
  const answers = await inParallel(
    cases.map(
      ([, bytes]) =>
        () =>
          rawExchange(port, [bytes]),
    ),
    cases.length,
  );
  const report: string[] = [];
  for (const [i, answer] of answers.entries()) {
    const [name] = cases[i] as [string, Buffer];
    report.push(
      `${name}: ${answer.closedUnanswered ? 'closed' : `${answer.status} ${answer.code ?? ''}`}`,
    );
    if (answer.closedUnanswered) continue;
    assert.ok(documented.has(answer.status as number), `${name}: undocumented ${answer.status}`);
    if ((answer.status as number) >= 400) {
      assert.ok(
        CODES[answer.status as number]?.includes(answer.code ?? ''),
        `${name}: code ${answer.code} not documented for ${answer.status}`,
      );
    }
  }
  t.diagnostic(report.join('; '));
  await expectAlive('open');
  await expectAlive('guarded');
});

/** A raw connection: `exchange` writes a request and returns what came back until it went quiet. */
async function openConnection(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let text = '';
  let closed = false;
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1');
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    closed = true;
  });
  return {
    async exchange(request: string): Promise<string> {
      text = '';
      socket.write(request);
      // Whole answers to these small requests arrive in one go, well within 300 ms.
      for (let waited = 0; waited < 1_000 && !closed; waited += 50) {
        const before = text.length;
        await new Promise((resolve) => setTimeout(resolve, 50));
        if (before > 0 && text.length === before) break;
      }
      return closed ? `${text}[connection closed]` : text;
    },
    close: () => socket.destroy(),
  };
}
