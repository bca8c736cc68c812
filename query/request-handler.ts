/**
 * Routes and gates of the query API, independent of the HTTP library: endpoint and method, read
 * key, rate limit, parameters, site; then the answer, through the cache. Every refusal is a
 * status with a machine-readable `code`.
 */
import type { Registry } from 'prom-client';
import { DEFAULT_SITE, isTimeZone, SITE_NAME } from '../shared/event-schema.js';
import type { StateHolder } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { RateLimiter } from '../shared/rate-limiter.js';
import { type Answers, METRICS, type Metric, type Scope } from './answers.js';
import type { ConsumerLag } from './consumer-lag.js';
import type { QueryDatabase } from './database.js';
import { invalid, QueryError } from './errors.js';
import type { QueryHttpHandler, QueryRequest, Reply, StreamReply } from './http-server.js';
import type { QueryMetrics } from './metrics.js';
import { ReadKeys } from './read-keys.js';
import { readSiteZone } from './read-model.js';
import type { ResultCache } from './result-cache.js';
import { PAGE_HEADERS, type StaticFiles } from './static-files.js';
import { type Interval, resolveRange } from './time-range.js';
import type { WindowStream } from './window-stream.js';

/** The parameters each endpoint takes (`key` is everyone's). */
const PARAMETERS: Record<string, readonly string[]> = {
  '/v1/timeseries': ['site', 'metric', 'from', 'to', 'range', 'interval', 'tz', 'activity_type'],
  '/v1/summary': ['site', 'from', 'to', 'range', 'tz', 'activity_type', 'compare'],
  '/v1/breakdown': ['site', 'from', 'to', 'range', 'tz', 'by'],
  '/v1/realtime': ['site'],
  '/v1/stream': ['site', 'last_event_id'],
};
const INTERVALS: readonly Interval[] = ['minute', 'hour', 'day'];
const ACTIVITY_TYPE = /^\P{Cc}{1,64}$/u;
const CURSOR = /^\d{1,20}$/;
/** How long a site's zone is remembered, and for how many sites. */
const SITE_ZONE_TTL_MS = 60_000;
const SITE_ZONES_MAX = 10_000;

const API_HEADERS = {
  'content-type': 'application/json',
  'cache-control': 'no-store',
  // Dashboards embedded in customers' pages read the API from their origin; a key, not a
  // cookie, authorizes a request, so any origin may read what its key allows.
  'access-control-allow-origin': '*',
};

export interface QueryHandlerOptions {
  database: QueryDatabase;
  answers: Answers;
  cache: ResultCache<object>;
  stream: WindowStream;
  /** Without the broker's settings, none: the lag is null. */
  consumerLag: ConsumerLag | undefined;
  keys: ReadKeys;
  rateLimiter: RateLimiter;
  staticFiles: StaticFiles;
  defaultSiteTimeZone: string;
  windowMs: number;
  state: StateHolder;
  isReady: () => boolean;
  registry: Registry;
  metrics: QueryMetrics;
  logger: Logger;
}

