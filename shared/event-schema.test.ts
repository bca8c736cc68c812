import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type ActivityEvent,
  decodeEvent,
  EVENT_FIELDS,
  EVENT_LIMITS,
  EVENT_REJECT_CODES,
  type EventRejectCode,
  type EventValidation,
  encodeEvent,
  hasForbiddenCharacters,
  type ValidationOptions,
  validateEvent,
} from './event-schema.js';
import { seededRandom } from './testing.js';

/** Receive time of every test: 2024-05-01T12:00:00Z. */
const NOW = Date.UTC(2024, 4, 1, 12, 0, 0);
const DAY_MS = 24 * 3600_000;
const OPTIONS: ValidationOptions = { nowMs: NOW, maxAgeMs: 7 * DAY_MS };

const LONE_HIGH = '\uD800';
const LONE_LOW = '\uDC00';
const NUL = '\u0000';

function event(fields: Record<string, unknown> = {}): Record<string, unknown> {
  return { user_id: 'user-1', activity_type: 'page_view', timestamp: NOW, ...fields };
}

function accepted(input: unknown, options: ValidationOptions = OPTIONS): ActivityEvent {
  const result = validateEvent(input, options);
  if (!result.ok) assert.fail(`expected the event to be accepted, got ${JSON.stringify(result)}`);
  return result.event;
}

function rejected(
  input: unknown,
  code: EventRejectCode,
  field?: string,
  options: ValidationOptions = OPTIONS,
): void {
  const result = validateEvent(input, options);
  assert.equal(result.ok, false, `expected ${code}, the event was accepted`);
  if (result.ok) return;
  assert.equal(result.code, code, result.message);
  assert.equal(result.field, field);
  assert.ok(result.message.length > 0);
}

describe('validateEvent: accepted events', () => {
  test('a minimal event comes back normalised, with no optional fields added', () => {
    assert.deepEqual(accepted(event()), {
      user_id: 'user-1',
      activity_type: 'page_view',
      timestamp: NOW,
    });
  });

  test('a numeric user_id becomes its decimal string, a string user_id is kept as is', () => {
    assert.equal(accepted(event({ user_id: 42 })).user_id, '42');
    assert.equal(accepted(event({ user_id: 0 })).user_id, '0');
    assert.equal(accepted(event({ user_id: Number.MAX_SAFE_INTEGER })).user_id, '9007199254740991');
    assert.equal(accepted(event({ user_id: '0042' })).user_id, '0042');
  });

  test('a missing or null timestamp defaults to the receive time', () => {
    const { timestamp: _omitted, ...withoutTimestamp } = event();
    assert.equal(accepted(withoutTimestamp).timestamp, NOW);
    assert.equal(accepted(event({ timestamp: null })).timestamp, NOW);
  });

  test('RFC 3339 timestamps in UTC become epoch milliseconds', () => {
    assert.equal(accepted(event({ timestamp: '2024-05-01T11:59:00Z' })).timestamp, NOW - 60_000);
    assert.equal(accepted(event({ timestamp: '2024-05-01t11:59:00z' })).timestamp, NOW - 60_000);
    assert.equal(accepted(event({ timestamp: '2024-05-01 11:59:00Z' })).timestamp, NOW - 60_000);
  });

  test('RFC 3339 zone offsets are applied: 14:00+02:00 and 06:30-05:30 are both 12:00 UTC', () => {
    assert.equal(accepted(event({ timestamp: '2024-05-01T14:00:00+02:00' })).timestamp, NOW);
    assert.equal(accepted(event({ timestamp: '2024-05-01T06:30:00-05:30' })).timestamp, NOW);
    assert.equal(accepted(event({ timestamp: '2024-05-01T12:00:00+00:00' })).timestamp, NOW);
    assert.equal(accepted(event({ timestamp: '2024-05-01T12:00:00-00:00' })).timestamp, NOW);
  });

  test('an offset that moves the instant across midnight lands on the right day', () => {
    assert.equal(
      accepted(event({ timestamp: '2024-05-02T01:30:00+13:30' })).timestamp,
      Date.UTC(2024, 4, 1, 12, 0, 0),
    );
  });

  test('fractional seconds keep millisecond precision and truncate anything finer', () => {
    const at = (fraction: string) =>
      accepted(event({ timestamp: `2024-05-01T11:00:00${fraction}Z` })).timestamp;
    const base = Date.UTC(2024, 4, 1, 11, 0, 0);
    assert.equal(at('.5'), base + 500);
    assert.equal(at('.05'), base + 50);
    assert.equal(at('.123'), base + 123);
    assert.equal(at('.999999999'), base + 999);
    assert.equal(at('.000999'), base);
  });

  test('every millisecond fraction is parsed exactly (no floating-point off-by-one)', () => {
    const base = Date.UTC(2024, 4, 1, 11, 0, 0);
    for (let ms = 0; ms < 1000; ms++) {
      const fraction = String(ms).padStart(3, '0');
      const result = validateEvent(
        event({ timestamp: `2024-05-01T11:00:00.${fraction}Z` }),
        OPTIONS,
      );
      assert.ok(result.ok && result.event.timestamp === base + ms, `.${fraction}`);
    }
  });

  test('numeric timestamps are taken as epoch milliseconds', () => {
    assert.equal(accepted(event({ timestamp: NOW - 1234 })).timestamp, NOW - 1234);
    assert.equal(accepted(event({ timestamp: 0 }), { nowMs: NOW, maxAgeMs: null }).timestamp, 0);
  });

  test('29 February is valid in a leap year', () => {
    assert.equal(
      accepted(event({ timestamp: '2024-02-29T00:00:00Z' }), { nowMs: NOW, maxAgeMs: null })
        .timestamp,
      Date.UTC(2024, 1, 29),
    );
  });

  test('event_id and properties are kept when valid', () => {
    const properties = { page: '/home', nested: { list: [1, 'two', null, true] } };
    assert.deepEqual(accepted(event({ event_id: 'e-1', properties })), {
      user_id: 'user-1',
      activity_type: 'page_view',
      timestamp: NOW,
      event_id: 'e-1',
      properties,
    });
  });

  test('strings with valid surrogate pairs (emoji) and other Unicode are accepted', () => {
    const got = accepted(
      event({ user_id: 'ü-😀', activity_type: 'klick_ß', properties: { '😀': 'ok 😀' } }),
    );
    assert.equal(got.user_id, 'ü-😀');
    assert.deepEqual(got.properties, { '😀': 'ok 😀' });
  });

  test('an empty properties object is accepted', () => {
    assert.deepEqual(accepted(event({ properties: {} })).properties, {});
  });
});

