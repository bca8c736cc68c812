import { DEFAULT_SITE, isTimeZone, SITE_NAME } from '../shared/event-schema.js';

/** A site (or app) this deployment serves: its events are counted apart from the others'. */
export interface Site {
  /** Matches `SITE_NAME`; `DEFAULT_SITE` for the events of bare keys, or of every event without keys. */
  readonly name: string;
  /** IANA time zone its day rollups follow. */
  readonly timeZone: string;
}

/** One entry of `API_KEYS`: a write key and the site its events belong to. */
export interface ApiKey {
  key: string;
  site: string;
  timeZone: string;
}

/** The zone of a site whose keys name none (`DEFAULT_SITE` has `DEFAULT_SITE_TIME_ZONE`). */
export const SITE_TIME_ZONE_FALLBACK = 'UTC';

/**
 * Reads the entries of `API_KEYS`: `KEY` (a key of `DEFAULT_SITE`, as before sites), `KEY=SITE`
 * or `KEY=SITE@ZONE`. The last `=` separates the key from its site (site names and zone names
 * contain none), except at the very end: an entry ending in `=` is a bare key, so that base64
 * keys with their padding keep working.
 *
 * A site's zone is the one its entries name; an entry without one means `UTC`, or
 * `defaultSiteTimeZone` for `DEFAULT_SITE`. Every entry of a site must mean the same zone, so
 * that removing a rotated key can never move a site's days silently.
 *
 * Returns the keys and every problem found. A problem names an entry by its position, never by
 * its key: keys are secrets, and problems end up in logs.
 */
export function parseApiKeys(
  entries: readonly string[],
  defaultSiteTimeZone: string,
): { keys: ApiKey[]; problems: string[] } {
  const keys: ApiKey[] = [];
  const problems: string[] = [];
  const entryOfKey = new Map<string, number>();
  const zoneOfSite = new Map<string, { zone: string; entry: number }>();
  entries.forEach((text, index) => {
    const entry = index + 1;
    const where = `API_KEYS entry ${entry} of ${entries.length}`;
    const parsed = parseEntry(text);
    if (typeof parsed === 'string') {
      problems.push(`${where}: ${parsed}`);
      return;
    }
    const { key, site, zone } = parsed;
    let bad = false;
    if (!SITE_NAME.test(site)) {
      problems.push(
        `${where}: site ${JSON.stringify(site)} is not a site name (lower-case letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters)`,
      );
      bad = true;
    }
    if (zone !== undefined && !isTimeZone(zone)) {
      problems.push(
        `${where}: ${JSON.stringify(zone)} is not an IANA time zone name (like Europe/Berlin)`,
      );
      bad = true;
    }
    const earlier = entryOfKey.get(key);
    if (earlier !== undefined) {
      problems.push(`API_KEYS entries ${earlier} and ${entry} are the same key`);
      bad = true;
    } else {
      entryOfKey.set(key, entry);
    }
    if (bad) return;

    if (site === DEFAULT_SITE && zone !== undefined && zone !== defaultSiteTimeZone) {
      problems.push(
        `${where}: gives site ${DEFAULT_SITE} the time zone ${zone}, but DEFAULT_SITE_TIME_ZONE is ${defaultSiteTimeZone}: set the zone of ${DEFAULT_SITE} there`,
      );
      return;
    }
    const timeZone =
      zone ?? (site === DEFAULT_SITE ? defaultSiteTimeZone : SITE_TIME_ZONE_FALLBACK);
    const first = zoneOfSite.get(site);
    if (first === undefined) {
      zoneOfSite.set(site, { zone: timeZone, entry });
    } else if (first.zone !== timeZone) {
      problems.push(
        `API_KEYS entries ${first.entry} and ${entry} give site ${site} different time zones (${first.zone}, ${timeZone}); an entry without @ZONE means ${SITE_TIME_ZONE_FALLBACK}: give every key of a site the same zone`,
      );
      return;
    }
    keys.push({ key, site, timeZone });
  });
  return { keys, problems };
}

/** One entry split into its parts, or what is wrong with it. */
function parseEntry(text: string): { key: string; site: string; zone?: string } | string {
  const separator = text.lastIndexOf('=');
  if (separator < 0 || separator === text.length - 1) return { key: text, site: DEFAULT_SITE };
  const key = text.slice(0, separator).trim();
  if (key.length === 0) return 'no key before "=" (expected KEY, KEY=SITE or KEY=SITE@ZONE)';
  const rest = text.slice(separator + 1);
  const at = rest.indexOf('@');
  if (at < 0) return { key, site: rest.trim() };
  const zone = rest.slice(at + 1).trim();
  if (zone.length === 0) return 'no time zone after "@" (expected KEY=SITE@ZONE)';
  return { key, site: rest.slice(0, at).trim(), zone };
}
