import type { Registry } from 'prom-client';
import { hasCode } from '../shared/errors.js';
import { validateEvent } from '../shared/event-schema.js';
import type { StateHolder } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { EventProducer } from './event-producer.js';
import {
  errorResponse,
  type HttpHandler,
  type HttpRequest,
  type HttpResponse,
} from './http-server.js';
import type { IngestMetrics } from './metrics.js';

export interface RequestHandlerDeps {
  producer: EventProducer;
  metrics: IngestMetrics;
  registry: Registry;
  state: StateHolder;
  maxEventAgeMs: number;
  logger: Logger;
}

const JSON_TYPES = new Set(['application/json', 'text/plain']);
const ROUTES: Record<string, readonly string[]> = {
  '/activity': ['POST'],
  '/healthz': ['GET', 'HEAD'],
  '/readyz': ['GET', 'HEAD'],
  '/metrics': ['GET', 'HEAD'],
};
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

/** Routes requests to the ingest endpoints. Independent of the HTTP server library. */
export function createRequestHandler(deps: RequestHandlerDeps): HttpHandler {
  return (request) => {
    const allowed = ROUTES[request.path];
    if (allowed === undefined) {
      return errorResponse(404, 'not_found', `no endpoint at ${request.path}`);
    }
    if (!allowed.includes(request.method)) {
      return errorResponse(
        405,
        'method_not_allowed',
        `${request.method} is not allowed on ${request.path}; use ${allowed.join(' or ')}`,
        {},
        { allow: allowed.join(', ') },
      );
    }
    switch (request.path) {
      case '/healthz':
        return json(200, { status: 'alive' });
      case '/readyz':
        return readiness(deps);
      case '/metrics':
        return metrics(deps.registry);
      default:
        return postActivity(request, deps);
    }
  };
}

function readiness(deps: RequestHandlerDeps): HttpResponse {
  const ready = deps.state.state === 'running' && deps.producer.isReady;
  return json(ready ? 200 : 503, { ready, state: deps.state.state });
}

async function metrics(registry: Registry): Promise<HttpResponse> {
  return {
    status: 200,
    headers: { 'content-type': registry.contentType },
    body: await registry.metrics(),
  };
}

async function postActivity(request: HttpRequest, deps: RequestHandlerDeps): Promise<HttpResponse> {
  const receivedAtMs = Date.now();
  const reject = (status: number, code: string, message: string, extra = {}, headers = {}) => {
    deps.metrics.eventsRejected.inc({ reason: code });
    return errorResponse(status, code, message, extra, headers);
  };

  if (deps.state.state !== 'running') {
    return reject(
      503,
      'draining',
      'the server is shutting down; retry',
      {},
      { 'retry-after': '1' },
    );
  }
  const mediaType = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (mediaType === undefined || !JSON_TYPES.has(mediaType)) {
    return reject(
      415,
      'unsupported_media_type',
      'send the event as application/json (text/plain is accepted for sendBeacon)',
    );
  }

  let text: string;
  try {
    text = strictUtf8.decode(request.body);
  } catch {
    return reject(400, 'invalid_utf8', 'the request body is not valid UTF-8');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return reject(400, 'invalid_json', 'the request body is not valid JSON');
  }
  const result = validateEvent(value, { nowMs: receivedAtMs, maxAgeMs: deps.maxEventAgeMs });
  if (!result.ok) {
    const field = result.field === undefined ? {} : { field: result.field };
    return reject(400, result.code, result.message, field);
  }

  try {
    await deps.producer.produce([result.event], receivedAtMs);
  } catch (err) {
    if (hasCode(err, 'queue_full', 'broker_timeout', 'broker_unavailable')) {
      deps.logger.warn({ err }, 'event not acknowledged');
      return reject(503, err.code, err.message, {}, { 'retry-after': '1' });
    }
    throw err;
  }
  deps.metrics.eventsAccepted.inc();
  return json(200, {
    status: 'accepted',
    ...(result.event.event_id === undefined ? {} : { event_id: result.event.event_id }),
  });
}

function json(status: number, body: unknown): HttpResponse {
  return { status, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}