describe('validateEvent: limits count characters, not UTF-16 units', () => {
  test('64 emoji make a valid activity_type of 64 characters; 65 are too long', () => {
    const emoji = '\u{1F600}';
    assert.equal(accepted(event({ activity_type: emoji.repeat(64) })).activity_type.length, 128);
    rejected(event({ activity_type: emoji.repeat(65) }), 'too_long', 'activity_type');
  });

  test('an explicit null event_id is a type error, not a missing required field', () => {
    rejected(event({ event_id: null }), 'invalid_type', 'event_id');
  });
});

describe('validateEvent: rejected events', () => {
  test('not_an_object: arrays, null, strings, numbers and booleans', () => {
    for (const input of [[], [event()], null, undefined, 'event', 42, true]) {
      rejected(input, 'not_an_object');
    }
  });

  test('unknown_field names the offending field', () => {
    rejected(event({ userId: 'x' }), 'unknown_field', 'userId');
    rejected(event({ '': 1 }), 'unknown_field', '');
  });

  test('unknown_field catches a __proto__ key from JSON.parse', () => {
    const input: unknown = JSON.parse(
      '{"user_id":"u","activity_type":"click","__proto__":{"is_admin":true}}',
    );
    rejected(input, 'unknown_field', '__proto__');
  });

  test('missing_field when user_id or activity_type is absent or null', () => {
    rejected({ activity_type: 'click' }, 'missing_field', 'user_id');
    rejected(event({ user_id: null }), 'missing_field', 'user_id');
    rejected({ user_id: 'u' }, 'missing_field', 'activity_type');
    rejected(event({ activity_type: null }), 'missing_field', 'activity_type');
  });

  test('missing_field for a missing timestamp only when one is required', () => {
    const { timestamp: _omitted, ...withoutTimestamp } = event();
    const strict = { ...OPTIONS, requireTimestamp: true };
    rejected(withoutTimestamp, 'missing_field', 'timestamp', strict);
    rejected(event({ timestamp: null }), 'missing_field', 'timestamp', strict);
    assert.equal(accepted(event(), strict).timestamp, NOW);
  });

  test('invalid_type for wrongly typed fields', () => {
    rejected(event({ user_id: true }), 'invalid_type', 'user_id');
    rejected(event({ user_id: { id: 1 } }), 'invalid_type', 'user_id');
    rejected(event({ user_id: -1 }), 'invalid_type', 'user_id');
    rejected(event({ user_id: 1.5 }), 'invalid_type', 'user_id');
    rejected(event({ user_id: Number.MAX_SAFE_INTEGER + 1 }), 'invalid_type', 'user_id');
    rejected(event({ user_id: Number.NaN }), 'invalid_type', 'user_id');
    rejected(event({ activity_type: 7 }), 'invalid_type', 'activity_type');
    rejected(event({ event_id: 7 }), 'invalid_type', 'event_id');
    rejected(event({ properties: [] }), 'invalid_type', 'properties');
    rejected(event({ properties: 'a=b' }), 'invalid_type', 'properties');
    rejected(event({ properties: null }), 'invalid_type', 'properties');
  });

  test('empty_string for empty user_id, activity_type and event_id', () => {
    rejected(event({ user_id: '' }), 'empty_string', 'user_id');
    rejected(event({ activity_type: '' }), 'empty_string', 'activity_type');
    rejected(event({ event_id: '' }), 'empty_string', 'event_id');
  });

  test('too_long one character past each limit, while the limit itself passes', () => {
    const limits = [
      ['user_id', EVENT_LIMITS.userIdMaxChars],
      ['activity_type', EVENT_LIMITS.activityTypeMaxChars],
      ['event_id', EVENT_LIMITS.eventIdMaxChars],
    ] as const;
    for (const [field, max] of limits) {
      const atLimit = accepted(event({ [field]: 'x'.repeat(max) }));
      assert.equal(atLimit[field], 'x'.repeat(max));
      rejected(event({ [field]: 'x'.repeat(max + 1) }), 'too_long', field);
    }
  });

  test('invalid_string for NUL and lone surrogates in user_id, activity_type and event_id', () => {
    for (const field of ['user_id', 'activity_type', 'event_id']) {
      for (const bad of [
        `a${NUL}b`,
        NUL,
        `a${LONE_HIGH}`,
        `${LONE_LOW}b`,
        `${LONE_LOW}${LONE_HIGH}`,
      ]) {
        rejected(event({ [field]: bad }), 'invalid_string', field);
      }
    }
  });

  test('invalid_string for NUL and lone surrogates in properties keys and values, at any depth', () => {
    const bads: unknown[] = [
      { [`k${NUL}`]: 1 },
      { [LONE_HIGH]: 1 },
      { k: `v${NUL}` },
      { k: LONE_LOW },
      { a: { b: { [`c${LONE_HIGH}`]: true } } },
      { a: [1, 'ok', [`x${NUL}`]] },
    ];
    for (const properties of bads) {
      rejected(event({ properties }), 'invalid_string', 'properties');
    }
  });

  test('lone surrogates arriving as JSON escapes are caught too', () => {
    const result = decodeEvent('{"user_id":"u\\ud800","activity_type":"click"}', OPTIONS);
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.code, 'invalid_string');
  });

  test('invalid_timestamp for impossible dates and times', () => {
    for (const timestamp of [
      '2024-02-30T00:00:00Z',
      '2023-02-29T00:00:00Z',
      '2024-04-31T00:00:00Z',
      '2024-13-01T00:00:00Z',
      '2024-00-10T00:00:00Z',
      '2024-05-00T00:00:00Z',
      '2024-05-01T24:00:00Z',
      '2024-05-01T12:60:00Z',
      '2024-05-01T12:00:60Z',
      '2024-05-01T12:00:00+24:00',
      '2024-05-01T12:00:00+02:60',
    ]) {
      rejected(event({ timestamp }), 'invalid_timestamp', 'timestamp', {
        nowMs: NOW,
        maxAgeMs: null,
      });
    }
  });

  test('invalid_timestamp for RFC 3339 without a zone offset, and other formats', () => {
    for (const timestamp of [
      '2024-05-01T12:00:00',
      '2024-05-01T12:00:00.123',
      '2024-05-01',
      '2024-05-01T12:00Z',
      '2024-05-01T12:00:00+0200',
      '2024-05-01T12:00:00.Z',
      '2024-05-01T12:00:00.1234567890Z',
      'Wed, 01 May 2024 12:00:00 GMT',
      '1714564800000',
      ' 2024-05-01T12:00:00Z',
      '',
    ]) {
      rejected(event({ timestamp }), 'invalid_timestamp', 'timestamp');
    }
  });

  test('invalid_timestamp for negative, fractional, non-finite and non-number values', () => {
    for (const timestamp of [
      -1,
      1.5,
      NOW + 0.5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      true,
      {},
      [],
    ]) {
      rejected(event({ timestamp }), 'invalid_timestamp', 'timestamp', {
        nowMs: NOW,
        maxAgeMs: null,
      });
    }
  });

  test('invalid_timestamp for RFC 3339 instants before the epoch, like negative numbers', () => {
    const noAgeLimit = { nowMs: NOW, maxAgeMs: null };
    rejected(
      event({ timestamp: '1969-12-31T23:59:59Z' }),
      'invalid_timestamp',
      'timestamp',
      noAgeLimit,
    );
    rejected(
      event({ timestamp: '1970-01-01T01:00:00+02:00' }),
      'invalid_timestamp',
      'timestamp',
      noAgeLimit,
    );
    // Date.UTC maps the years 0-99 to 1900-1999; none of them is a valid event time anyway.
    rejected(
      event({ timestamp: '0050-01-01T00:00:00Z' }),
      'invalid_timestamp',
      'timestamp',
      noAgeLimit,
    );
    assert.equal(accepted(event({ timestamp: '1970-01-01T00:00:00Z' }), noAgeLimit).timestamp, 0);
  });

  test('timestamp_in_future just past 5 minutes ahead, while exactly 5 minutes passes', () => {
    const limit = NOW + EVENT_LIMITS.maxFutureMs;
    assert.equal(EVENT_LIMITS.maxFutureMs, 5 * 60_000);
    assert.equal(accepted(event({ timestamp: limit })).timestamp, limit);
    assert.equal(accepted(event({ timestamp: '2024-05-01T12:05:00Z' })).timestamp, limit);
    rejected(event({ timestamp: limit + 1 }), 'timestamp_in_future', 'timestamp');
    rejected(event({ timestamp: '2024-05-01T12:05:00.001Z' }), 'timestamp_in_future', 'timestamp');
    rejected(event({ timestamp: '2024-05-01T14:05:01+02:00' }), 'timestamp_in_future', 'timestamp');
  });

  test('timestamp_too_old just past maxAgeMs, while exactly maxAgeMs passes', () => {
    const options = { nowMs: NOW, maxAgeMs: 3600_000 };
    assert.equal(accepted(event({ timestamp: NOW - 3600_000 }), options).timestamp, NOW - 3600_000);
    rejected(event({ timestamp: NOW - 3600_001 }), 'timestamp_too_old', 'timestamp', options);
    rejected(
      event({ timestamp: '2024-05-01T10:59:59Z' }),
      'timestamp_too_old',
      'timestamp',
      options,
    );
  });

  test('maxAgeMs null accepts arbitrarily old timestamps (the aggregator decides lateness)', () => {
    const options = { nowMs: NOW, maxAgeMs: null };
    assert.equal(accepted(event({ timestamp: 1 }), options).timestamp, 1);
    assert.equal(
      accepted(event({ timestamp: '2001-09-09T01:46:40Z' }), options).timestamp,
      1_000_000_000_000,
    );
  });

  test('properties_too_large one byte past the limit, counting UTF-8 bytes', () => {
    // {"k":"..."} is 8 bytes of JSON around the value.
    const fits = { k: 'x'.repeat(EVENT_LIMITS.propertiesMaxBytes - 8) };
    assert.equal(Buffer.byteLength(JSON.stringify(fits)), EVENT_LIMITS.propertiesMaxBytes);
    assert.deepEqual(accepted(event({ properties: fits })).properties, fits);
    rejected(
      event({ properties: { k: 'x'.repeat(EVENT_LIMITS.propertiesMaxBytes - 7) } }),
      'properties_too_large',
      'properties',
    );
    // Half as many characters, but two bytes each.
    rejected(
      event({ properties: { k: 'é'.repeat(EVENT_LIMITS.propertiesMaxBytes / 2) } }),
      'properties_too_large',
      'properties',
    );
  });

  test('properties_too_deep one level past the limit, while the limit itself passes', () => {
    const max = EVENT_LIMITS.propertiesMaxDepth;
    assert.deepEqual(
      accepted(event({ properties: nestedObjects(max) })).properties,
      nestedObjects(max),
    );
    rejected(event({ properties: nestedObjects(max + 1) }), 'properties_too_deep', 'properties');
  });

  test('arrays inside properties count as nesting levels', () => {
    const max = EVENT_LIMITS.propertiesMaxDepth;
    // The properties object is level 1; each array adds one.
    accepted(event({ properties: { a: nestedArrays(max - 1) } }));
    rejected(event({ properties: { a: nestedArrays(max) } }), 'properties_too_deep', 'properties');
    // Mixed objects and arrays.
    accepted(event({ properties: { a: [{ b: [{ c: [{}] }] }] } }));
  });

  test('very deep properties are rejected without exhausting the stack', () => {
    rejected(event({ properties: nestedObjects(100_000) }), 'properties_too_deep', 'properties');
  });

  test('fields are checked in a fixed order: the first problem is reported', () => {
    rejected({ user_id: '', activity_type: 7, extra: 1 }, 'unknown_field', 'extra');
    rejected({ user_id: '', activity_type: 7 }, 'empty_string', 'user_id');
    rejected({ user_id: 'u', activity_type: 7, timestamp: 'x' }, 'invalid_type', 'activity_type');
  });
});

