/**
 * The OpenAPI document (query/openapi.json) against the real server: every response it lists
 * for a (path, status) is produced for real, its body validated against the documented schema
 * and its documented headers checked; every response the server gave must be documented. The
 * parameters each operation lists are the ones the server takes (an undocumented one is refused
 * as `unknown_parameter`).
 *
 * 503 is produced three ways: `deadline_exceeded` by an exclusive lock on the table the queries
 * read (each waits out the default 5-s deadline), `too_many_streams` by a second instance whose
 * bound is 1, and `/readyz` 503 by an instance whose database does not listen.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type pg from 'pg';
import { migrate } from '../aggregator/migrations.js';
import { TestSchemas } from '../aggregator/test-schemas.js';
import { REPO_ROOT } from '../deploy/local/stack.js';
import {
  type Answer,
  EventStreamReader,
  getJson,
  PartitionWriter,
  startQueryOn,
} from '../e2e/query-fixture.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv } from '../shared/testing.js';
import type { QueryService } from './service.js';
import { WEB_ROOTS } from './static-files.js';

type Json = { [key: string]: unknown };

const doc = JSON.parse(readFileSync(join(REPO_ROOT, 'query', 'openapi.json'), 'utf8')) as Json;
const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const schemas = new TestSchemas(stack.databaseUrl, 'query_openapi');
const services: QueryService[] = [];
const KEY = 'openapi-read-key-0123456789';
const KEYS = ['main', 'limit-1', 'limit-2', 'limit-3', 'limit-4', 'limit-5'].map(
  (name) => `${name}-${KEY}`,
);
/** The page is served from the build (`make build` writes it), never from query/web. */
const PAGE_EXISTS = WEB_ROOTS.some((root) => existsSync(join(root, 'index.html')));

let db: pg.Client;
let schema: string;
let base: string;
/** `path status` of every response seen, with a note on what produced it. */
const produced = new Map<string, string>();

// ---------------------------------------------------------------------------------------------
// A JSON Schema validator for exactly the keywords the document uses.

const KEYWORDS = new Set([
  'type',
  'properties',
  'required',
  'additionalProperties',
  'enum',
  'items',
  'minItems',
  'maxItems',
  'minimum',
  'maxLength',
  'pattern',
  'format',
  'allOf',
  '$ref',
  'description',
]);

