/** One item of a batch: a decoded JSON value, or the reason it could not be decoded. */
export type BatchItem = { ok: true; value: unknown } | { ok: false; code: 'invalid_json' };

export type BatchOutcome =
  | { ok: true; items: BatchItem[] }
  | { ok: false; status: 400 | 413; code: string; message: string };

/**
 * Splits a batch body into items: a JSON array, or NDJSON (one JSON value per line; blank lines
 * are skipped). In NDJSON a line that is not JSON is one rejected item, not a rejected batch.
 */
export function parseBatch(text: string, mediaType: string, maxEvents: number): BatchOutcome {
  if (mediaType === 'application/x-ndjson') {
    const lines = text.split('\n').filter((line) => line.trim().length > 0);
    if (lines.length > maxEvents) return tooMany(maxEvents);
    if (lines.length === 0) return empty();
    return {
      ok: true,
      items: lines.map((line) => {
        try {
          return { ok: true, value: JSON.parse(line) as unknown };
        } catch {
          return { ok: false, code: 'invalid_json' };
        }
      }),
    };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, status: 400, code: 'invalid_json', message: 'the body is not valid JSON' };
  }
  if (!Array.isArray(value)) {
    return {
      ok: false,
      status: 400,
      code: 'not_an_array',
      message:
        'a batch is a JSON array of events (or NDJSON with Content-Type application/x-ndjson)',
    };
  }
  if (value.length > maxEvents) return tooMany(maxEvents);
  if (value.length === 0) return empty();
  return { ok: true, items: value.map((item: unknown) => ({ ok: true, value: item })) };
}

function tooMany(maxEvents: number): BatchOutcome {
  return {
    ok: false,
    status: 413,
    code: 'too_many_events',
    message: `a batch holds at most ${maxEvents} events`,
  };
}

function empty(): BatchOutcome {
  return { ok: false, status: 400, code: 'empty_batch', message: 'the batch holds no events' };
}