describe('decodeEvent and encodeEvent', () => {
  test('invalid JSON is an invalid_type outcome, not an exception', () => {
    for (const text of ['', '{', '{"user_id":', 'undefined', "{'a':1}", '\u0000']) {
      const result = decodeEvent(text, OPTIONS);
      assert.equal(result.ok, false);
      assert.equal(!result.ok && result.code, 'invalid_type');
    }
  });

  test('valid JSON that is not an object is not_an_object', () => {
    const result = decodeEvent('[1,2]', OPTIONS);
    assert.equal(!result.ok && result.code, 'not_an_object');
  });

  test('a validated event survives encode and decode unchanged', () => {
    const original = accepted(
      event({
        user_id: 12345,
        timestamp: '2024-05-01T13:59:30.250+02:00',
        event_id: 'evt-😀',
        properties: { path: '/a?b=c', n: 1.5, tags: ['x', { y: null }] },
      }),
    );
    const wire = encodeEvent(original);
    assert.deepEqual(JSON.parse(wire), original);
    assert.deepEqual(decodeEvent(wire, { nowMs: NOW, maxAgeMs: null, requireTimestamp: true }), {
      ok: true,
      event: original,
    });
  });
});

describe('hasForbiddenCharacters', () => {
  test('finds NUL and lone surrogates, not valid surrogate pairs', () => {
    assert.equal(hasForbiddenCharacters('plain'), false);
    assert.equal(hasForbiddenCharacters('😀'), false);
    assert.equal(hasForbiddenCharacters(NUL), true);
    assert.equal(hasForbiddenCharacters(`😀${LONE_HIGH}`), true);
    assert.equal(hasForbiddenCharacters(`${LONE_LOW}😀`), true);
  });
});

