import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import type { HttpRequest } from './http-server.js';

const gunzipAsync = promisify(gunzip);
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export type BodyOutcome =
  | { ok: true; text: string; mediaType: string }
  | { ok: false; status: 400 | 413 | 415; code: string; message: string };

/**
 * Checks the body's media type and encoding and decodes it to text: `Content-Encoding: gzip` is
 * inflated with a cap on the inflated size (a small gzip bomb never becomes a large buffer), and
 * the result must be valid UTF-8.
 */
export async function decodeBody(
  request: HttpRequest,
  options: { mediaTypes: ReadonlySet<string>; maxDecompressedBytes: number },
): Promise<BodyOutcome> {
  const [type = '', ...params] = (request.headers['content-type'] ?? '').split(';');
  const mediaType = type.trim().toLowerCase();
  if (!options.mediaTypes.has(mediaType)) {
    return {
      ok: false,
      status: 415,
      code: 'unsupported_media_type',
      message: `Content-Type must be one of ${[...options.mediaTypes].join(', ')}`,
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

  let bytes = request.body;
  const encoding = (request.headers['content-encoding'] ?? '').trim().toLowerCase();
  if (encoding === 'gzip' || encoding === 'x-gzip') {
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
    }
  } else if (encoding !== '' && encoding !== 'identity') {
    return {
      ok: false,
      status: 415,
      code: 'unsupported_encoding',
      message: 'Content-Encoding must be gzip or identity',
    };
  }

  try {
    return { ok: true, text: strictUtf8.decode(bytes), mediaType };
  } catch {
    return { ok: false, status: 400, code: 'invalid_utf8', message: 'the body is not valid UTF-8' };
  }
}