function resolve(node: Json): Json {
  const ref = node.$ref;
  if (typeof ref !== 'string') return node;
  const found = ref
    .replace(/^#\//, '')
    .split('/')
    .reduce<unknown>((at, part) => (at as Json)[part], doc);
  assert.ok(found !== undefined, `${ref} resolves`);
  return resolve(found as Json);
}

function validate(schemaNode: Json, value: unknown, at: string, problems: string[]): void {
  const node = resolve(schemaNode);
  for (const part of (node.allOf as Json[] | undefined) ?? []) validate(part, value, at, problems);
  const type = node.type as string | string[] | undefined;
  if (type !== undefined) {
    const types = Array.isArray(type) ? type : [type];
    const actual =
      value === null
        ? 'null'
        : Array.isArray(value)
          ? 'array'
          : Number.isInteger(value)
            ? 'integer'
            : typeof value;
    const ok = types.some((t) => t === actual || (t === 'number' && actual === 'integer'));
    if (!ok) {
      problems.push(`${at}: expected ${types.join('|')}, got ${actual}`);
      return;
    }
  }
  if (node.enum !== undefined && !(node.enum as unknown[]).includes(value)) {
    problems.push(`${at}: ${JSON.stringify(value)} not in ${JSON.stringify(node.enum)}`);
  }
  if (typeof value === 'string') {
    if (node.pattern !== undefined && !new RegExp(node.pattern as string).test(value)) {
      problems.push(`${at}: ${value} does not match ${node.pattern}`);
    }
    if (node.maxLength !== undefined && value.length > (node.maxLength as number)) {
      problems.push(`${at}: longer than ${node.maxLength}`);
    }
    if (
      node.format === 'date-time' &&
      !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/.test(value)
    ) {
      problems.push(`${at}: ${value} is not a date-time`);
    }
  }
  if (typeof value === 'number' && node.minimum !== undefined && value < (node.minimum as number)) {
    problems.push(`${at}: ${value} below ${node.minimum}`);
  }
  if (Array.isArray(value)) {
    if (node.minItems !== undefined && value.length < (node.minItems as number)) {
      problems.push(`${at}: fewer than ${node.minItems} items`);
    }
    if (node.maxItems !== undefined && value.length > (node.maxItems as number)) {
      problems.push(`${at}: more than ${node.maxItems} items`);
    }
    if (node.items !== undefined) {
      for (const [i, item] of value.entries()) {
        validate(node.items as Json, item, `${at}[${i}]`, problems);
      }
    }
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const object = value as Json;
    const properties = (node.properties as Json | undefined) ?? {};
    for (const name of (node.required as string[] | undefined) ?? []) {
      if (!(name in object)) problems.push(`${at}: ${name} missing`);
    }
    for (const [name, item] of Object.entries(object)) {
      const property = properties[name] as Json | undefined;
      if (property !== undefined) validate(property, item, `${at}.${name}`, problems);
      else if (node.additionalProperties === false) problems.push(`${at}: ${name} not documented`);
    }
  }
}

/** Checks an answer against the document's response for (path, GET, status). */
function check(path: string, answer: Answer, note: string): void {
  const operation = (doc.paths as Json)[path] as Json | undefined;
  assert.ok(operation, `${path} is documented`);
  const responses = (operation.get as Json).responses as Json;
  const documented = responses[String(answer.status)] as Json | undefined;
  assert.ok(documented, `${path} ${answer.status} is documented (${note}): ${answer.text}`);
  const response = resolve(documented);
  const content = response.content as Json | undefined;
  const type = answer.headers.get('content-type') ?? '';
  if (content !== undefined) {
    const [mediaType, media] = Object.entries(content)[0] as [string, Json];
    assert.ok(type.startsWith(mediaType), `${path} ${answer.status}: ${type} is ${mediaType}`);
    if (mediaType === 'application/json') {
      const problems: string[] = [];
      validate(media.schema as Json, answer.body, 'body', problems);
      assert.deepEqual(problems, [], `${path} ${answer.status} (${note})`);
    }
  }
  for (const [name, header] of Object.entries((response.headers as Json | undefined) ?? {})) {
    if ((header as Json).required === true) {
      assert.ok(answer.headers.get(name) !== null, `${path} ${answer.status}: ${name} header`);
    }
  }
  produced.set(`${path} ${answer.status}`, note);
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  schema = schemas.name();
  db = await schemas.connect(schema);
  await migrate(db, schema);
  const writer = await PartitionWriter.claim(db, 0, 60_000);
  const day = Date.UTC(2026, 10, 2);
  const events = Array.from({ length: 300 }, (_, i) => ({
    site: 'docs',
    time_zone: 'UTC',
    user_id: `u${i % 40}`,
    activity_type: i % 3 === 0 ? 'page_view' : 'click',
    timestamp: day + i * 4 * 60_000,
    event_id: `e${i}`,
  }));
  await writer.write(events, { closeThrough: day + 86_400_000 - 60_000 });
  const started = await startQueryOn(
    stack.databaseUrl,
    schema,
    { QUERY_API_KEYS: KEYS.map((key) => `${key}=docs`).join(',') },
    logger,
  );
  services.push(started.service);
  base = started.url;
});

after(async () => {
  for (const service of services) {
    await withDeadline(service.close(), 10_000, 'closing a query service');
  }
  await schemas.dropAll();
});

const API = {
  '/v1/timeseries': {
    metric: 'events',
    interval: 'hour',
    from: '2026-11-02',
    to: '2026-11-03',
    activity_type: 'click',
  },
  '/v1/summary': { from: '2026-11-02', to: '2026-11-03', compare: 'previous_period' },
  '/v1/breakdown': { from: '2026-11-02', to: '2026-11-03', by: 'activity_type' },
  '/v1/realtime': {},
} as const;
const main = KEYS[0] as string;