describe('validateEvent on random input', () => {
  const KNOWN_CODES: ReadonlySet<string> = new Set(EVENT_REJECT_CODES);

  test('never throws, and returns a well-formed event or a known reject code', () => {
    const random = seededRandom(0x5eed);
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 5000; i++) {
      const input = randomEventLike(random);
      const options: ValidationOptions = {
        nowMs: NOW,
        maxAgeMs: random() < 0.5 ? null : Math.floor(random() * 60 * DAY_MS),
        requireTimestamp: random() < 0.3,
      };
      let result: EventValidation;
      try {
        result = validateEvent(input, options);
      } catch (err) {
        assert.fail(`threw on input #${i} ${safeJson(input)}: ${String(err)}`);
      }
      const key = result.ok ? 'ok' : result.code;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (result.ok) {
        assertWellFormed(result.event, options, `input #${i} ${safeJson(input)}`);
      } else {
        assert.ok(KNOWN_CODES.has(result.code), `unknown code ${result.code}`);
        assert.equal(typeof result.message, 'string');
        assert.ok(result.message.length > 0);
        if (result.field !== undefined) assert.equal(typeof result.field, 'string');
      }
    }
    // The generator must actually reach both outcomes, or the loop proves nothing.
    assert.ok((outcomes.get('ok') ?? 0) > 200, `too few accepted: ${safeJson([...outcomes])}`);
    assert.ok(outcomes.size >= 8, `too few distinct outcomes: ${safeJson([...outcomes])}`);
  });
});

