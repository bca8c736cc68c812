/**
 * The activity event: the single source of truth for ingest (HTTP validation), the aggregator
 * (record validation), the OpenAPI document and the tests.
 *
 * Validation never throws: every input gets an outcome value, so one bad event can never stop a
 * batch.
 */

/** A validated, normalised event: what ingest produces to the topic and the aggregator reads. */
export interface ActivityEvent {
  user_id: string;
  activity_type: string;
  /** Event time, epoch milliseconds (UTC). */
  timestamp: number;
  event_id?: string;
  properties?: Record<string, unknown>;
  /**
   * The site the event belongs to, stamped by ingest from the write key (never sent by a
   * client). A record without one belongs to `DEFAULT_SITE`.
   */
  site?: string;
  /** The site's IANA time zone, stamped by ingest with `site`: its hour and day rollups follow it. */
  time_zone?: string;
}

/** The activity type counted as a page view. */
export const PAGE_VIEW = 'page_view';

export const EVENT_LIMITS = {
  userIdMaxChars: 128,
  activityTypeMaxChars: 64,
  eventIdMaxChars: 64,
  /** Size of `properties` serialised as JSON, in UTF-8 bytes. */
  propertiesMaxBytes: 8192,
  /** Nesting depth of `properties`: the object itself is depth 1. */
  propertiesMaxDepth: 8,
  /** How far in the future an event's timestamp may be (clock skew allowance). */
  maxFutureMs: 5 * 60_000,
} as const;

/** The site of events sent without a write key, or with a key that names no site. */
export const DEFAULT_SITE = 'default';

/** A site name: lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit. */
export const SITE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** The fields a client sends. */
export const EVENT_FIELDS = [
  'user_id',
  'activity_type',
  'timestamp',
  'event_id',
  'properties',
] as const;

/** The fields ingest stamps on a record: accepted from the topic, refused from a client. */
export const RECORD_FIELDS = ['site', 'time_zone'] as const;

/** Machine-readable reasons an event is rejected (metrics start a series at 0 for each). */
export const EVENT_REJECT_CODES = [
  'not_an_object',
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
] as const;

export type EventRejectCode = (typeof EVENT_REJECT_CODES)[number];

export type EventValidation =
  | { ok: true; event: ActivityEvent }
  | { ok: false; code: EventRejectCode; field?: string; message: string };

export interface ValidationOptions {
  /** Receive time, epoch ms: fills a missing timestamp and anchors the time bounds. */
  nowMs: number;
  /** Oldest accepted event age in ms; `null` disables the check (the aggregator handles lateness). */
  maxAgeMs: number | null;
  /** When true a missing timestamp is an error instead of defaulting to `nowMs`. */
  requireTimestamp?: boolean;
  /** A record read from the topic: it may carry the fields ingest stamps (`RECORD_FIELDS`). */
  record?: boolean;
}

const KNOWN_FIELDS = new Set<string>(EVENT_FIELDS);
const KNOWN_RECORD_FIELDS = new Set<string>([...EVENT_FIELDS, ...RECORD_FIELDS]);
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|([+-])(\d{2}):(\d{2}))$/;

/** Validates and normalises one decoded JSON value. */
export function validateEvent(input: unknown, options: ValidationOptions): EventValidation {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return reject('not_an_object', undefined, 'an event must be a JSON object');
  }
  const record = input as Record<string, unknown>;
  const known = options.record === true ? KNOWN_RECORD_FIELDS : KNOWN_FIELDS;
  for (const key of Object.keys(record)) {
    if (!known.has(key)) {
      return reject(
        'unknown_field',
        key,
        `unknown field ${JSON.stringify(key)}; allowed fields: ${EVENT_FIELDS.join(', ')}`,
      );
    }
  }

  const userId = normaliseUserId(record.user_id);
  if (!userId.ok) return userId;
  const activityType = checkString(
    record.activity_type,
    'activity_type',
    EVENT_LIMITS.activityTypeMaxChars,
  );
  if (!activityType.ok) return activityType;

  const timestamp = normaliseTimestamp(record.timestamp, options);
  if (!timestamp.ok) return timestamp;

  const event: ActivityEvent = {
    user_id: userId.value,
    activity_type: activityType.value,
    timestamp: timestamp.value,
  };

  if (record.event_id === null) {
    return reject('invalid_type', 'event_id', 'event_id must be a string when present');
  }
  if (record.event_id !== undefined) {
    const eventId = checkString(record.event_id, 'event_id', EVENT_LIMITS.eventIdMaxChars);
    if (!eventId.ok) return eventId;
    event.event_id = eventId.value;
  }
  if (record.properties !== undefined) {
    const properties = checkProperties(record.properties);
    if (!properties.ok) return properties;
    event.properties = properties.value;
  }
  if (options.record === true) {
    const stamped = checkStamped(record, event);
    if (stamped !== undefined) return stamped;
  }
  return { ok: true, event };
}