test('the document uses only the keywords the validator checks', () => {
  const unknown = new Set<string>();
  const walk = (node: unknown, inSchema: boolean): void => {
    if (Array.isArray(node)) {
      for (const item of node) walk(item, inSchema);
    } else if (typeof node === 'object' && node !== null) {
      for (const [key, value] of Object.entries(node)) {
        if (inSchema && !KEYWORDS.has(key)) unknown.add(key);
        if (key === 'properties') {
          for (const property of Object.values(value as Json)) walk(property, true);
        } else walk(value, inSchema || key === 'schema' || key === 'schemas');
      }
    }
  };
  for (const schemaNode of Object.values((doc.components as Json).schemas as Json)) {
    walk(schemaNode, true);
  }
  for (const path of Object.values(doc.paths as Json)) walk(path, false);
  assert.deepEqual([...unknown], []);
});

test('200: every endpoint answers as documented, with every documented parameter', async () => {
  for (const [path, params] of Object.entries(API)) {
    const answer = await getJson(base, path, params, main);
    assert.equal(answer.status, 200, answer.text);
    check(path, answer, 'figures');
    // Every query parameter the operation documents is taken (none is unknown_parameter).
    const documented = (((doc.paths as Json)[path] as Json).get as Json).parameters as Json[];
    for (const parameter of documented.map(resolve)) {
      if (parameter.in !== 'query') continue;
      const probe = await getJson(base, path, { [String(parameter.name)]: 'x' }, main);
      assert.notEqual(probe.body?.code, 'unknown_parameter', `${path} takes ${parameter.name}`);
    }
    const undocumented = await getJson(base, path, { ...params, limit: '10' }, main);
    assert.equal(undocumented.body.code, 'unknown_parameter');
  }
  for (const path of ['/healthz', '/readyz', '/metrics']) {
    const answer = await getJson(base, path);
    assert.equal(answer.status, 200);
    check(path, answer, 'health');
  }
  const page = await getJson(base, '/');
  assert.equal(page.status, PAGE_EXISTS ? 200 : 404);
  check('/', page, 'the page');
});

test('the page: built files only, with a Content-Security-Policy and nosniff', async (t) => {
  if (!PAGE_EXISTS) {
    t.diagnostic('no built page (make build): only the 404s are checked');
  } else {
    for (const path of ['/', '/index.html', '/dashboard.js', '/dashboard.css']) {
      const file = await getJson(base, path);
      assert.equal(file.status, 200, path);
      assert.equal(file.headers.get('x-content-type-options'), 'nosniff', path);
      assert.match(file.headers.get('content-security-policy') ?? '', /default-src 'self'/, path);
      assert.doesNotMatch(file.headers.get('content-security-policy') ?? '', /unsafe-/, path);
    }
  }
  // The source folder's files exist in the repository, and are not the page's to serve.
  for (const path of ['/tsconfig.json', '/dashboard.ts', '/query/web/tsconfig.json']) {
    assert.ok(existsSync(join(REPO_ROOT, 'query', 'web', 'tsconfig.json')));
    const answer = await getJson(base, path);
    assert.equal(answer.status, 404, path);
    assert.equal(answer.body.code, 'not_found', path);
  }
});

test('200: the stream is text/event-stream and its events are StreamWindow', async () => {
  const reader = await EventStreamReader.open(base, { key: main });
  try {
    assert.equal(reader.response.status, 200);
    assert.match(reader.response.headers.get('content-type') ?? '', /^text\/event-stream/);
    produced.set('/v1/stream 200', 'a stream');
    await new Promise((resolve) => setTimeout(resolve, 200));
    const writer = await PartitionWriter.claim(db, 1, 60_000);
    await writer.write([
      {
        site: 'docs',
        time_zone: 'UTC',
        user_id: 'live',
        activity_type: 'click',
        timestamp: Date.now(),
        event_id: 'live-1',
      },
    ]);
    const event = await reader.next(5000);
    const media = (
      ((((doc.paths as Json)['/v1/stream'] as Json).get as Json).responses as Json)['200'] as Json
    ).content as Json;
    const problems: string[] = [];
    validate(
      (media['text/event-stream'] as Json)['x-event-data'] as Json,
      JSON.parse(event.data),
      'data',
      problems,
    );
    assert.deepEqual(problems, []);
  } finally {
    reader.close();
  }
});

