/**
 * The events every scenario sends, generated up front from a fixed seed so that the target and
 * its baselines get exactly the same input and generating them costs nothing during a run.
 */
import { SeededRandom } from '../e2e/activity-oracle.js';
import { type ActivityEvent, PAGE_VIEW } from '../shared/event-schema.js';

/** A web analytics mix: mostly page views, then interactions, a few conversions. */
const ACTIVITY_MIX: ReadonlyArray<readonly [string, number]> = [
  [PAGE_VIEW, 0.55],
  ['click', 0.25],
  ['scroll', 0.12],
  ['signup', 0.05],
  ['purchase', 0.03],
];

const SEED = 20261201;

function activityType(random: SeededRandom): string {
  let u = random.next();
  for (const [type, share] of ACTIVITY_MIX) {
    u -= share;
    if (u < 0) return type;
  }
  return PAGE_VIEW;
}

/** A user id drawn with a skew (a few users are very active), from `users` distinct ids. */
function userId(random: SeededRandom, users: number): string {
  return `user-${Math.floor(random.next() ** 2 * users)}`;
}

/**
 * `count` single-event request bodies without a timestamp (ingest stamps the receive time, as for
 * most browser clients), from `users` distinct users.
 */
export function singleEventBodies(count: number, users = 100_000): string[] {
  const random = new SeededRandom(SEED);
  return Array.from({ length: count }, () =>
    JSON.stringify({ user_id: userId(random, users), activity_type: activityType(random) }),
  );
}

/** `count` JSON-array bodies of `batchSize` events each. */
export function batchBodies(count: number, batchSize: number, users = 100_000): string[] {
  const random = new SeededRandom(SEED + batchSize);
  return Array.from({ length: count }, () => {
    const events = Array.from({ length: batchSize }, () => ({
      user_id: userId(random, users),
      activity_type: activityType(random),
    }));
    return JSON.stringify(events);
  });
}

/** A site whose events a topic carries, and its share of them. */
export interface BenchSite {
  site: string;
  timeZone: string;
  share: number;
}

/**
 * `count` validated events as ingest would produce them, event times spread evenly over
 * `spanMs` ending at `endMs`, in order (so none is late). `distinct: true` gives every event its
 * own user (the memory scenario). Each event has an `event_id`. With `sites`, each event belongs
 * to one of them by its share and carries the `site` and `time_zone` ingest stamps; each site
 * draws its users from `users` ids of its own.
 */
export function producedEvents(options: {
  count: number;
  endMs: number;
  spanMs: number;
  users?: number;
  distinct?: boolean;
  sites?: readonly BenchSite[];
}): ActivityEvent[] {
  const random = new SeededRandom(SEED + 7);
  const users = options.users ?? 200_000;
  const startMs = options.endMs - options.spanMs;
  const sites = options.sites ?? [];
  return Array.from({ length: options.count }, (_, i) => {
    const event: ActivityEvent = {
      user_id: options.distinct === true ? `user-${i}` : userId(random, users),
      activity_type: activityType(random),
      timestamp: Math.floor(startMs + (i / options.count) * options.spanMs),
      // Every event carries an id, as the README asks clients to send (ingest-sized: ~18 chars).
      event_id: `bench${SEED.toString(36)}x.${i.toString(36)}`,
    };
    if (sites.length > 0) {
      const site = pickSite(random, sites);
      event.site = site.site;
      event.time_zone = site.timeZone;
    }
    return event;
  });
}

function pickSite(random: SeededRandom, sites: readonly BenchSite[]): BenchSite {
  let u = random.next() * sites.reduce((sum, site) => sum + site.share, 0);
  for (const site of sites) {
    u -= site.share;
    if (u < 0) return site;
  }
  return sites.at(-1) as BenchSite;
}