/** Checks the site and time zone ingest stamped on a record, and copies them to `event`. */
function checkStamped(
  record: Record<string, unknown>,
  event: ActivityEvent,
): Extract<EventValidation, { ok: false }> | undefined {
  if (record.site !== undefined) {
    if (typeof record.site !== 'string' || !SITE_NAME.test(record.site)) {
      return reject('invalid_string', 'site', `site must match ${SITE_NAME}`);
    }
    event.site = record.site;
  }
  if (record.time_zone !== undefined) {
    if (typeof record.time_zone !== 'string' || !isTimeZone(record.time_zone)) {
      return reject('invalid_string', 'time_zone', 'time_zone must be an IANA time zone name');
    }
    event.time_zone = record.time_zone;
  }
  return undefined;
}

/** Zones checked already: a record stream names a handful, and each is checked once. */
const knownZones = new Map<string, boolean>();
const KNOWN_ZONES_MAX = 1024;

/** True when `name` is an IANA time zone this runtime knows (`Europe/Berlin`, `UTC`). */
export function isTimeZone(name: string): boolean {
  let known = knownZones.get(name);
  if (known === undefined) {
    try {
      new Intl.DateTimeFormat('en', { timeZone: name });
      known = name.length > 0 && name.length <= 64;
    } catch {
      known = false;
    }
    if (knownZones.size < KNOWN_ZONES_MAX) knownZones.set(name, known);
  }
  return known;
}

/** Parses one UTF-8 JSON record (as the aggregator receives it) and validates it. */
export function decodeEvent(text: string, options: ValidationOptions): EventValidation {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return reject('invalid_type', undefined, 'the record is not valid JSON');
  }
  return validateEvent(value, options);
}

/** The wire form of a validated event (the Kafka message value). */
export function encodeEvent(event: ActivityEvent): string {
  return JSON.stringify(event);
}

/** True when `value` contains a NUL character or a lone UTF-16 surrogate. */
export function hasForbiddenCharacters(value: string): boolean {
  return value.includes('\u0000') || /[\uD800-\uDFFF]/u.test(value);
}

type Checked<T> = { ok: true; value: T } | Extract<EventValidation, { ok: false }>;

function reject(
  code: EventRejectCode,
  field: string | undefined,
  message: string,
): Extract<EventValidation, { ok: false }> {
  return field === undefined ? { ok: false, code, message } : { ok: false, code, field, message };
}

function checkString(value: unknown, field: string, maxChars: number): Checked<string> {
  if (value === undefined || value === null) {
    return reject('missing_field', field, `${field} is required`);
  }
  if (typeof value !== 'string') return reject('invalid_type', field, `${field} must be a string`);
  if (value.length === 0) return reject('empty_string', field, `${field} must not be empty`);
  // Characters are Unicode code points (as JSON Schema's maxLength counts them): an emoji is one.
  if (value.length > maxChars && codePoints(value) > maxChars) {
    return reject('too_long', field, `${field} must be at most ${maxChars} characters`);
  }
  if (hasForbiddenCharacters(value)) {
    return reject(
      'invalid_string',
      field,
      `${field} must not contain NUL characters or lone surrogates`,
    );
  }
  return { ok: true, value };
}

function codePoints(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

function normaliseUserId(value: unknown): Checked<string> {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      return reject(
        'invalid_type',
        'user_id',
        'a numeric user_id must be a non-negative safe integer',
      );
    }
    return { ok: true, value: String(value) };
  }
  return checkString(value, 'user_id', EVENT_LIMITS.userIdMaxChars);
}

