import type { Registry } from 'prom-client';
import type { PipelineError } from '../shared/errors.js';
import { hasCode } from '../shared/errors.js';
import { type ActivityEvent, type EventValidation, validateEvent } from '../shared/event-schema.js';
import type { StateHolder } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { RateLimiter } from '../shared/rate-limiter.js';
import { ApiKeys } from './api-keys.js';
import { parseBatch } from './batch-parser.js';
import { type ClientAddressResolver, clientKey } from './client-address.js';
import type { CorsPolicy } from './cors.js';
import type { EventProducer } from './event-producer.js';
import {
  errorResponse,
  type HttpHandler,
  type HttpRequest,
  type HttpResponse,
  type RequestHead,
} from './http-server.js';
import type { Slots } from './load-bounds.js';
import type { IngestMetrics } from './metrics.js';
import { checkMediaType, decodeBody } from './request-body.js';
import type { Site } from './sites.js';

export interface RequestHandlerDeps {
  producer: EventProducer;
  metrics: IngestMetrics;
  registry: Registry;
  state: StateHolder;
  cors: CorsPolicy;
  /** The write keys and their sites: a POST's events belong to its key's site. */
  apiKeys: ApiKeys;
  rateLimiter: RateLimiter;
  clientAddress: ClientAddressResolver;
  /** False once the service has stopped taking writes (shut down, or not started yet). */
  acceptingWrites: () => boolean;
  /** Gzip bodies inflated at once (`MAX_CONCURRENT_DECOMPRESSIONS`). */
  inflateSlots: Slots;
  maxEventAgeMs: number;
  maxBatchEvents: number;
  maxDecompressedBytes: number;
  logger: Logger;
}

/** One rejected event of a batch, as the response lists it. */
export interface RejectedEvent {
  index: number;
  code: string;
  message: string;
  field?: string;
  /** True when sending the same event again may succeed (the broker did not take it). */
  retryable?: boolean;
}

const SINGLE_TYPES: ReadonlySet<string> = new Set(['application/json', 'text/plain']);
const BATCH_TYPES: ReadonlySet<string> = new Set([
  'application/json',
  'text/plain',
  'application/x-ndjson',
]);
const ROUTES: Record<string, readonly string[]> = {
  '/activity': ['POST', 'OPTIONS'],
  '/activities': ['POST', 'OPTIONS'],
  '/healthz': ['GET', 'HEAD'],
  '/readyz': ['GET', 'HEAD'],
  '/metrics': ['GET', 'HEAD'],
};
const RETRY_AFTER = { 'retry-after': '1' };

/**
 * Routes requests to the ingest endpoints and answers them. Independent of the HTTP server
 * library: it sees plain request values and returns plain response values.
 *
 * Every gate decidable from the head runs in `checkHead`, before the body is read, cheapest
 * first: endpoint and method (404/405), origin (403), API key (401), rate limit (429), shutdown
 * (503 `draining`), media type, charset and encoding (415). A POST let through carries its site
 * (its API key's, or the default site without keys) as its grant. `handle` then reads the body.
 */
export function createRequestHandler(deps: RequestHandlerDeps): HttpHandler<Site> {
  return {
    checkHead: (head) => {
      const allowed = ROUTES[head.path];
      if (allowed === undefined) {
        return errorResponse(404, 'not_found', `no endpoint at ${head.path}`);
      }
      if (!allowed.includes(head.method)) {
        return errorResponse(
          405,
          'method_not_allowed',
          `${head.method} is not allowed on ${head.path}; use ${allowed.join(' or ')}`,
          {},
          { allow: allowed.join(', ') },
        );
      }
      if (head.method !== 'POST') return undefined;
      const refusal = checkWrite(head, deps);
      if (refusal === undefined) return undefined;
      const cors = deps.cors.responseHeaders(head.headers.origin);
      return { ...refusal, headers: { ...cors, ...refusal.headers } };
    },
    handle: async (request) => {
      switch (request.path) {
        case '/healthz':
          return json(200, { status: 'alive' });
        case '/readyz':
          return readiness(deps);
        case '/metrics':
          return {
            status: 200,
            headers: { 'content-type': deps.registry.contentType },
            body: await deps.registry.metrics(),
          };
        default: {
          const cors = deps.cors.responseHeaders(request.headers.origin);
          const response =
            request.method === 'OPTIONS'
              ? preflight(request, deps)
              : await postEvents(request, deps);
          return { ...response, headers: { ...cors, ...response.headers } };
        }
      }
    },
  };
}

