import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * API-key checking: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are compared as
 * SHA-256 digests with a constant-time comparison, so response timing does not leak key bytes.
 */
export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.map(digest);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** The key the request presents, if any (lower-case header names). */
  static presented(headers: Record<string, string>): string | undefined {
    const header = headers['x-api-key'];
    if (header !== undefined && header.length > 0) return header;
    const auth = headers.authorization;
    const match = auth === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(auth);
    return match?.[1];
  }

  /** True when `key` is one of the configured keys. */
  accepts(key: string): boolean {
    const candidate = digest(key);
    let found = false;
    for (const known of this.digests) found = timingSafeEqual(known, candidate) || found;
    return found;
  }
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}
