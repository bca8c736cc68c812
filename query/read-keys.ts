import { createHash, timingSafeEqual } from 'node:crypto';
import type { ReadKey } from './config.js';

/**
 * Read keys (`QUERY_API_KEYS`), separate from ingest's write keys: each reads one site. Keys are
 * compared as SHA-256 digests in constant time against every configured key.
 */
export class ReadKeys {
  private readonly digests: Buffer[];
  private readonly sites: string[];

  constructor(keys: readonly ReadKey[]) {
    this.digests = keys.map((entry) => digest(entry.key));
    this.sites = keys.map((entry) => entry.site);
  }

  /** False without keys: the API is open. */
  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** The key a request presents: `Authorization: Bearer KEY`, else `?key=KEY`. */
  static presented(headers: Record<string, string>, queryKey: string | undefined) {
    const auth = headers.authorization;
    const match = auth === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(auth);
    return match?.[1] ?? queryKey;
  }

  /** The site `key` reads; undefined when it is none of the keys. */
  siteOf(key: string): string | undefined {
    const candidate = digest(key);
    let found: string | undefined;
    for (let i = 0; i < this.digests.length; i++) {
      if (timingSafeEqual(this.digests[i] as Buffer, candidate)) found = this.sites[i];
    }
    return found;
  }
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}