function readiness(deps: RequestHandlerDeps): HttpResponse {
  const ready = deps.state.state === 'running' && deps.producer.isReady;
  return json(ready ? 200 : 503, { ready, state: deps.state.state });
}

function preflight(request: HttpRequest, deps: RequestHandlerDeps): HttpResponse {
  const headers = deps.cors.preflightHeaders(request.headers.origin, ['POST', 'OPTIONS']);
  if (headers === undefined) {
    return errorResponse(403, 'origin_not_allowed', 'this origin may not post events here');
  }
  return { status: 204, headers };
}

/**
 * The header gates of both POST endpoints; undefined when the request may be read, its site set
 * as the head's grant.
 */
function checkWrite(head: RequestHead<Site>, deps: RequestHandlerDeps): HttpResponse | undefined {
  const refuse = (status: number, code: string, message: string, headers = {}) => {
    deps.metrics.requestsRefused.inc({ reason: code });
    return errorResponse(status, code, message, {}, headers);
  };

  if (deps.cors.refuses(head.headers.origin)) {
    return refuse(403, 'origin_not_allowed', 'this origin may not post events here');
  }
  let client: string;
  let site: Site | undefined;
  if (deps.apiKeys.enabled) {
    const key = ApiKeys.presented(head.headers);
    site = key === undefined ? undefined : deps.apiKeys.siteOf(key);
    if (key === undefined || site === undefined) {
      return refuse(
        401,
        key === undefined ? 'missing_api_key' : 'invalid_api_key',
        'send a valid API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`',
        { 'www-authenticate': 'Bearer' },
      );
    }
    client = `key:${key}`;
  } else {
    site = deps.apiKeys.defaultSite;
    const address = deps.clientAddress.resolve(head.remoteAddress, head.headers['x-forwarded-for']);
    client = clientKey(address);
  }
  const waitSec = deps.rateLimiter.take(client, 1, Date.now());
  if (waitSec > 0) {
    deps.metrics.rateLimited.inc();
    return refuse(429, 'rate_limited', 'too many requests; slow down', {
      'retry-after': String(waitSec),
    });
  }
  if (!deps.acceptingWrites()) {
    return refuse(503, 'draining', 'the server is shutting down; retry', RETRY_AFTER);
  }
  const media = checkMediaType(
    head.headers,
    head.path === '/activities' ? BATCH_TYPES : SINGLE_TYPES,
  );
  if (!media.ok) return refuse(media.status, media.code, media.message);
  head.grant = site;
  return undefined;
}

/** A POST that passed the header gates: its body decoded, validated and produced. */
async function postEvents(
  request: HttpRequest<Site>,
  deps: RequestHandlerDeps,
): Promise<HttpResponse> {
  const receivedAtMs = Date.now();
  const site = request.grant;
  // checkWrite sets it on every POST it lets through: without one, whose events these are is
  // unknown, and they must not land in some site by default.
  if (site === undefined) throw new Error('a POST reached the handler without a site');
  const batch = request.path === '/activities';
  const media = checkMediaType(request.headers, batch ? BATCH_TYPES : SINGLE_TYPES);
  if (!media.ok) return errorResponse(media.status, media.code, media.message);
  const body = await decodeBody(request.body, request.headers, {
    maxDecompressedBytes: deps.maxDecompressedBytes,
    inflateSlots: deps.inflateSlots,
  });
  if (!body.ok) {
    deps.metrics.requestsRefused.inc({ reason: body.code });
    return errorResponse(
      body.status,
      body.code,
      body.message,
      {},
      body.status === 503 ? RETRY_AFTER : {},
    );
  }
  return batch
    ? postBatch(body.text, media.mediaType, site, receivedAtMs, deps)
    : postSingle(body.text, site, receivedAtMs, deps);
}

