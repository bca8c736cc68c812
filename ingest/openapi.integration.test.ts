/**
 * The OpenAPI document (ingest/openapi.json) against the real server. Every response the
 * document lists for a (path, method, status) is produced for real by a few ingest instances with
 * different settings, and its body and headers are validated against what the document says;
 * every response the server gave must be documented. The event schema's numbers are compared to
 * shared/event-schema.ts, so the document and the validator can never drift apart.
 *
 * The validator below is a small JSON Schema one for exactly the keywords the document uses; a
 * test checks that the document uses no other, so no constraint it states goes unchecked.
 *
 * 503 is produced in two ways, both deterministic: `draining`, by requests on connections opened
 * before close() (close() sets the state synchronously and stops accepting only new
 * connections), and `queue_full`, by a batch of two on an instance with MAX_IN_FLIGHT_EVENTS=1
 * (the producer refuses it before producing anything). An unreachable broker keeps ingest from
 * starting at all, and a `broker_timeout` would depend on the broker's speed.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { gzipSync } from 'node:zlib';
import {
  EVENT_FIELDS,
  EVENT_LIMITS,
  EVENT_REJECT_CODES,
  validateEvent,
} from '../shared/event-schema.js';
import { SERVICE_STATES, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, freeTcpPort, stackFromEnv, uniqueName } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

type JsonObject = { [key: string]: unknown };

/** The repository root: the nearest directory above this module holding package.json. */
function findRepoRoot(from: string): string {
  for (let dir = resolve(from); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

// tsc compiles only .ts, so the document is read from the source tree, not from dist/.
const DOCUMENT_PATH = join(
  findRepoRoot(dirname(fileURLToPath(import.meta.url))),
  'ingest',
  'openapi.json',
);
const doc = JSON.parse(readFileSync(DOCUMENT_PATH, 'utf8')) as JsonObject;

const stack = stackFromEnv();
const topic = uniqueName('openapi_it');
const logger = createLogger('test', 'warn');
const ALLOWED_ORIGIN = 'https://app.example.com';
const MAX_BATCH_EVENTS = 3;
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
/**
 * Statuses the document lists that no request can produce from a correct server: 500 answers a
 * bug. Its schema is still checked (it must be an Error), but not provoked.
 */
const NOT_PROVOKABLE = new Set([500]);

// ---------------------------------------------------------------------------------------------
// The event schema against shared/event-schema.ts

/** Where the document states each of EVENT_LIMITS (a new limit fails the build until mapped). */
const DOCUMENTED_LIMITS: Record<keyof typeof EVENT_LIMITS, (event: JsonObject) => unknown> = {
  userIdMaxChars: (e) =>
    (field(e, 'user_id').oneOf as JsonObject[]).find((s) => s.type === 'string')?.maxLength,
  activityTypeMaxChars: (e) => field(e, 'activity_type').maxLength,
  eventIdMaxChars: (e) => field(e, 'event_id').maxLength,
  propertiesMaxBytes: (e) => field(e, 'properties')['x-max-bytes'],
  propertiesMaxDepth: (e) => field(e, 'properties')['x-max-depth'],
  maxFutureMs: (e) => field(e, 'timestamp')['x-max-future-ms'],
};

function field(schema: JsonObject, name: string): JsonObject {
  return (schema.properties as Record<string, JsonObject>)[name] ?? {};
}

/** The sorted `enum` of one property of an object schema. */
function enumOf(schema: JsonObject, property: string): string[] {
  return [...((field(schema, property).enum ?? []) as string[])].sort();
}

const eventSchema = (): JsonObject => deref({ $ref: '#/components/schemas/ActivityEvent' });

describe('the event schema matches shared/event-schema.ts', () => {
  test('its limits are EVENT_LIMITS', () => {
    for (const [name, documented] of Object.entries(DOCUMENTED_LIMITS)) {
      assert.equal(
        documented(eventSchema()),
        EVENT_LIMITS[name as keyof typeof EVENT_LIMITS],
        name,
      );
    }
  });

  test('its properties are EVENT_FIELDS and it requires what validateEvent requires', () => {
    const schema = eventSchema();
    assert.deepEqual(Object.keys(schema.properties as JsonObject).sort(), [...EVENT_FIELDS].sort());
    assert.equal(schema.additionalProperties, false, 'unknown fields are rejected');
    const nowMs = Date.now();
    const full: JsonObject = {
      user_id: 'u',
      activity_type: 'a',
      timestamp: nowMs,
      event_id: 'e',
      properties: {},
    };
    assert.ok(validateEvent(full, { nowMs, maxAgeMs: null, requireTimestamp: false }).ok);
    const required = EVENT_FIELDS.filter((name) => {
      const { [name]: _, ...rest } = full;
      const result = validateEvent(rest, { nowMs, maxAgeMs: null });
      return !result.ok && result.code === 'missing_field';
    });
    assert.deepEqual([...(schema.required as string[])].sort(), [...required].sort());
  });

  test('its reject codes are EventRejectCode', () => {
    const codes = (name: string): string[] =>
      enumOf(deref({ $ref: `#/components/schemas/${name}` }), 'code');
    assert.deepEqual(codes('InvalidEvent'), ['invalid_json', ...EVENT_REJECT_CODES].sort());
    assert.deepEqual(
      codes('EventInvalid'),
      ['invalid_gzip', 'invalid_utf8', 'invalid_json', ...EVENT_REJECT_CODES].sort(),
    );
  });

  test('/readyz states are SERVICE_STATES', () => {
    const notReady = deref({ $ref: '#/components/schemas/NotReady' });
    assert.deepEqual(enumOf(notReady, 'state'), [...SERVICE_STATES].sort());
  });
});

describe('the document', () => {
  test('every $ref resolves and every schema keyword is one this validator enforces', () => {
    const problems: string[] = [];
    walk(doc, '#', (node, at) => {
      if (typeof node.$ref === 'string') {
        try {
          deref(node);
        } catch (err) {
          problems.push(`${at}: ${(err as Error).message}`);
        }
      }
    });
    for (const [at, schema] of schemasOf(doc)) checkKeywords(schema, at, problems);
    assert.deepEqual(problems, []);
  });

  test('POST endpoints take a bearer token or X-API-Key, or nothing (API_KEYS unset)', () => {
    for (const path of ['/activity', '/activities']) {
      assert.deepEqual(operation(path, 'POST')?.security, [
        {},
        { bearerAuth: [] },
        { apiKeyHeader: [] },
      ]);
    }
    const schemes = (doc.components as JsonObject).securitySchemes as Record<string, JsonObject>;
    assert.equal(schemes.bearerAuth?.type, 'http');
    assert.equal(schemes.bearerAuth?.scheme, 'bearer');
    assert.equal(schemes.apiKeyHeader?.type, 'apiKey');
    assert.equal(schemes.apiKeyHeader?.in, 'header');
    assert.equal(schemes.apiKeyHeader?.name, 'X-API-Key');
  });

  test('500 is documented as what http-server.ts answers when a handler fails', () => {
    // Not provoked (only a bug produces it): the body errorResponse() builds for it is checked.
    const body = { code: 'internal_error', message: 'the server failed to handle the request' };
    for (const [path, method] of [
      ['/activity', 'POST'],
      ['/activities', 'POST'],
      ['/metrics', 'GET'],
    ] as const) {
      const response = documentedResponse(path, method, 500);
      const content = response?.content as Record<string, JsonObject> | undefined;
      const schema = content?.['application/json']?.schema as JsonObject;
      assert.deepEqual(validate(schema, body), [], `${method} ${path}`);
      assert.deepEqual(validate({ $ref: '#/components/schemas/Error' }, body), []);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// A JSON Schema validator for the subset the document uses

const ASSERTION_KEYWORDS = new Set([
  '$ref',
  'type',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'minItems',
  'maxItems',
  'enum',
  'const',
  'minLength',
  'maxLength',
  'minimum',
  'maximum',
  'oneOf',
  // The document's own keywords for limits JSON Schema cannot state.
  'x-max-bytes',
  'x-max-depth',
  'x-max-future-ms',
]);
const ANNOTATION_KEYWORDS = new Set(['description', 'examples', 'format', 'title']);

/** Resolves a local `$ref` (JSON pointer into the document); other objects are returned as is. */
function deref(node: JsonObject): JsonObject {
  let current = node;
  for (let hops = 0; typeof current.$ref === 'string'; hops++) {
    const ref = current.$ref;
    if (!ref.startsWith('#/') || hops > 10) throw new Error(`unresolvable $ref ${ref}`);
    let target: unknown = doc;
    for (const raw of ref.slice(2).split('/')) {
      const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
      target = isObject(target) ? target[key] : undefined;
    }
    if (!isObject(target)) throw new Error(`$ref ${ref} points at nothing`);
    current = target;
  }
  return current;
}

/** The problems of `value` against `schema`, as `path: what`; empty when valid. */
function validate(schemaOrRef: JsonObject, value: unknown, at = '$'): string[] {
  const schema = deref(schemaOrRef);
  const problems: string[] = [];
  const fail = (what: string) => problems.push(`${at}: ${what}`);

  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? (schema.type as string[]) : [schema.type as string];
    if (!types.some((type) => hasType(value, type))) {
      fail(`expected ${types.join(' or ')}, got ${JSON.stringify(value)}`);
      return problems;
    }
  }
  if ('const' in schema && !isDeepStrictEqual(value, schema.const)) {
    fail(`expected ${JSON.stringify(schema.const)}, got ${JSON.stringify(value)}`);
  }
  if (Array.isArray(schema.enum) && !schema.enum.some((item) => isDeepStrictEqual(item, value))) {
    fail(`${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  }
  if (typeof value === 'string') {
    // JSON Schema counts characters (code points), not UTF-16 code units.
    const length = [...value].length;
    if (typeof schema.minLength === 'number' && length < schema.minLength) {
      fail(`shorter than ${schema.minLength} characters`);
    }
    if (typeof schema.maxLength === 'number' && length > schema.maxLength) {
      fail(`longer than ${schema.maxLength} characters`);
    }
  }
  if (typeof value === 'number') {
    if (typeof schema.minimum === 'number' && value < schema.minimum) {
      fail(`${value} < minimum ${schema.minimum}`);
    }
    if (typeof schema.maximum === 'number' && value > schema.maximum) {
      fail(`${value} > maximum ${schema.maximum}`);
    }
  }
  if (Array.isArray(value)) {
    if (typeof schema.minItems === 'number' && value.length < schema.minItems) {
      fail(`fewer than ${schema.minItems} items`);
    }
    if (typeof schema.maxItems === 'number' && value.length > schema.maxItems) {
      fail(`more than ${schema.maxItems} items`);
    }
    if (isObject(schema.items)) {
      const items = schema.items;
      for (const [i, item] of value.entries())
        problems.push(...validate(items, item, `${at}[${i}]`));
    }
  }
  if (isObject(value)) {
    const properties = (schema.properties ?? {}) as Record<string, JsonObject>;
    for (const name of (schema.required ?? []) as string[]) {
      if (!(name in value)) fail(`missing required property ${name}`);
    }
    for (const [name, item] of Object.entries(value)) {
      const declared = properties[name];
      if (declared !== undefined) problems.push(...validate(declared, item, `${at}.${name}`));
      else if (schema.additionalProperties === false) fail(`property ${name} is not allowed`);
      else if (isObject(schema.additionalProperties)) {
        problems.push(...validate(schema.additionalProperties, item, `${at}.${name}`));
      }
    }
    const maxBytes = schema['x-max-bytes'];
    if (typeof maxBytes === 'number' && Buffer.byteLength(JSON.stringify(value)) > maxBytes) {
      fail(`larger than ${maxBytes} bytes as JSON`);
    }
    const maxDepth = schema['x-max-depth'];
    if (typeof maxDepth === 'number' && depthOf(value) > maxDepth) {
      fail(`nested deeper than ${maxDepth} levels`);
    }
  }
  const maxFutureMs = schema['x-max-future-ms'];
  if (typeof maxFutureMs === 'number' && (typeof value === 'number' || typeof value === 'string')) {
    const ms = typeof value === 'number' ? value : Date.parse(value);
    if (ms > Date.now() + maxFutureMs) fail(`more than ${maxFutureMs} ms in the future`);
  }
  if (Array.isArray(schema.oneOf)) {
    const results = (schema.oneOf as JsonObject[]).map((option) => validate(option, value, at));
    const matching = results.filter((result) => result.length === 0).length;
    if (matching !== 1) {
      fail(`matches ${matching} of the oneOf schemas, not 1: ${JSON.stringify(results)}`);
    }
  }
  return problems;
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case 'null':
      return value === null;
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
    case 'array':
      return Array.isArray(value);
    case 'object':
      return isObject(value);
    default:
      return typeof value === type;
  }
}

/** Nesting depth of containers: an object or array is 1, one inside it 2. */
function depthOf(value: unknown): number {
  if (typeof value !== 'object' || value === null) return 0;
  return 1 + Math.max(0, ...Object.values(value).map(depthOf));
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function walk(node: unknown, at: string, visit: (node: JsonObject, at: string) => void): void {
  if (Array.isArray(node)) {
    for (const [i, item] of node.entries()) walk(item, `${at}/${i}`, visit);
  } else if (isObject(node)) {
    visit(node, at);
    for (const [key, child] of Object.entries(node)) walk(child, `${at}/${key}`, visit);
  }
}

/** Every schema root in the document: components, bodies, parameters, headers. */
function schemasOf(document: JsonObject): Array<[string, JsonObject]> {
  const found: Array<[string, JsonObject]> = [];
  const components = document.components as JsonObject;
  for (const [name, schema] of Object.entries(components.schemas as JsonObject)) {
    found.push([`#/components/schemas/${name}`, schema as JsonObject]);
  }
  walk(document, '#', (node, at) => {
    if (at.startsWith('#/components/schemas')) return;
    if (isObject(node.schema)) found.push([`${at}/schema`, node.schema]);
  });
  return found;
}

function checkKeywords(schema: JsonObject, at: string, problems: string[]): void {
  for (const [keyword, child] of Object.entries(schema)) {
    if (!ASSERTION_KEYWORDS.has(keyword) && !ANNOTATION_KEYWORDS.has(keyword)) {
      problems.push(`${at}: keyword ${keyword} is not checked by this test's validator`);
    }
    if (keyword === 'properties' && isObject(child)) {
      for (const [name, sub] of Object.entries(child)) {
        checkKeywords(sub as JsonObject, `${at}/properties/${name}`, problems);
      }
    }
    if ((keyword === 'items' || keyword === 'additionalProperties') && isObject(child)) {
      checkKeywords(child, `${at}/${keyword}`, problems);
    }
    if (keyword === 'oneOf' && Array.isArray(child)) {
      for (const [i, sub] of child.entries()) {
        checkKeywords(sub as JsonObject, `${at}/oneOf/${i}`, problems);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The document's responses

function operation(path: string, method: string): JsonObject | undefined {
  const item = (doc.paths as Record<string, JsonObject>)[path];
  const op = item?.[method.toLowerCase()];
  return isObject(op) ? op : undefined;
}

function documentedMethods(path: string): string[] {
  return METHODS.filter((method) => operation(path, method) !== undefined);
}

/**
 * What the document says the answer to `method path` with `status` is: the operation's response,
 * or for an unlisted path or method the NotFound / MethodNotAllowed components the document names
 * for them. Undefined: undocumented.
 */
function documentedResponse(path: string, method: string, status: number): JsonObject | undefined {
  const component = (name: string) => deref({ $ref: `#/components/responses/${name}` });
  if ((doc.paths as JsonObject)[path] === undefined) {
    return status === 404 ? component('NotFound') : undefined;
  }
  const op = operation(path, method);
  if (op === undefined) return status === 405 ? component('MethodNotAllowed') : undefined;
  const response = (op.responses as JsonObject)[String(status)];
  return isObject(response) ? deref(response) : undefined;
}

/** `METHOD path status` of every response the server gave in this file. */
const provoked = new Set<string>();
const key = (path: string, method: string, status: number) => `${method} ${path} ${status}`;

// ---------------------------------------------------------------------------------------------
// HTTP on raw sockets: exact bytes, keep-alive on demand, bodies that never finish, HEAD checked

interface RawResponse {
  status: number;
  /** Lower-case names. */
  headers: Record<string, string>;
  body: Buffer;
  /** HEAD only: bytes that followed the headers (a body, which HEAD must not have). */
  afterHead?: string;
}

interface Exchange {
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Content-Length to declare instead of the body's: a body that never completes. */
  declaredLength?: number;
}

class Connection {
  private buffer = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    // The server closes some connections right after answering; what arrived is still read.
    socket.on('error', () => {});
  }

  static open(port: number): Promise<Connection> {
    return new Promise((resolveOpen, reject) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolveOpen(new Connection(socket));
      });
    });
  }

  async exchange(request: Exchange): Promise<RawResponse> {
    const body = request.body === undefined ? undefined : Buffer.from(request.body);
    const length = request.declaredLength ?? body?.length;
    const head = [
      `${request.method} ${request.path} HTTP/1.1`,
      'host: 127.0.0.1',
      ...Object.entries(request.headers ?? {}).map(([name, value]) => `${name}: ${value}`),
      ...(length === undefined ? [] : [`content-length: ${length}`]),
    ];
    this.socket.write(
      Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`), body ?? Buffer.alloc(0)]),
    );
    return this.read(request.method === 'HEAD');
  }

  /** Bytes that arrive within `ms` (or until the server closes): none are expected. */
  async strayBytes(ms: number): Promise<string> {
    const deadline = Date.now() + ms;
    while (!this.closed && (await this.until(deadline)));
    return this.buffer.toString('latin1');
  }

  close(): void {
    this.socket.destroy();
  }

  /** One response; after HEAD no body follows, whatever Content-Length says. */
  private async read(headRequest: boolean, timeoutMs = 15_000): Promise<RawResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parsed = this.parse(headRequest);
      if (parsed !== undefined) return parsed;
      const seen = JSON.stringify(this.buffer.toString('latin1').slice(0, 300));
      if (this.closed) throw new Error(`connection closed before a whole response; got ${seen}`);
      if (!(await this.until(deadline))) {
        throw new Error(`no whole response within ${timeoutMs} ms; got ${seen}`);
      }
    }
  }

  private parse(headRequest: boolean): RawResponse | undefined {
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end < 0) return undefined;
    const [statusLine = '', ...lines] = this.buffer
      .subarray(0, end)
      .toString('latin1')
      .split('\r\n');
    const match = /^HTTP\/1\.1 (\d{3}) /.exec(statusLine);
    if (match === null)
      throw new Error(`expected a status line, got ${JSON.stringify(statusLine)}`);
    const status = Number(match[1]);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const bodyless = headRequest || status === 204 || status === 304;
    const length = bodyless ? 0 : Number(headers['content-length'] ?? 'NaN');
    if (Number.isNaN(length)) throw new Error(`no Content-Length in ${statusLine}`);
    if (this.buffer.length < end + 4 + length) return undefined;
    const body = Buffer.from(this.buffer.subarray(end + 4, end + 4 + length));
    this.buffer = Buffer.from(this.buffer.subarray(end + 4 + length));
    return { status, headers, body };
  }

  /** Waits for news on the socket; false once `deadline` passed. */
  private until(deadline: number): Promise<boolean> {
    const left = deadline - Date.now();
    if (left <= 0) return Promise.resolve(false);
    return new Promise((resolveWait) => {
      const timer = setTimeout(() => resolveWait(false), left);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolveWait(true);
      };
    });
  }
}

/** One exchange on a connection of its own. */
async function send(service: IngestService, request: Exchange): Promise<RawResponse> {
  const connection = await Connection.open(service.port);
  try {
    return await sendOn(connection, request);
  } finally {
    connection.close();
  }
}

/** One exchange on `connection`; after HEAD, whatever else arrives is kept to be checked. */
async function sendOn(connection: Connection, request: Exchange): Promise<RawResponse> {
  const response = await connection.exchange(request);
  if (request.method === 'HEAD') response.afterHead = await connection.strayBytes(150);
  return response;
}

/**
 * Asserts that `response` is the documented answer to `request`: the expected status (and
 * `code`), documented for this path and method, with every required header present and every
 * documented header valid, and a body of a documented media type valid against its schema.
 * Returns the parsed JSON body (undefined when the body is not JSON).
 */
function assertDocumented(
  request: Exchange,
  response: RawResponse,
  expected: { status: number; code?: string },
): unknown {
  const text = response.body.toString();
  const what = `${request.method} ${request.path} → ${response.status} ${text.slice(0, 500)}`;
  provoked.add(key(request.path, request.method, response.status));
  assert.equal(response.status, expected.status, what);
  const documented = documentedResponse(request.path, request.method, response.status);
  assert.ok(documented !== undefined, `undocumented response: ${what}`);

  for (const [name, headerOrRef] of Object.entries((documented.headers ?? {}) as JsonObject)) {
    const header = deref(headerOrRef as JsonObject);
    const value = response.headers[name.toLowerCase()];
    if (value === undefined) {
      assert.notEqual(header.required, true, `required header ${name} missing: ${what}`);
      continue;
    }
    const schema = deref(header.schema as JsonObject);
    const typed = schema.type === 'integer' && /^\d+$/.test(value) ? Number(value) : value;
    assert.deepEqual(validate(schema, typed, name), [], what);
  }

  const content = documented.content as Record<string, JsonObject> | undefined;
  if (request.method === 'HEAD') {
    assert.equal(response.afterHead, '', `a HEAD response must not carry a body: ${what}`);
  }
  if (content === undefined || request.method === 'HEAD') {
    assert.equal(text, '', `the document says no body: ${what}`);
    return undefined;
  }
  const mediaType = (response.headers['content-type'] ?? '').split(';')[0]?.trim() ?? '';
  const media = content[mediaType];
  assert.ok(media !== undefined, `Content-Type ${mediaType} is not documented: ${what}`);
  if (mediaType !== 'application/json') {
    assert.deepEqual(validate(media.schema as JsonObject, text), [], what);
    return undefined;
  }
  const body: unknown = JSON.parse(text);
  assert.deepEqual(validate(media.schema as JsonObject, body), [], what);
  // /readyz answers 503 with its readiness report; every other failure is an Error.
  if (response.status >= 400 && request.path !== '/readyz') {
    const errorSchema = { $ref: '#/components/schemas/Error' };
    assert.deepEqual(validate(errorSchema, body), [], `not the Error shape: ${what}`);
  }
  if (expected.code !== undefined) assert.equal((body as JsonObject).code, expected.code, what);
  return body;
}

/** Sends `request` to `service` and asserts the documented answer; returns the JSON body. */
async function expectDocumented(
  service: IngestService,
  request: Exchange,
  expected: { status: number; code?: string },
): Promise<unknown> {
  return assertDocumented(request, await send(service, request), expected);
}

// ---------------------------------------------------------------------------------------------
// The servers

const instances: IngestService[] = [];
/** CORS for one origin, MAX_BATCH_EVENTS=3, default body limits. */
let open: IngestService;
/** API_KEYS set, RATE_LIMIT_PER_SEC=1 with a burst of 1 per key. */
let guarded: IngestService;
/** MAX_IN_FLIGHT_EVENTS=1 (a batch of two is never admitted), REQUEST_TIMEOUT_SEC=1. */
let tight: IngestService;
/** MAX_CONCURRENT_REQUESTS=1: one request whose body is still arriving fills it. */
let crowded: IngestService;

async function startInstance(env: Record<string, string>): Promise<IngestService> {
  const service = await startIngest(
    readIngestConfig({
      KAFKA_BROKERS: stack.kafkaBrokers,
      TOPIC: topic,
      TOPIC_PARTITIONS: '2',
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
  // One after the other: the first creates the topic, the others find it.
  open = await startInstance({
    CORS_ALLOWED_ORIGINS: ALLOWED_ORIGIN,
    MAX_BATCH_EVENTS: String(MAX_BATCH_EVENTS),
  });
  guarded = await startInstance({
    API_KEYS: 'key-bearer,key-header,key-throttle-1,key-throttle-2',
    RATE_LIMIT_PER_SEC: '1',
    RATE_LIMIT_BURST: '1',
  });
  tight = await startInstance({
    MAX_IN_FLIGHT_EVENTS: '1',
    REQUEST_TIMEOUT_SEC: '1',
    ACK_TIMEOUT_SEC: '0.5',
  });
  crowded = await startInstance({ MAX_CONCURRENT_REQUESTS: '1' });
});

after(async () => {
  const results = await Promise.allSettled(
    instances.map((service, i) => withDeadline(service.close(), 15_000, `closing ingest #${i}`)),
  );
  await deleteTopics(stack.kafkaBrokers, [topic], logger);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

// ---------------------------------------------------------------------------------------------
// Every documented response, for real

const JSON_TYPE = { 'content-type': 'application/json' };
let sequence = 0;
const event = (extra: JsonObject = {}): JsonObject => ({
  user_id: `openapi-${++sequence}`,
  activity_type: 'page_view',
  ...extra,
});
const post = (path: string, body: unknown, headers: Record<string, string> = JSON_TYPE) => ({
  method: 'POST',
  path,
  headers,
  body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
});

describe('POST /activity', () => {
  test('200 with the event_id echoed, and CORS headers for an allowed origin', async () => {
    const request = post('/activity', event({ event_id: 'e-1' }), {
      ...JSON_TYPE,
      origin: ALLOWED_ORIGIN,
    });
    const response = await send(open, request);
    const body = assertDocumented(request, response, { status: 200 });
    assert.deepEqual(body, { status: 'accepted', event_id: 'e-1' });
    assert.equal(response.headers['access-control-allow-origin'], ALLOWED_ORIGIN);
    assert.equal(response.headers.vary, 'Origin');
  });

  test('200 for text/plain (sendBeacon) and gzip', async () => {
    await expectDocumented(open, post('/activity', event(), { 'content-type': 'text/plain' }), {
      status: 200,
    });
    const gzipped = gzipSync(JSON.stringify(event()));
    await expectDocumented(
      open,
      post('/activity', gzipped, { ...JSON_TYPE, 'content-encoding': 'gzip' }),
      { status: 200 },
    );
  });

  const invalid: Array<[string, Exchange]> = [
    ['invalid_json', post('/activity', '{"user_id":')],
    ['invalid_utf8', post('/activity', Buffer.from([0x7b, 0xff, 0x7d]))],
    ['invalid_gzip', post('/activity', 'not gzip', { ...JSON_TYPE, 'content-encoding': 'gzip' })],
    ['not_an_object', post('/activity', '[]')],
    ['unknown_field', post('/activity', event({ userid: 'typo' }))],
    ['missing_field', post('/activity', { activity_type: 'page_view' })],
    ['too_long', post('/activity', event({ activity_type: 'x'.repeat(65) }))],
    ['invalid_timestamp', post('/activity', event({ timestamp: 'yesterday' }))],
  ];
  for (const [code, request] of invalid) {
    test(`400 ${code}`, () => expectDocumented(open, request, { status: 400, code }).then());
  }

  test('401 without a key, with an unknown key; a bearer token and X-API-Key both pass', async () => {
    await expectDocumented(guarded, post('/activity', event()), {
      status: 401,
      code: 'missing_api_key',
    });
    await expectDocumented(
      guarded,
      post('/activity', event(), { ...JSON_TYPE, authorization: 'Bearer nope' }),
      { status: 401, code: 'invalid_api_key' },
    );
    // Past authentication: the empty object is then refused for what it is.
    await expectDocumented(
      guarded,
      post('/activity', {}, { ...JSON_TYPE, authorization: 'Bearer key-bearer' }),
      { status: 400, code: 'missing_field' },
    );
    await expectDocumented(
      guarded,
      post('/activity', {}, { ...JSON_TYPE, 'x-api-key': 'key-header' }),
      { status: 400, code: 'missing_field' },
    );
  });

  test('408 when the body does not arrive within REQUEST_TIMEOUT_SEC', async () => {
    const request = { ...post('/activity', '{"user_id":'), declaredLength: 100 };
    await expectDocumented(tight, request, { status: 408, code: 'request_timeout' });
  });

  test('413 for a body over MAX_BODY_BYTES as sent, and once inflated', async () => {
    const declared = { ...post('/activity', ''), declaredLength: 2 * 1_048_576 };
    const body = await expectDocumented(open, declared, { status: 413, code: 'body_too_large' });
    assert.equal((body as JsonObject).limit, 1_048_576);
    await expectDocumented(open, gzipBomb('/activity'), { status: 413, code: 'body_too_large' });
  });

  test('415 for a media type, charset or encoding it does not take', async () => {
    for (const [code, headers] of [
      ['unsupported_media_type', { 'content-type': 'application/x-ndjson' }],
      ['unsupported_charset', { 'content-type': 'application/json; charset=iso-8859-1' }],
      ['unsupported_encoding', { ...JSON_TYPE, 'content-encoding': 'br' }],
    ] as const) {
      await expectDocumented(open, post('/activity', event(), headers), { status: 415, code });
    }
  });

  test('429 with Retry-After once the key has used its rate', async () => {
    await expectRateLimited('/activity', 'key-throttle-1');
  });
});

describe('POST /activities', () => {
  test('200 for a JSON array, text/plain, NDJSON and gzip', async () => {
    const batches: Array<[Record<string, string>, string | Buffer, number]> = [
      [JSON_TYPE, JSON.stringify([event(), event()]), 2],
      [{ 'content-type': 'text/plain' }, JSON.stringify([event()]), 1],
      [
        { 'content-type': 'application/x-ndjson' },
        `${JSON.stringify(event())}\n\n${JSON.stringify(event())}\n`,
        2,
      ],
      [{ ...JSON_TYPE, 'content-encoding': 'gzip' }, gzipSync(JSON.stringify([event()])), 1],
    ];
    for (const [headers, body, count] of batches) {
      const answer = await expectDocumented(open, post('/activities', body, headers), {
        status: 200,
      });
      assert.deepEqual(answer, { accepted: count, rejected: [] });
    }
  });

  test('207 lists the rejected events by index (NDJSON: among the non-blank lines)', async () => {
    const ndjson = `${JSON.stringify(event())}\n\nnot json\n${JSON.stringify({ user_id: 'u' })}\n`;
    const body = (await expectDocumented(
      open,
      post('/activities', ndjson, { 'content-type': 'application/x-ndjson' }),
      { status: 207 },
    )) as { accepted: number; rejected: Array<{ index: number; code: string }> };
    assert.equal(body.accepted, 1);
    assert.deepEqual(
      body.rejected.map(({ index, code }) => ({ index, code })),
      [
        { index: 1, code: 'invalid_json' },
        { index: 2, code: 'missing_field' },
      ],
    );
  });

  const unreadable: Array<[string, Exchange]> = [
    ['invalid_json', post('/activities', '[{')],
    ['not_an_array', post('/activities', event())],
    ['empty_batch', post('/activities', [])],
    ['invalid_utf8', post('/activities', Buffer.from([0x5b, 0xc3, 0x28, 0x5d]))],
    ['invalid_gzip', post('/activities', 'not gzip', { ...JSON_TYPE, 'content-encoding': 'gzip' })],
    ['no_valid_events', post('/activities', [{ user_id: 'u' }, 42])],
  ];
  for (const [code, request] of unreadable) {
    test(`400 ${code}`, () => expectDocumented(open, request, { status: 400, code }).then());
  }

  test('401 without a key and with an unknown one', async () => {
    await expectDocumented(guarded, post('/activities', [event()]), {
      status: 401,
      code: 'missing_api_key',
    });
    await expectDocumented(
      guarded,
      post('/activities', [event()], { ...JSON_TYPE, 'x-api-key': 'nope' }),
      { status: 401, code: 'invalid_api_key' },
    );
  });

  test('408 when the body does not arrive within REQUEST_TIMEOUT_SEC', async () => {
    const request = { ...post('/activities', '[{'), declaredLength: 100 };
    await expectDocumented(tight, request, { status: 408, code: 'request_timeout' });
  });

  test('413 for a body too large as sent, once inflated, or too many events', async () => {
    const declared = { ...post('/activities', ''), declaredLength: 2 * 1_048_576 };
    await expectDocumented(open, declared, { status: 413, code: 'body_too_large' });
    await expectDocumented(open, gzipBomb('/activities'), { status: 413, code: 'body_too_large' });
    const tooMany = Array.from({ length: MAX_BATCH_EVENTS + 1 }, () => event());
    await expectDocumented(open, post('/activities', tooMany), {
      status: 413,
      code: 'too_many_events',
    });
  });

  test('415 for a media type it does not take', async () => {
    await expectDocumented(
      open,
      post('/activities', '<events/>', { 'content-type': 'application/xml' }),
      { status: 415, code: 'unsupported_media_type' },
    );
  });

  test('429 with Retry-After once the key has used its rate', async () => {
    await expectRateLimited('/activities', 'key-throttle-2');
  });

  test('503 queue_full when the batch exceeds MAX_IN_FLIGHT_EVENTS, every event listed', async () => {
    // Deterministic: two events can never fit a bound of one, so the producer refuses the
    // batch before producing anything, whatever the broker is doing.
    const body = (await expectDocumented(
      tight,
      post('/activities', [event(), event(), { user_id: 'u' }]),
      { status: 503, code: 'queue_full' },
    )) as { accepted: number; rejected: Array<{ index: number; retryable?: boolean }> };
    assert.equal(body.accepted, 0);
    assert.deepEqual(
      body.rejected.map(({ index, retryable }) => [index, retryable ?? false]),
      [
        [0, true],
        [1, true],
        [2, false],
      ],
    );
  });
});

describe('OPTIONS (CORS preflight)', () => {
  for (const path of ['/activity', '/activities']) {
    test(`${path}: 204 for an allowed origin, 403 for another or none`, async () => {
      const preflight = (origin?: string): Exchange => ({
        method: 'OPTIONS',
        path,
        headers: {
          'access-control-request-method': 'POST',
          ...(origin === undefined ? {} : { origin }),
        },
      });
      await expectDocumented(open, preflight(ALLOWED_ORIGIN), { status: 204 });
      await expectDocumented(open, preflight('https://evil.example'), {
        status: 403,
        code: 'origin_not_allowed',
      });
      await expectDocumented(open, preflight(), { status: 403, code: 'origin_not_allowed' });
    });
  }
});

describe('operations endpoints', () => {
  for (const path of ['/healthz', '/readyz', '/metrics']) {
    test(`GET ${path}: 200`, async () => {
      await expectDocumented(open, { method: 'GET', path }, { status: 200 });
    });
    test(`HEAD ${path}: 200 without a body`, async () => {
      await expectDocumented(open, { method: 'HEAD', path }, { status: 200 });
    });
  }
});

describe('paths and methods not in the document', () => {
  test('404 on any other path, whatever the method', async () => {
    for (const [method, path] of [
      ['GET', '/'],
      ['GET', '/activity/'],
      ['POST', '/events'],
      ['OPTIONS', '/nope'],
    ] as const) {
      const body = method === 'POST' ? '{}' : undefined;
      await expectDocumented(
        open,
        { method, path, ...(body === undefined ? {} : { headers: JSON_TYPE, body }) },
        { status: 404, code: 'not_found' },
      );
    }
  });

  for (const path of Object.keys(doc.paths as JsonObject)) {
    test(`405 on ${path} for every method it does not list; Allow lists those it does`, async (t) => {
      const listed = documentedMethods(path);
      for (const method of METHODS.filter((m) => !listed.includes(m))) {
        await t.test(method, async () => {
          const request = { method, path };
          const response = await send(open, request);
          assertDocumented(request, response, { status: 405, code: 'method_not_allowed' });
          const allow = (response.headers.allow ?? '').split(',').map((m) => m.trim());
          assert.deepEqual(allow.sort(), [...listed].sort());
        });
      }
    });
  }
});

test('while shutting down: 503 draining with Retry-After on POST, 503 not ready on /readyz', async (t) => {
  const service = await startInstance({});
  // close() stops accepting connections at once, so the requests go on connections opened (and
  // used once, so that the server has surely accepted them) before. The state is `draining`
  // synchronously inside close(), so each request below meets it: no race.
  const connections = await Promise.all(
    Array.from({ length: 4 }, () => Connection.open(service.port)),
  );
  for (const connection of connections) {
    assert.equal((await connection.exchange({ method: 'GET', path: '/healthz' })).status, 200);
  }
  const closing = withDeadline(service.close(), 15_000, 'closing the draining instance');
  const requests: Array<[Exchange, { status: number; code?: string }]> = [
    [post('/activity', event()), { status: 503, code: 'draining' }],
    [post('/activities', [event()]), { status: 503, code: 'draining' }],
    [{ method: 'GET', path: '/readyz' }, { status: 503 }],
    [{ method: 'HEAD', path: '/readyz' }, { status: 503 }],
  ];
  try {
    for (const [i, [request, expected]] of requests.entries()) {
      const connection = connections[i] as Connection;
      await t.test(`${request.method} ${request.path} → ${expected.status}`, async () => {
        const body = assertDocumented(request, await sendOn(connection, request), expected);
        if (request.path === '/readyz' && body !== undefined) {
          assert.equal((body as JsonObject).ready, false);
        }
      });
    }
  } finally {
    for (const connection of connections) connection.close();
    await closing;
  }
});

test('events the document calls valid are accepted, those it calls invalid are refused', async () => {
  const now = Date.now();
  const nested = (levels: number): JsonObject => (levels <= 1 ? {} : { a: nested(levels - 1) });
  const padded = (bytes: number): JsonObject => ({ pad: 'x'.repeat(bytes - '{"pad":""}'.length) });
  const astral = '\u{1F600}';
  const probes: JsonObject[] = [
    event(),
    event({ user_id: 'u'.repeat(EVENT_LIMITS.userIdMaxChars) }),
    event({ user_id: 'u'.repeat(EVENT_LIMITS.userIdMaxChars + 1) }),
    event({ user_id: '' }),
    event({ user_id: 0 }),
    event({ user_id: -1 }),
    event({ user_id: 1.5 }),
    event({ user_id: 2 ** 53 }),
    event({ user_id: null }),
    event({ activity_type: 'a'.repeat(EVENT_LIMITS.activityTypeMaxChars) }),
    event({ activity_type: 'a'.repeat(EVENT_LIMITS.activityTypeMaxChars + 1) }),
    event({ event_id: 'e'.repeat(EVENT_LIMITS.eventIdMaxChars) }),
    event({ event_id: 'e'.repeat(EVENT_LIMITS.eventIdMaxChars + 1) }),
    event({ event_id: '' }),
    event({ event_id: null }),
    event({ timestamp: new Date(now).toISOString() }),
    event({ timestamp: now }),
    event({ timestamp: null }),
    event({ timestamp: now + EVENT_LIMITS.maxFutureMs - 60_000 }),
    event({ timestamp: now + EVENT_LIMITS.maxFutureMs + 60_000 }),
    event({ timestamp: -1 }),
    event({ timestamp: true }),
    event({ properties: padded(EVENT_LIMITS.propertiesMaxBytes) }),
    event({ properties: padded(EVENT_LIMITS.propertiesMaxBytes + 1) }),
    event({ properties: nested(EVENT_LIMITS.propertiesMaxDepth) }),
    event({ properties: nested(EVENT_LIMITS.propertiesMaxDepth + 1) }),
    event({ properties: [] }),
    event({ extra: 1 }),
    // Characters outside the Basic Multilingual Plane: JSON Schema's maxLength counts each as one.
    event({ user_id: astral.repeat(EVENT_LIMITS.userIdMaxChars) }),
    event({ user_id: astral.repeat(EVENT_LIMITS.userIdMaxChars + 1) }),
    event({ activity_type: astral.repeat(EVENT_LIMITS.activityTypeMaxChars) }),
  ];
  const disagreements: string[] = [];
  for (const probe of probes) {
    const problems = validate({ $ref: '#/components/schemas/ActivityEvent' }, probe);
    const request = post('/activity', probe);
    const response = await send(open, request);
    assertDocumented(request, response, { status: response.status === 200 ? 200 : 400 });
    if ((problems.length === 0) !== (response.status === 200)) {
      disagreements.push(
        `${JSON.stringify(probe).slice(0, 120)}: document ${problems.length === 0 ? 'valid' : `invalid (${problems.join('; ')})`}, server ${response.status} ${response.body.toString()}`,
      );
    }
  }
  assert.deepEqual(disagreements, []);
});

describe('refusals of the abuse bounds', () => {
  for (const path of ['/activity', '/activities']) {
    test(`POST ${path}: 403 from an origin not in CORS_ALLOWED_ORIGINS, whatever its type`, async () => {
      for (const type of ['application/json', 'text/plain']) {
        const body = path === '/activity' ? event() : [event()];
        const request = post(path, body, { 'content-type': type, origin: 'https://evil.example' });
        const response = await send(open, request);
        assertDocumented(request, response, { status: 403, code: 'origin_not_allowed' });
        assert.equal(response.headers['access-control-allow-origin'], undefined);
      }
    });

    test(`POST ${path}: 503 overloaded with Retry-After past MAX_CONCURRENT_REQUESTS`, async () => {
      // A request whose body is still arriving holds the one place.
      const holder = connect({ host: '127.0.0.1', port: crowded.port });
      holder.on('error', () => {});
      try {
        await new Promise<void>((resolve) => holder.once('connect', () => resolve()));
        holder.write(
          `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[`,
        );
        await new Promise((resolve) => setTimeout(resolve, 300));
        const body = path === '/activity' ? event() : [event()];
        const request = post(path, body);
        const response = await send(crowded, request);
        assertDocumented(request, response, { status: 503, code: 'overloaded' });
      } finally {
        holder.destroy();
      }
    });
  }
});

test('every documented response was produced for real (500 excepted: only a bug produces it)', () => {
  const missing: string[] = [];
  for (const [path, item] of Object.entries(doc.paths as Record<string, JsonObject>)) {
    for (const method of documentedMethods(path)) {
      const responses = (item[method.toLowerCase()] as JsonObject).responses as JsonObject;
      for (const status of Object.keys(responses).map(Number)) {
        if (NOT_PROVOKABLE.has(status)) continue;
        if (!provoked.has(key(path, method, status))) missing.push(key(path, method, status));
      }
    }
  }
  assert.deepEqual(missing, []);
});

// ---------------------------------------------------------------------------------------------

/** A gzip body well under MAX_BODY_BYTES that inflates past MAX_DECOMPRESSED_BYTES (4 MiB). */
function gzipBomb(path: string): Exchange {
  const body = gzipSync(`[${' '.repeat(5 * 1_048_576)}]`);
  return post(path, body, { ...JSON_TYPE, 'content-encoding': 'gzip' });
}

/**
 * Sends until the key's bucket (one request a second, burst 1) is empty: the first answer is
 * 400 (an empty object, so nothing is produced), a later one 429. A loop rather than two
 * requests, so a slow machine that refills the bucket in between cannot fail the test.
 */
async function expectRateLimited(path: string, apiKey: string): Promise<void> {
  const headers = { ...JSON_TYPE, 'x-api-key': apiKey };
  const body = path === '/activity' ? {} : [{}];
  for (let attempt = 0; attempt < 10; attempt++) {
    const request = post(path, body, headers);
    const response = await send(guarded, request);
    if (response.status === 429) {
      assertDocumented(request, response, { status: 429, code: 'rate_limited' });
      return;
    }
    assertDocumented(request, response, { status: 400 });
  }
  assert.fail(`${path}: no 429 in 10 requests at RATE_LIMIT_PER_SEC=1`);
}
