import { createHash, timingSafeEqual } from 'node:crypto';
import { DEFAULT_SITE } from '../shared/event-schema.js';
import type { ApiKey, Site } from './sites.js';

/**
 * API-key checking: `Authorization: Bearer <key>` or `X-API-Key: <key>`, and the site each key
 * writes to. Keys are compared as SHA-256 digests with a constant-time comparison against every
 * configured key, so response timing does not leak key bytes.
 */
export class ApiKeys {
  private readonly digests: Buffer[];
  /** The site of each key, by the index of its digest. */
  private readonly siteOfKey: Site[];
  /** The sites the keys write to (`defaultSite` alone without keys), each once. */
  readonly sites: readonly Site[];
  /** The site of every event while no keys are configured. */
  readonly defaultSite: Site;

  constructor(keys: readonly ApiKey[], defaultSiteTimeZone: string) {
    this.defaultSite = { name: DEFAULT_SITE, timeZone: defaultSiteTimeZone };
    const byName = new Map<string, Site>();
    this.digests = keys.map((entry) => digest(entry.key));
    this.siteOfKey = keys.map((entry) => {
      let site = byName.get(entry.site);
      if (site === undefined) {
        site = { name: entry.site, timeZone: entry.timeZone };
        byName.set(entry.site, site);
      }
      return site;
    });
    this.sites = keys.length === 0 ? [this.defaultSite] : [...byName.values()];
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

  /** The site `key` writes to; undefined when it is none of the configured keys. */
  siteOf(key: string): Site | undefined {
    const candidate = digest(key);
    let found: Site | undefined;
    // Every digest is compared, whichever matches: the time taken does not depend on the key.
    for (let i = 0; i < this.digests.length; i++) {
      if (timingSafeEqual(this.digests[i] as Buffer, candidate)) found = this.siteOfKey[i];
    }
    return found;
  }
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}