function assertWellFormed(event: ActivityEvent, options: ValidationOptions, what: string): void {
  for (const key of Object.keys(event)) {
    assert.ok((EVENT_FIELDS as readonly string[]).includes(key), `${what}: key ${key}`);
  }
  for (const [field, max] of [
    ['user_id', EVENT_LIMITS.userIdMaxChars],
    ['activity_type', EVENT_LIMITS.activityTypeMaxChars],
  ] as const) {
    const value = event[field];
    assert.equal(typeof value, 'string', what);
    assert.ok(value.length > 0 && [...value].length <= max, what);
    assert.equal(hasForbiddenCharacters(value), false, what);
  }
  if (event.event_id !== undefined) {
    assert.ok(
      event.event_id.length > 0 && [...event.event_id].length <= EVENT_LIMITS.eventIdMaxChars,
    );
    assert.equal(hasForbiddenCharacters(event.event_id), false, what);
  }
  assert.ok(Number.isSafeInteger(event.timestamp) && event.timestamp >= 0, what);
  assert.ok(event.timestamp <= options.nowMs + EVENT_LIMITS.maxFutureMs, what);
  if (options.maxAgeMs !== null) {
    assert.ok(event.timestamp >= options.nowMs - options.maxAgeMs, what);
  }
  if (event.properties !== undefined) {
    assert.equal(typeof event.properties, 'object', what);
    assert.ok(!Array.isArray(event.properties), what);
    assert.ok(
      Buffer.byteLength(JSON.stringify(event.properties)) <= EVENT_LIMITS.propertiesMaxBytes,
      what,
    );
  }
  // What ingest accepts, the aggregator must accept too: the wire form decodes to the same event
  // (as JSON sees it: the random inputs may hold values like NaN that JSON.parse never yields).
  const wire = encodeEvent(event);
  assert.deepEqual(
    decodeEvent(wire, { ...options, maxAgeMs: null, requireTimestamp: true }),
    { ok: true, event: JSON.parse(wire) },
    `${what}: round trip`,
  );
}