function normaliseTimestamp(value: unknown, options: ValidationOptions): Checked<number> {
  let ms: number;
  if (value === undefined || value === null) {
    if (options.requireTimestamp === true) {
      return reject('missing_field', 'timestamp', 'timestamp is required');
    }
    return { ok: true, value: options.nowMs };
  }
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      return reject(
        'invalid_timestamp',
        'timestamp',
        'a numeric timestamp must be non-negative whole epoch milliseconds',
      );
    }
    ms = value;
  } else if (typeof value === 'string') {
    const parsed = parseRfc3339(value);
    if (parsed === null) {
      return reject(
        'invalid_timestamp',
        'timestamp',
        'timestamp must be RFC 3339 with a zone offset (2024-05-01T12:00:00Z) or epoch milliseconds',
      );
    }
    // Same rule as for numbers: the wire form carries epoch ms, which the aggregator rejects
    // when negative.
    if (parsed < 0) {
      return reject('invalid_timestamp', 'timestamp', 'timestamp must not be before 1970');
    }
    ms = parsed;
  } else {
    return reject(
      'invalid_timestamp',
      'timestamp',
      'timestamp must be an RFC 3339 string or epoch milliseconds',
    );
  }
  if (ms > options.nowMs + EVENT_LIMITS.maxFutureMs) {
    return reject(
      'timestamp_in_future',
      'timestamp',
      `timestamp is more than ${EVENT_LIMITS.maxFutureMs / 60_000} minutes in the future`,
    );
  }
  if (options.maxAgeMs !== null && ms < options.nowMs - options.maxAgeMs) {
    return reject(
      'timestamp_too_old',
      'timestamp',
      `timestamp is older than the accepted ${Math.round(options.maxAgeMs / 1000)} seconds`,
    );
  }
  return { ok: true, value: ms };
}

/** Parses RFC 3339 (zone offset required) to epoch ms, or null; rejects impossible dates. */
export function parseRfc3339(text: string): number | null {
  const m = RFC3339.exec(text);
  if (m === null) return null;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const fraction = m[7] === undefined ? 0 : Math.floor(Number(`0${m[7]}`) * 1000);
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return null;
  const utc = Date.UTC(year, month - 1, day, hour, minute, second, fraction);
  const check = new Date(utc);
  if (check.getUTCDate() !== day || check.getUTCMonth() !== month - 1) return null;
  let offsetMin = 0;
  if (m[9] !== undefined) {
    const offH = Number(m[10]);
    const offM = Number(m[11]);
    if (offH > 23 || offM > 59) return null;
    offsetMin = (m[9] === '-' ? -1 : 1) * (offH * 60 + offM);
  }
  return utc - offsetMin * 60_000;
}

function checkProperties(value: unknown): Checked<Record<string, unknown>> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return reject('invalid_type', 'properties', 'properties must be a JSON object');
  }
  const depth = measure(value, 1);
  if (depth === 'invalid_string') {
    return reject(
      'invalid_string',
      'properties',
      'properties must not contain NUL characters or lone surrogates',
    );
  }
  if (depth > EVENT_LIMITS.propertiesMaxDepth) {
    return reject(
      'properties_too_deep',
      'properties',
      `properties must be nested at most ${EVENT_LIMITS.propertiesMaxDepth} levels deep`,
    );
  }
  if (Buffer.byteLength(JSON.stringify(value)) > EVENT_LIMITS.propertiesMaxBytes) {
    return reject(
      'properties_too_large',
      'properties',
      `properties must be at most ${EVENT_LIMITS.propertiesMaxBytes} bytes as JSON`,
    );
  }
  return { ok: true, value: value as Record<string, unknown> };
}

/** Depth of a JSON value, or 'invalid_string' when a key or string has forbidden characters. */
function measure(value: unknown, depth: number): number | 'invalid_string' {
  if (typeof value === 'string') return hasForbiddenCharacters(value) ? 'invalid_string' : depth;
  if (typeof value !== 'object' || value === null) return depth;
  // Stop descending past the limit: the caller only needs to know the limit was passed.
  if (depth > EVENT_LIMITS.propertiesMaxDepth) return depth;
  let deepest = depth;
  for (const [key, child] of Object.entries(value)) {
    if (hasForbiddenCharacters(key)) return 'invalid_string';
    const childDepth = measure(
      child,
      typeof child === 'object' && child !== null ? depth + 1 : depth,
    );
    if (childDepth === 'invalid_string') return childDepth;
    if (childDepth > deepest) deepest = childDepth;
  }
  return deepest;
}