async function postSingle(
  text: string,
  site: Site,
  receivedAtMs: number,
  deps: RequestHandlerDeps,
): Promise<HttpResponse> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    deps.metrics.eventsRejected.inc({ reason: 'invalid_json' });
    return errorResponse(400, 'invalid_json', 'the request body is not valid JSON');
  }
  const result = validateEvent(value, { nowMs: receivedAtMs, maxAgeMs: deps.maxEventAgeMs });
  if (!result.ok) {
    deps.metrics.eventsRejected.inc({ reason: result.code });
    return errorResponse(
      400,
      result.code,
      result.message,
      result.field === undefined ? {} : { field: result.field },
    );
  }
  // The client's own id is echoed; producing assigns one to an event without.
  const clientEventId = result.event.event_id;
  const [failure] = await produce([result.event], site, receivedAtMs, deps);
  if (failure instanceof Error) {
    deps.metrics.eventsRejected.inc({ reason: failure.code });
    return errorResponse(503, failure.code, failure.message, {}, RETRY_AFTER);
  }
  deps.metrics.eventsAccepted.inc({ site: site.name });
  return json(200, {
    status: 'accepted',
    ...(clientEventId === undefined ? {} : { event_id: clientEventId }),
  });
}

/**
 * A batch: every valid event is produced; the answer lists the rejected ones by index.
 * 200: all accepted. 207: some accepted, `rejected` lists the others. 400: none valid.
 * 503 + Retry-After: none stored by the broker (retry the batch).
 */
async function postBatch(
  text: string,
  mediaType: string,
  site: Site,
  receivedAtMs: number,
  deps: RequestHandlerDeps,
): Promise<HttpResponse> {
  const parsed = parseBatch(text, mediaType, deps.maxBatchEvents);
  if (!parsed.ok) {
    deps.metrics.eventsRejected.inc({ reason: parsed.code });
    return errorResponse(parsed.status, parsed.code, parsed.message);
  }
  const rejected: RejectedEvent[] = [];
  const valid: ActivityEvent[] = [];
  const validIndexes: number[] = [];
  parsed.items.forEach((item, index) => {
    const result: EventValidation = item.ok
      ? validateEvent(item.value, { nowMs: receivedAtMs, maxAgeMs: deps.maxEventAgeMs })
      : { ok: false, code: 'invalid_type', message: 'this line is not valid JSON' };
    if (result.ok) {
      valid.push(result.event);
      validIndexes.push(index);
    } else {
      const code = item.ok ? result.code : item.code;
      deps.metrics.eventsRejected.inc({ reason: code });
      rejected.push({
        index,
        code,
        message: result.message,
        ...(result.field === undefined ? {} : { field: result.field }),
      });
    }
  });

  let accepted = 0;
  let brokerFailure: PipelineError | undefined;
  if (valid.length > 0) {
    const outcomes = await produce(valid, site, receivedAtMs, deps);
    outcomes.forEach((failure, i) => {
      if (failure === null) {
        accepted++;
        return;
      }
      brokerFailure = failure;
      deps.metrics.eventsRejected.inc({ reason: failure.code });
      rejected.push({
        index: validIndexes[i] as number,
        code: failure.code,
        message: failure.message,
        retryable: true,
      });
    });
    deps.metrics.eventsAccepted.inc({ site: site.name }, accepted);
  }
  rejected.sort((a, b) => a.index - b.index);

  if (accepted === 0 && brokerFailure !== undefined) {
    return errorResponse(
      503,
      brokerFailure.code,
      'the broker stored none of the events; retry the batch',
      { accepted, rejected },
      RETRY_AFTER,
    );
  }
  if (accepted === 0) {
    return errorResponse(400, 'no_valid_events', 'no event in the batch is valid', {
      accepted,
      rejected,
    });
  }
  return json(rejected.length === 0 ? 200 : 207, { accepted, rejected });
}

/**
 * Produces and returns one entry per event (`null`: stored by the broker). When the producer
 * refuses the whole request (queue full, not connected), every entry carries that error.
 */
async function produce(
  events: ActivityEvent[],
  site: Site,
  receivedAtMs: number,
  deps: RequestHandlerDeps,
): Promise<Array<PipelineError | null>> {
  try {
    return await deps.producer.produce(events, site, receivedAtMs);
  } catch (err) {
    if (hasCode(err, 'queue_full', 'broker_unavailable')) {
      deps.logger.warn({ err }, 'events not admitted by the producer');
      return events.map(() => err);
    }
    throw err;
  }
}

function json(status: number, body: unknown): HttpResponse {
  return { status, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}