function nestedObjects(depth: number): Record<string, unknown> {
  let value: Record<string, unknown> = { leaf: 'x' };
  for (let level = 1; level < depth; level++) value = { child: value };
  return value;
}

function nestedArrays(depth: number): unknown[] {
  let value: unknown[] = [1];
  for (let level = 1; level < depth; level++) value = [value];
  return value;
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value)?.slice(0, 300) ?? String(value);
  } catch {
    return String(value);
  }
}

type Random = () => number;

const pick = <T>(random: Random, items: readonly T[]): T =>
  items[Math.floor(random() * items.length)] as T;

const int = (random: Random, min: number, max: number): number =>
  min + Math.floor(random() * (max - min + 1));

function randomString(random: Random): string {
  const alphabet = ['a', 'Z', '0', ' ', '-', 'é', '😀', NUL, LONE_HIGH, LONE_LOW, '"', '\\'];
  const length = pick(random, [0, 1, 2, 5, 20, 63, 64, 65, 128, 129]);
  let out = '';
  // Mostly plain characters, so that valid strings are common.
  for (let i = 0; i < length; i++) out += random() < 0.97 ? 'u' : pick(random, alphabet);
  return out;
}

function randomNumber(random: Random): number {
  return pick(random, [
    0,
    -1,
    1.5,
    NOW,
    NOW - int(random, 0, 90) * DAY_MS,
    NOW + int(random, -600_000, 600_000),
    Number.MAX_SAFE_INTEGER,
    Number.MAX_SAFE_INTEGER + 2,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    int(random, 0, 1_000_000),
  ]);
}

