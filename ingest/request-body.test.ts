import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { Slots } from './load-bounds.js';
import { checkMediaType, decodeBody } from './request-body.js';

const TYPES: ReadonlySet<string> = new Set(['application/json', 'text/plain']);
const EVENT = '{"user_id":"u1","activity_type":"page_view"}';

type Outcome =
  | { ok: true; text: string; mediaType: string }
  | { ok: false; status: number; code: string; message: string };

/** The header gate, then the body, as the request handler runs them. */
async function decode(
  body: Buffer | string,
  headers: Record<string, string>,
  maxDecompressedBytes = 4096,
  inflateSlots = new Slots(4),
): Promise<Outcome> {
  const head = checkMediaType(headers, TYPES);
  if (!head.ok) return head;
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const outcome = await decodeBody(bytes, headers, { maxDecompressedBytes, inflateSlots });
  return outcome.ok ? { ...outcome, mediaType: head.mediaType } : outcome;
}

/** The refusal's status and code, for outcomes that must be refusals. */
function refused(outcome: Outcome): { status: number; code: string } {
  assert.ok(!outcome.ok, JSON.stringify(outcome));
  assert.equal(typeof outcome.message, 'string');
  return { status: outcome.status, code: outcome.code };
}

describe('decodeBody: media types', () => {
  test('an accepted type gives the text and the normalised media type', async () => {
    assert.deepEqual(await decode(EVENT, { 'content-type': 'application/json' }), {
      ok: true,
      text: EVENT,
      mediaType: 'application/json',
    });
    assert.deepEqual(await decode(EVENT, { 'content-type': 'text/plain' }), {
      ok: true,
      text: EVENT,
      mediaType: 'text/plain',
    });
  });

  test('the media type is case-insensitive and blanks around it are ignored', async () => {
    const outcome = await decode(EVENT, { 'content-type': '  Application/JSON ; charset=utf-8' });
    assert.ok(outcome.ok);
    assert.equal(outcome.mediaType, 'application/json');
  });

  test('a missing, empty or other content type is 415 unsupported_media_type', async () => {
    const cases: Array<Record<string, string>> = [
      {},
      { 'content-type': '' },
      { 'content-type': 'application/x-www-form-urlencoded' },
      { 'content-type': 'application/jsonx' },
      { 'content-type': 'application/x-ndjson' },
      { 'content-type': 'multipart/form-data; boundary=x' },
      { 'content-type': 'json' },
    ];
    for (const headers of cases) {
      assert.deepEqual(
        refused(await decode(EVENT, headers)),
        { status: 415, code: 'unsupported_media_type' },
        JSON.stringify(headers),
      );
    }
  });

  test('the accepted set is the caller’s', async () => {
    const outcome = checkMediaType(
      { 'content-type': 'application/x-ndjson' },
      new Set(['application/x-ndjson']),
    );
    assert.ok(outcome.ok);
    assert.equal(outcome.mediaType, 'application/x-ndjson');
  });
});

describe('decodeBody: charset', () => {
  test('UTF-8, in any case and quoted, is accepted', async () => {
    for (const type of [
      'application/json; charset=utf-8',
      'application/json; charset=UTF-8',
      'application/json;charset="utf-8"',
      'text/plain; format=flowed; charset=utf-8',
    ]) {
      assert.ok((await decode(EVENT, { 'content-type': type })).ok, type);
    }
  });

  test('any other charset is 415 unsupported_charset', async () => {
    for (const type of [
      'application/json; charset=iso-8859-1',
      'application/json; charset=utf-16',
      'text/plain; charset=us-ascii',
      'application/json; charset=',
    ]) {
      assert.deepEqual(
        refused(await decode(EVENT, { 'content-type': type })),
        { status: 415, code: 'unsupported_charset' },
        type,
      );
    }
  });
});

