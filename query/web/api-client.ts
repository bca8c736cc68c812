/**
 * The page's client of the query API (docs/QUERY-API.md): typed answers, the read key sent as
 * a bearer token (in the URL only for the event stream, which cannot set headers), and every
 * failure turned into an `ApiError` whose message can be shown to a person as it is.
 */

export interface Credentials {
  /** Empty: the key's only site (or `default` on an open API). */
  site: string;
  /** Empty: no key (an open API, local development). */
  key: string;
}

export type Metric = 'unique_users' | 'page_views' | 'events';
export type Interval = 'minute' | 'hour' | 'day';
export type RangeName = 'today' | 'yesterday' | 'last_24_hours' | 'last_7_days' | 'last_30_days';

export type Accuracy =
  | { kind: 'exact' }
  | { kind: 'approximate'; relative_standard_error: number; relative_error_bound: number };

interface Answer {
  site: string;
  time_zone: string;
}

export interface Totals {
  from: string;
  to: string;
  unique_users: number;
  page_views: number;
  events: number;
  accuracy: Accuracy;
  complete: boolean;
}

export interface Summary extends Answer, Totals {
  previous_period?: Totals;
}

export interface Bucket {
  start: string;
  value: number;
  complete: boolean;
}

export interface Timeseries extends Answer {
  metric: Metric;
  interval: Interval;
  from: string;
  to: string;
  buckets: Bucket[];
}

export interface BreakdownRow {
  activity_type: string;
  events: number;
  page_views: number;
  unique_users: number;
  accuracy: Accuracy;
}

export interface Breakdown extends Answer {
  from: string;
  to: string;
  rows: BreakdownRow[];
}

/** One window's figures, as /v1/realtime lists them and /v1/stream pushes them. */
export interface LiveWindow {
  start: string;
  unique_users: number;
  page_views: number;
  events: number;
  complete: boolean;
}

export interface Realtime extends Answer {
  window_seconds: number;
  windows: LiveWindow[];
  freshness: {
    newest_window_with_events: string | null;
    flushed_at: string | null;
    consumer_lag_records: number | null;
  };
}

export interface StreamedWindow extends LiveWindow {
  site: string;
}

/** A request that failed: the API's `code` (or `network`, `bad_answer`) and a readable message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly parameter?: string,
    readonly retryAfterSec?: number,
  ) {
    super(message);
  }
}

const REQUEST_TIMEOUT_MS = 15_000;

type Params = Record<string, string | undefined>;

export class QueryApi {
  constructor(readonly credentials: Credentials) {}

  summary(params: Params): Promise<Summary> {
    return this.get('/v1/summary', params);
  }

  timeseries(params: Params): Promise<Timeseries> {
    return this.get('/v1/timeseries', params);
  }

  breakdown(params: Params): Promise<Breakdown> {
    return this.get('/v1/breakdown', { by: 'activity_type', ...params });
  }

  realtime(): Promise<Realtime> {
    return this.get('/v1/realtime', {});
  }

  /** The event stream's URL: EventSource sends no headers, so the key goes in the query. */
  streamUrl(): string {
    return this.url('/v1/stream', { key: this.credentials.key || undefined });
  }

  private url(path: string, params: Params): string {
    const query = new URLSearchParams();
    if (this.credentials.site !== '') query.set('site', this.credentials.site);
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined) query.set(name, value);
    }
    const text = query.toString();
    return text === '' ? path : `${path}?${text}`;
  }

  private async get<T>(path: string, params: Params): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.credentials.key !== '') headers.authorization = `Bearer ${this.credentials.key}`;
    let response: Response;
    try {
      response = await fetch(this.url(path, params), {
        headers,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      const timedOut = err instanceof DOMException && err.name === 'TimeoutError';
      throw new ApiError(
        0,
        'network',
        timedOut
          ? `The query service did not answer within ${REQUEST_TIMEOUT_MS / 1000} seconds.`
          : 'The query service cannot be reached. Check the connection and that the service runs.',
      );
    }
    let body: unknown;
    try {
      body = await response.json();
    } catch {
      body = undefined;
    }
    if (response.ok && body !== undefined) return body as T;
    throw errorOf(response, body);
  }
}

function errorOf(response: Response, body: unknown): ApiError {
  const retryAfter = Number(response.headers.get('retry-after'));
  const retryAfterSec = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : undefined;
  if (response.ok) {
    return new ApiError(
      response.status,
      'bad_answer',
      'The query service sent an unreadable answer.',
    );
  }
  const fields = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  const code = typeof fields.code === 'string' ? fields.code : `http_${response.status}`;
  const given = typeof fields.message === 'string' ? fields.message : undefined;
  const parameter = typeof fields.parameter === 'string' ? fields.parameter : undefined;
  return new ApiError(
    response.status,
    code,
    explain(response.status, code, given, retryAfterSec),
    parameter,
    retryAfterSec,
  );
}

/** What went wrong, in words for the person looking at the page. */
function explain(
  status: number,
  code: string,
  given: string | undefined,
  retryAfterSec: number | undefined,
): string {
  switch (code) {
    case 'unauthorized':
      return 'The read key was not accepted. Enter a valid read key for this site.';
    case 'unknown_site':
      return 'This read key cannot read that site, or the site is unknown. Check the site name.';
    case 'rate_limited':
      return `Too many requests for this key. Try again in ${retryAfterSec ?? 1} seconds.`;
    case 'deadline_exceeded':
      return 'The query took too long and was stopped. Try a shorter range or try again.';
    case 'too_many_streams':
      return 'The service has too many live connections open. Live updates will retry.';
  }
  const detail = given === undefined ? '' : `: ${given}`;
  return status >= 500
    ? `The query service failed (${code})${detail}`
    : `The query service refused the request (${code})${detail}`;
}
