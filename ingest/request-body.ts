import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import type { Slots } from './load-bounds.js';

const gunzipAsync = promisify(gunzip);
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export type BodyOutcome =
  | { ok: true; text: string }
  | { ok: false; status: 400 | 413 | 503; code: string; message: string };

export type MediaTypeOutcome =
  | { ok: true; mediaType: string }
  | { ok: false; status: 415; code: string; message: string };

/**
 * Checks the declared media type, charset and encoding: decidable from the headers, so it is one
 * of the gates answered before the body is read.
 */
export function checkMediaType(
  headers: Record<string, string>,
  mediaTypes: ReadonlySet<string>,
): MediaTypeOutcome {
  const [type = '', ...params] = (headers['content-type'] ?? '').split(';');
  const mediaType = type.trim().toLowerCase();
  if (!mediaTypes.has(mediaType)) {
    return {
      ok: false,
      status: 415,
      code: 'unsupported_media_type',
      message: `Content-Type must be one of ${[...mediaTypes].join(', ')}`,
    };
  }
  const charset = params
    .map((param) => param.trim().toLowerCase())
    .find((param) => param.startsWith('charset='));
  if (charset !== undefined && !['charset=utf-8', 'charset="utf-8"'].includes(charset)) {
    return {
      ok: false,
      status: 415,
      code: 'unsupported_charset',
      message: 'the body must be UTF-8',
    };
  }
  const encoding = contentEncoding(headers);
  if (encoding !== 'gzip' && encoding !== 'identity') {
    return {
      ok: false,
      status: 415,
      code: 'unsupported_encoding',
      message: 'Content-Encoding must be gzip or identity',
    };
  }
  return { ok: true, mediaType };
}

function contentEncoding(headers: Record<string, string>): 'gzip' | 'identity' | 'other' {
  const encoding = (headers['content-encoding'] ?? '').trim().toLowerCase();
  if (encoding === 'gzip' || encoding === 'x-gzip') return 'gzip';
  return encoding === '' || encoding === 'identity' ? 'identity' : 'other';
}

/**
 * Decodes a body whose headers passed `checkMediaType` to text: `Content-Encoding: gzip` is
 * inflated with a cap on the inflated size (a small gzip bomb never becomes a large buffer) and
 * only while one of `inflateSlots` is free (inflating runs on libuv's thread pool, and each
 * inflation may hold up to the cap: past the slots, 503 `overloaded`); the result must be valid
 * UTF-8.
 */
export async function decodeBody(
  body: Buffer,
  headers: Record<string, string>,
  options: { maxDecompressedBytes: number; inflateSlots: Slots },
): Promise<BodyOutcome> {
  let bytes = body;
  if (contentEncoding(headers) === 'gzip') {
    const release = options.inflateSlots.tryAcquire();
    if (release === undefined) {
      return {
        ok: false,
        status: 503,
        code: 'overloaded',
        message:
          'the server is inflating as many bodies as it takes at once; nothing was stored: retry',
      };
    }
    try {
      bytes = await gunzipAsync(bytes, { maxOutputLength: options.maxDecompressedBytes });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
        return {
          ok: false,
          status: 413,
          code: 'body_too_large',
          message: `the decompressed body is larger than ${options.maxDecompressedBytes} bytes`,
        };
      }
      return {
        ok: false,
        status: 400,
        code: 'invalid_gzip',
        message: 'the body is not valid gzip',
      };
    } finally {
      release();
    }
  }

  try {
    return { ok: true, text: strictUtf8.decode(bytes) };
  } catch {
    return { ok: false, status: 400, code: 'invalid_utf8', message: 'the body is not valid UTF-8' };
  }
}