function randomTimestampString(random: Random): string {
  const pad = (n: number, width = 2) => String(n).padStart(width, '0');
  const year = pick(random, [0, 50, 1969, 1970, 2023, 2024, 2024, 2024, 9999]);
  const month = int(random, 0, 13);
  const day = int(random, 0, 32);
  const time = `${pad(int(random, 0, 24))}:${pad(int(random, 0, 60))}:${pad(int(random, 0, 60))}`;
  const fraction = pick(random, ['', '.5', '.123', '.123456789', '.']);
  const zone = pick(random, ['Z', 'z', '+02:00', '-05:30', '+24:00', '', '+0200']);
  return `${pad(year, 4)}-${pad(month)}-${pad(day)}T${time}${fraction}${zone}`;
}

function randomJson(random: Random, depth: number): unknown {
  const roll = random();
  if (depth > 10 || roll < 0.3) return pick(random, [null, true, false, 0, -2.5, 'v']);
  if (roll < 0.5) return randomString(random);
  if (roll < 0.6) return randomNumber(random);
  if (roll < 0.8) {
    return Array.from({ length: int(random, 0, 3) }, () => randomJson(random, depth + 1));
  }
  const object: Record<string, unknown> = {};
  const keys = int(random, 0, 4);
  for (let i = 0; i < keys; i++) {
    object[random() < 0.9 ? `k${i}` : randomString(random)] = randomJson(random, depth + 1);
  }
  if (random() < 0.02) object.big = 'x'.repeat(9000);
  return object;
}

/** Mostly event-shaped objects with random field values, sometimes anything at all. */
function randomEventLike(random: Random): unknown {
  if (random() < 0.1) return randomJson(random, 0);
  const input: Record<string, unknown> = {};
  if (random() < 0.9) {
    input.user_id = pick(random, [
      () => randomString(random),
      () => randomNumber(random),
      () => 'user-7',
      () => randomJson(random, 5),
    ])();
  }
  if (random() < 0.9) {
    input.activity_type = pick(random, [
      () => 'page_view',
      () => 'click',
      () => randomString(random),
      () => randomJson(random, 5),
    ])();
  }
  if (random() < 0.8) {
    input.timestamp = pick(random, [
      () => randomTimestampString(random),
      () => randomNumber(random),
      () => null,
      () => randomJson(random, 5),
    ])();
  }
  if (random() < 0.3)
    input.event_id = random() < 0.7 ? `e-${int(random, 0, 999)}` : randomString(random);
  if (random() < 0.4) input.properties = random() < 0.8 ? randomJson(random, 0) : {};
  if (random() < 0.03) {
    // defineProperty, because assigning to __proto__ would set the prototype instead.
    Object.defineProperty(input, pick(random, ['extra', '__proto__', 'userId']), {
      value: 1,
      enumerable: true,
    });
  }
  return input;
}

describe('validateEvent: the fields ingest stamps on a record', () => {
  const RECORD: ValidationOptions = { ...OPTIONS, record: true };

  test('a client may not send site or time_zone', () => {
    rejected(event({ site: 'shop' }), 'unknown_field', 'site');
    rejected(event({ time_zone: 'UTC' }), 'unknown_field', 'time_zone');
  });

  test('a record keeps its site and time zone; a record without them has none', () => {
    const stamped = accepted(event({ site: 'shop-2.eu', time_zone: 'Asia/Kathmandu' }), RECORD);
    assert.equal(stamped.site, 'shop-2.eu');
    assert.equal(stamped.time_zone, 'Asia/Kathmandu');
    const plain = accepted(event(), RECORD);
    assert.equal(plain.site, undefined);
    assert.equal(plain.time_zone, undefined);
  });

  test('a record with a malformed site or an unknown time zone is invalid', () => {
    for (const site of ['', 'Shop', '-shop', 'a/b', 'x'.repeat(64), 7]) {
      rejected(event({ site }), 'invalid_string', 'site', RECORD);
    }
    for (const zone of ['', 'Mars/Olympus', 'Europe/', 42]) {
      rejected(event({ time_zone: zone }), 'invalid_string', 'time_zone', RECORD);
    }
  });
});