test('400, 401, 404 and 429 on every endpoint', async () => {
  const paths = [...Object.keys(API), '/v1/stream'];
  for (const [i, path] of paths.entries()) {
    const bad = await getJson(
      base,
      path,
      path === '/v1/stream' ? { last_event_id: 'abc' } : { site: 'docs', tz: 'Nowhere/Else' },
      main,
    );
    assert.equal(bad.status, 400, bad.text);
    check(path, bad, 'a bad parameter');
    const anonymous = await getJson(base, path);
    assert.equal(anonymous.status, 401);
    check(path, anonymous, 'no key');
    const other = await getJson(base, path, { site: 'elsewhere' }, main);
    assert.equal(other.status, 404);
    check(path, other, 'a site the key does not read');
    // A key of its own, spent: the default burst is 100.
    const key = KEYS[i + 1] as string;
    let limited: Answer | undefined;
    for (let n = 0; n < 300 && limited === undefined; n++) {
      const answer = await getJson(base, path, { site: 'docs', tz: 'Nowhere/Else' }, key);
      if (answer.status === 429) limited = answer;
    }
    assert.ok(limited, `${path}: 429 within 300 requests`);
    check(path, limited, 'rate limited');
  }
  const unknownPath = await getJson(base, '/v1/nothing', {}, main);
  assert.equal(unknownPath.status, 404);
  check('/', unknownPath, 'no such path');
});

test('503: deadline_exceeded on every query endpoint, too_many_streams, readyz not ready', async () => {
  const locker = await schemas.connect(schema);
  await locker.query('BEGIN');
  await locker.query('LOCK TABLE period_metrics, user_activity_metrics IN ACCESS EXCLUSIVE MODE');
  let answers: Answer[];
  try {
    answers = await Promise.all(
      Object.entries(API).map(([path, params]) =>
        getJson(base, path, { ...params, ...(path === '/v1/realtime' ? {} : { tz: 'UTC' }) }, main),
      ),
    );
  } finally {
    await locker.query('ROLLBACK');
  }
  Object.keys(API).forEach((path, i) => {
    const answer = answers[i] as Answer;
    assert.equal(answer.status, 503, `${path}: ${answer.text}`);
    assert.equal(answer.body.code, 'deadline_exceeded');
    check(path, answer, 'deadline exceeded');
  });

  const bounded = await startQueryOn(stack.databaseUrl, schema, { QUERY_MAX_STREAMS: '1' }, logger);
  services.push(bounded.service);
  const holder = await EventStreamReader.open(bounded.url, { site: 'docs' });
  try {
    await new Promise((resolve) => setTimeout(resolve, 200));
    const refused = await getJson(bounded.url, '/v1/stream', { site: 'docs' });
    assert.equal(refused.status, 503);
    check('/v1/stream', refused, 'too many streams');
  } finally {
    holder.close();
  }

  const port = await freeTcpPort();
  const down = await startQueryOn(
    `postgres://postgres@127.0.0.1:${port}/nothing`,
    schema,
    {},
    logger,
  );
  services.push(down.service);
  const ready = await getJson(down.url, '/readyz');
  assert.equal(ready.status, 503);
  check('/readyz', ready, 'no database');
  const alive = await getJson(down.url, '/healthz');
  assert.equal(alive.status, 200);
  const unavailable = await getJson(down.url, '/v1/summary', { range: 'today' });
  assert.equal(unavailable.status, 503, unavailable.text);
  assert.equal(unavailable.body.code, 'unavailable');
  check('/v1/summary', unavailable, 'no database');
});

test('every response the document lists was produced', () => {
  const listed: string[] = [];
  for (const [path, operation] of Object.entries(doc.paths as Json)) {
    for (const status of Object.keys(((operation as Json).get as Json).responses as Json)) {
      if (path === '/' && status === '200' && !PAGE_EXISTS) continue;
      listed.push(`${path} ${status}`);
    }
  }
  const missing = listed.filter((entry) => !produced.has(entry));
  assert.deepEqual(missing, [], 'documented but never produced');
});
