/**
 * What the query API answers when it does not answer with figures: a status, a machine-readable
 * `code`, a message for a person, and the parameter at fault when one is.
 */
export type QueryErrorCode =
  | 'invalid_parameter'
  | 'unknown_parameter'
  | 'range_too_long'
  | 'range_unaligned'
  | 'tz_unsupported'
  | 'unauthorized'
  | 'unknown_site'
  | 'not_found'
  | 'method_not_allowed'
  | 'rate_limited'
  | 'deadline_exceeded'
  | 'too_many_streams'
  | 'unavailable'
  | 'internal_error';

const STATUS: Record<QueryErrorCode, number> = {
  invalid_parameter: 400,
  unknown_parameter: 400,
  range_too_long: 400,
  range_unaligned: 400,
  tz_unsupported: 400,
  unauthorized: 401,
  unknown_site: 404,
  not_found: 404,
  method_not_allowed: 405,
  rate_limited: 429,
  deadline_exceeded: 503,
  too_many_streams: 503,
  unavailable: 503,
  internal_error: 500,
};

export class QueryError extends Error {
  override readonly name = 'QueryError';
  readonly status: number;

  constructor(
    readonly code: QueryErrorCode,
    message: string,
    readonly parameter?: string,
    /** Seconds, for `Retry-After` (429 and 503). */
    readonly retryAfterSec?: number,
  ) {
    super(message);
    this.status = STATUS[code];
  }

  /** The JSON body: `{ code, message, parameter? }`. */
  body(): string {
    return JSON.stringify({
      code: this.code,
      message: this.message,
      ...(this.parameter === undefined ? {} : { parameter: this.parameter }),
    });
  }
}

/** A 400 `invalid_parameter` naming `parameter`. */
export const invalid = (parameter: string, message: string): QueryError =>
  new QueryError('invalid_parameter', message, parameter);
