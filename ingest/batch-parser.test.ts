import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseBatch } from './batch-parser.js';

const JSON_TYPE = 'application/json';
const NDJSON = 'application/x-ndjson';

/** The decoded items of a batch that must parse. */
function items(text: string, mediaType: string, maxEvents = 100) {
  const outcome = parseBatch(text, mediaType, maxEvents);
  assert.ok(outcome.ok, JSON.stringify(outcome));
  return outcome.items;
}

/** The refusal of a batch that must not parse. */
function refusal(text: string, mediaType: string, maxEvents = 100) {
  const outcome = parseBatch(text, mediaType, maxEvents);
  assert.ok(!outcome.ok, JSON.stringify(outcome));
  return { status: outcome.status, code: outcome.code };
}

describe('parseBatch: JSON array', () => {
  test('each element is one item, in order, whatever its type', () => {
    assert.deepEqual(items('[{"user_id":"u1"}, 2, "x", null, [1]]', JSON_TYPE), [
      { ok: true, value: { user_id: 'u1' } },
      { ok: true, value: 2 },
      { ok: true, value: 'x' },
      { ok: true, value: null },
      { ok: true, value: [1] },
    ]);
  });

  test('text/plain is read as a JSON array too', () => {
    assert.deepEqual(items('[{"a":1}]', 'text/plain'), [{ ok: true, value: { a: 1 } }]);
  });

  test('a body that is not JSON is invalid_json (400)', () => {
    assert.deepEqual(refusal('[{"a":1},', JSON_TYPE), { status: 400, code: 'invalid_json' });
    assert.deepEqual(refusal('', JSON_TYPE), { status: 400, code: 'invalid_json' });
  });

  test('a JSON value other than an array is not_an_array (400)', () => {
    for (const body of ['{"user_id":"u1"}', '1', '"[]"', 'null']) {
      assert.deepEqual(refusal(body, JSON_TYPE), { status: 400, code: 'not_an_array' }, body);
    }
  });

  test('NDJSON sent as application/json is invalid_json', () => {
    assert.deepEqual(refusal('{"a":1}\n{"a":2}', JSON_TYPE), { status: 400, code: 'invalid_json' });
  });

  test('an empty array is empty_batch (400)', () => {
    assert.deepEqual(refusal('[]', JSON_TYPE), { status: 400, code: 'empty_batch' });
    assert.deepEqual(refusal(' [ ] ', JSON_TYPE), { status: 400, code: 'empty_batch' });
  });

  test('exactly the limit passes; one more is too_many_events (413)', () => {
    const body = (n: number) => JSON.stringify(Array.from({ length: n }, (_, i) => ({ i })));
    assert.equal(items(body(3), JSON_TYPE, 3).length, 3);
    assert.deepEqual(refusal(body(4), JSON_TYPE, 3), { status: 413, code: 'too_many_events' });
    assert.equal(items(body(1), JSON_TYPE, 1).length, 1);
    assert.deepEqual(refusal(body(2), JSON_TYPE, 1), { status: 413, code: 'too_many_events' });
  });
});

describe('parseBatch: NDJSON', () => {
  test('one item per line', () => {
    assert.deepEqual(items('{"a":1}\n{"a":2}\n', NDJSON), [
      { ok: true, value: { a: 1 } },
      { ok: true, value: { a: 2 } },
    ]);
  });

  test('blank and whitespace-only lines are skipped, not counted', () => {
    assert.deepEqual(items('\n\n{"a":1}\n   \n\t\n{"a":2}\n\n', NDJSON), [
      { ok: true, value: { a: 1 } },
      { ok: true, value: { a: 2 } },
    ]);
  });

  test('CRLF line endings work, including blank CRLF lines', () => {
    assert.deepEqual(items('{"a":1}\r\n\r\n{"a":2}\r\n', NDJSON), [
      { ok: true, value: { a: 1 } },
      { ok: true, value: { a: 2 } },
    ]);
  });

  test('a line that is not JSON is one invalid item; its neighbours still parse', () => {
    assert.deepEqual(items('{"a":1}\nnot json\n{"a":\n[1,2]\n', NDJSON), [
      { ok: true, value: { a: 1 } },
      { ok: false, code: 'invalid_json' },
      { ok: false, code: 'invalid_json' },
      { ok: true, value: [1, 2] },
    ]);
  });

  test('a pretty-printed object spread over lines is several invalid items', () => {
    const outcome = items('{\n  "a": 1\n}\n', NDJSON);
    assert.equal(outcome.length, 3);
    assert.ok(outcome.every((item) => !item.ok));
  });

  test('a body with no non-blank line is empty_batch (400)', () => {
    for (const body of ['', '\n', '\r\n\r\n', '  \n\t\n']) {
      assert.deepEqual(refusal(body, NDJSON), { status: 400, code: 'empty_batch' }, body);
    }
  });

  test('exactly the limit of lines passes; one more is too_many_events (413)', () => {
    const body = (n: number) =>
      Array.from({ length: n }, (_, i) => JSON.stringify({ i })).join('\n');
    assert.equal(items(body(5), NDJSON, 5).length, 5);
    assert.equal(items(`${body(5)}\n\n\n`, NDJSON, 5).length, 5, 'blank lines do not count');
    assert.deepEqual(refusal(body(6), NDJSON, 5), { status: 413, code: 'too_many_events' });
  });

  test('invalid lines count towards the limit', () => {
    assert.deepEqual(refusal('x\ny\nz', NDJSON, 2), { status: 413, code: 'too_many_events' });
  });
});