export function createQueryHandler(options: QueryHandlerOptions): QueryHttpHandler {
  const siteZones = new Map<string, { zone: string; expiresMs: number }>();

  const siteZone = async (site: string, nowMs: number): Promise<string> => {
    const known = siteZones.get(site);
    if (known !== undefined && known.expiresMs > nowMs) return known.zone;
    const stored = await options.database.use((db) => readSiteZone(db, site));
    const zone = stored ?? options.defaultSiteTimeZone;
    if (siteZones.size >= SITE_ZONES_MAX) siteZones.clear();
    // A site without rows yet gets its zone from its first row, soon: do not remember the default.
    if (stored !== undefined) siteZones.set(site, { zone, expiresMs: nowMs + SITE_ZONE_TTL_MS });
    return zone;
  };

  const json = (status: number, body: unknown, headers: Record<string, string> = {}): Reply => ({
    status,
    headers: { ...API_HEADERS, ...headers },
    body: JSON.stringify(body),
  });

  const refusal = (err: QueryError): Reply => ({
    status: err.status,
    headers: {
      ...API_HEADERS,
      ...(err.retryAfterSec === undefined ? {} : { 'retry-after': String(err.retryAfterSec) }),
      ...(err.code === 'method_not_allowed' ? { allow: 'GET, HEAD, OPTIONS' } : {}),
    },
    body: err.body(),
  });

  const health = async (path: string): Promise<Reply | undefined> => {
    switch (path) {
      case '/healthz':
        return json(200, { status: 'alive' });
      case '/readyz': {
        const ready = options.isReady();
        return json(ready ? 200 : 503, { ready, state: options.state.state });
      }
      case '/metrics':
        return {
          status: 200,
          headers: { 'content-type': options.registry.contentType },
          body: await options.registry.metrics(),
        };
      default:
        return undefined;
    }
  };

  /** The site a request reads: its key's, or `site` (with `default` when open). */
  const siteOf = (request: QueryRequest, params: URLSearchParams): string => {
    const asked = params.get('site') ?? undefined;
    if (options.keys.enabled) {
      const key = ReadKeys.presented(request.headers, params.get('key') ?? undefined);
      const site = key === undefined ? undefined : options.keys.siteOf(key);
      if (site === undefined) {
        throw new QueryError(
          'unauthorized',
          key === undefined
            ? 'a read key is required: Authorization: Bearer KEY, or ?key=KEY'
            : 'the read key is not valid',
        );
      }
      if (asked !== undefined && asked !== site) {
        throw new QueryError('unknown_site', 'no such site for this key', 'site');
      }
      return site;
    }
    const site = asked ?? DEFAULT_SITE;
    if (!SITE_NAME.test(site))
      throw invalid('site', `site: expected a site name (${SITE_NAME.source})`);
    return site;
  };

  const api = async (request: QueryRequest, nowMs: number): Promise<Reply | StreamReply> => {
    const allowed = PARAMETERS[request.path];
    if (allowed === undefined) throw new QueryError('not_found', 'no such endpoint');
    const params = new URLSearchParams(request.query);
    // Gates in order: key, rate limit, parameters. A request without a valid key is limited
    // by its address, so guessing keys is as slow as anything else.
    let site = '';
    let refused: unknown;
    try {
      site = siteOf(request, params);
    } catch (err) {
      refused = err;
    }
    const keyed = options.keys.enabled && refused === undefined;
    const client = keyed
      ? `key:${ReadKeys.presented(request.headers, params.get('key') ?? undefined)}`
      : `address:${request.remoteAddress}`;
    const waitSec = options.rateLimiter.take(client, 1, nowMs);
    if (refused !== undefined) throw refused;
    if (waitSec > 0) {
      throw new QueryError(
        'rate_limited',
        `too many requests for this key; retry after ${waitSec} s`,
        undefined,
        waitSec,
      );
    }
    const seen = new Set<string>();
    for (const name of params.keys()) {
      if (name !== 'key' && !allowed.includes(name)) {
        throw new QueryError(
          'unknown_parameter',
          `${name} is not a parameter of ${request.path}; it takes ${allowed.join(', ')}`,
          name,
        );
      }
      if (seen.has(name)) throw invalid(name, `${name} is given more than once`);
      seen.add(name);
    }
    const get = (name: string): string | undefined => params.get(name) ?? undefined;

    if (request.path === '/v1/stream') {
      const lastEventId = get('last_event_id') ?? request.headers['last-event-id'];
      if (lastEventId !== undefined && !CURSOR.test(lastEventId)) {
        throw invalid(
          'last_event_id',
          'Last-Event-ID: expected the id of an event this stream sent',
        );
      }
      if (options.stream.size >= options.stream.capacity) {
        throw new QueryError(
          'too_many_streams',
          `this server holds ${options.stream.capacity} streams already; retry later`,
          undefined,
          5,
        );
      }
      return {
        headers: { 'access-control-allow-origin': '*' },
        open: (sink) => {
          options.stream.attach(site, lastEventId, sink).catch((err: unknown) => {
            options.logger.warn({ err, site }, 'stream refused');
            sink.end();
          });
        },
      };
    }

    const tz = get('tz');
    if (tz !== undefined && !isTimeZone(tz)) {
      throw invalid('tz', 'tz: expected an IANA time zone name (like Europe/Berlin)');
    }
    const activityType = get('activity_type');
    if (activityType !== undefined && !ACTIVITY_TYPE.test(activityType)) {
      throw invalid('activity_type', 'activity_type: expected at most 64 characters');
    }
    const zoneOfSite = await siteZone(site, nowMs);
    const scope: Scope = { site, siteZone: zoneOfSite, zone: tz ?? zoneOfSite };
    const answer = (key: unknown, compute: () => Promise<object>): Promise<object> =>
      options.cache.get(`${request.path}|${JSON.stringify(key)}`, nowMs, compute);
    const { answers } = options;

    switch (request.path) {
      case '/v1/realtime': {
        const window = nowMs - (nowMs % options.windowMs);
        return json(
          200,
          await answer([site, window], async () => {
            // Asked first, outside the database connection: the broker may take its deadline.
            const lag = (await options.consumerLag?.records(nowMs)) ?? null;
            return options.database.use((db) => answers.realtime(db, scope, nowMs, lag));
          }),
        );
      }
      case '/v1/timeseries': {
        const metric = get('metric') ?? '';
        if (!(METRICS as readonly string[]).includes(metric)) {
          throw invalid('metric', `metric: expected one of ${METRICS.join(', ')}`);
        }
        const interval = get('interval') ?? '';
        if (!(INTERVALS as readonly string[]).includes(interval)) {
          throw invalid('interval', `interval: expected one of ${INTERVALS.join(', ')}`);
        }
        if (interval === 'minute' && activityType !== undefined) {
          throw invalid(
            'activity_type',
            'activity_type is not available by minute: minute rows count every type; ask by hour or day',
          );
        }
        const range = resolveRange(
          { from: get('from'), to: get('to'), range: get('range') },
          scope.zone,
          nowMs,
        );
        const query = {
          metric: metric as Metric,
          interval: interval as Interval,
          range,
          activityType,
        };
        return json(
          200,
          await answer([scope, query], () =>
            options.database.use((db) => answers.timeseries(db, scope, query, nowMs)),
          ),
        );
      }
      case '/v1/summary': {
        const compare = get('compare');
        if (compare !== undefined && compare !== 'previous_period') {
          throw invalid('compare', 'compare: expected previous_period');
        }
        const range = resolveRange(
          { from: get('from'), to: get('to'), range: get('range') },
          scope.zone,
          nowMs,
        );
        const query = { range, activityType, comparePrevious: compare !== undefined };
        return json(
          200,
          await answer([scope, query], () =>
            options.database.use((db) => answers.summary(db, scope, query, nowMs)),
          ),
        );
      }
      case '/v1/breakdown': {
        const by = get('by') ?? 'activity_type';
        if (by !== 'activity_type') throw invalid('by', 'by: expected activity_type');
        const range = resolveRange(
          { from: get('from'), to: get('to'), range: get('range') },
          scope.zone,
          nowMs,
        );
        return json(
          200,
          await answer([scope, range], () =>
            options.database.use((db) => answers.breakdown(db, scope, { range }, nowMs)),
          ),
        );
      }
      default:
        throw new QueryError('not_found', 'no such endpoint');
    }
  };

  return {
    async handle(request) {
      try {
        if (request.method === 'OPTIONS') {
          return {
            status: 204,
            headers: {
              'access-control-allow-origin': '*',
              'access-control-allow-methods': 'GET, HEAD, OPTIONS',
              'access-control-allow-headers': 'authorization, last-event-id',
              'access-control-max-age': '600',
            },
          };
        }
        if (request.method !== 'GET' && request.method !== 'HEAD') {
          throw new QueryError('method_not_allowed', 'use GET');
        }
        const healthReply = await health(request.path);
        if (healthReply !== undefined) return healthReply;
        if (request.path.startsWith('/v1/')) return await api(request, Date.now());
        const file = options.staticFiles.get(request.path);
        if (file === undefined) throw new QueryError('not_found', 'no such page or endpoint');
        return {
          status: 200,
          headers: { ...PAGE_HEADERS, 'content-type': file.type, 'cache-control': 'no-cache' },
          body: file.body,
        };
      } catch (err) {
        if (err instanceof QueryError) return refusal(err);
        throw err;
      }
    },
  };
}