describe('decodeBody: Content-Encoding', () => {
  test('gzip is inflated; x-gzip and any case work too', async () => {
    for (const encoding of ['gzip', 'x-gzip', 'GZIP', ' gzip ']) {
      assert.deepEqual(
        await decode(gzipSync(EVENT), {
          'content-type': 'application/json',
          'content-encoding': encoding,
        }),
        { ok: true, text: EVENT, mediaType: 'application/json' },
        encoding,
      );
    }
  });

  test('identity and an empty encoding mean no encoding', async () => {
    for (const encoding of ['identity', '', 'Identity']) {
      const outcome = await decode(EVENT, {
        'content-type': 'application/json',
        'content-encoding': encoding,
      });
      assert.ok(outcome.ok, encoding);
      assert.equal(outcome.text, EVENT);
    }
  });

  test('a body that is not gzip, truncated gzip or an empty body is 400 invalid_gzip', async () => {
    const whole = gzipSync(EVENT);
    for (const body of [Buffer.from(EVENT), whole.subarray(0, whole.length - 6), Buffer.alloc(0)]) {
      assert.deepEqual(
        refused(
          await decode(body, { 'content-type': 'application/json', 'content-encoding': 'gzip' }),
        ),
        { status: 400, code: 'invalid_gzip' },
      );
    }
  });

  test('gzip inflating past maxDecompressedBytes is 413 body_too_large; exactly it passes', async () => {
    const headers = { 'content-type': 'text/plain', 'content-encoding': 'gzip' };
    const atLimit = await decode(gzipSync(Buffer.alloc(2048, 'a')), headers, 2048);
    assert.ok(atLimit.ok);
    assert.equal(atLimit.text.length, 2048);
    assert.deepEqual(refused(await decode(gzipSync(Buffer.alloc(2049, 'a')), headers, 2048)), {
      status: 413,
      code: 'body_too_large',
    });
    // A small bomb: 8 MiB of zeros compress to a few KiB and must never be inflated whole.
    const bomb = gzipSync(Buffer.alloc(8 * 1_048_576));
    assert.ok(bomb.length < 16_384);
    assert.deepEqual(refused(await decode(bomb, headers, 2048)), {
      status: 413,
      code: 'body_too_large',
    });
  });

  test('other encodings, and stacked ones, are 415 unsupported_encoding', async () => {
    for (const encoding of ['br', 'deflate', 'compress', 'zstd', 'gzip, gzip', 'gzip;q=1', 'x']) {
      assert.deepEqual(
        refused(
          await decode(EVENT, { 'content-type': 'application/json', 'content-encoding': encoding }),
        ),
        { status: 415, code: 'unsupported_encoding' },
        encoding,
      );
    }
  });

  test('the media type is checked before the encoding', async () => {
    assert.deepEqual(
      refused(await decode(EVENT, { 'content-type': 'text/html', 'content-encoding': 'br' })),
      { status: 415, code: 'unsupported_media_type' },
    );
  });
});

describe('decodeBody: UTF-8', () => {
  test('multi-byte UTF-8 decodes intact', async () => {
    const text = '{"user_id":"ü-日本-😀","activity_type":"page_view"}';
    const outcome = await decode(text, { 'content-type': 'application/json' });
    assert.ok(outcome.ok);
    assert.equal(outcome.text, text);
  });

  test('invalid UTF-8 is 400 invalid_utf8', async () => {
    for (const bytes of [
      [0xff],
      [0x7b, 0x22, 0xc3], // truncated two-byte sequence
      [0xc0, 0xaf], // overlong '/'
      [0xed, 0xa0, 0x80], // an encoded UTF-16 surrogate
      [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
    ]) {
      assert.deepEqual(
        refused(await decode(Buffer.from(bytes), { 'content-type': 'application/json' })),
        { status: 400, code: 'invalid_utf8' },
        JSON.stringify(bytes),
      );
    }
  });

  test('invalid UTF-8 inside valid gzip is still invalid_utf8', async () => {
    assert.deepEqual(
      refused(
        await decode(gzipSync(Buffer.from([0x7b, 0xff, 0x7d])), {
          'content-type': 'application/json',
          'content-encoding': 'gzip',
        }),
      ),
      { status: 400, code: 'invalid_utf8' },
    );
  });

  test('a leading UTF-8 byte-order mark is dropped', async () => {
    const outcome = await decode(
      Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(EVENT)]),
      {
        'content-type': 'application/json',
      },
    );
    assert.ok(outcome.ok);
    assert.equal(outcome.text, EVENT);
  });

  test('an empty body decodes to empty text (the JSON parser rejects it later)', async () => {
    assert.deepEqual(await decode('', { 'content-type': 'application/json' }), {
      ok: true,
      text: '',
      mediaType: 'application/json',
    });
  });
});

describe('decodeBody: bounded inflation', () => {
  test('a gzip body while every inflate slot is taken is 503 overloaded, and the slot returns', async () => {
    const slots = new Slots(1);
    const release = slots.tryAcquire();
    assert.ok(release);
    const gz = gzipSync(EVENT);
    const headers = { 'content-type': 'application/json', 'content-encoding': 'gzip' };
    assert.deepEqual(refused(await decode(gz, headers, 4096, slots)), {
      status: 503,
      code: 'overloaded',
    });
    assert.ok((await decode(EVENT, { 'content-type': 'application/json' }, 4096, slots)).ok);
    release();
    assert.ok((await decode(gz, headers, 4096, slots)).ok);
    assert.equal(slots.inUse, 0, 'the slot is given back after inflating');
    assert.equal(refused(await decode('not gzip', headers, 4096, slots)).code, 'invalid_gzip');
    assert.equal(slots.inUse, 0, 'and after a failed inflation');
  });
});
