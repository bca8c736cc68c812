/**
 * The one error class of the pipeline's infrastructure paths (config, broker, database, lifecycle).
 * Branch on `code`, never on message text. A bad *event* is not an exception: see `event-schema.ts`,
 * which returns per-event outcomes as values.
 */
export type PipelineErrorCode =
  | 'config_invalid'
  | 'broker_unavailable'
  | 'broker_timeout'
  | 'broker_outcome_unknown'
  | 'queue_full'
  | 'database_unavailable'
  | 'database_write_failed'
  | 'shutdown_timeout'
  | 'deadline_exceeded'
  | 'sketch_invalid'
  | 'range_invalid'
  | 'range_too_long';

export class PipelineError extends Error {
  override readonly name = 'PipelineError';
  readonly code: PipelineErrorCode;
  readonly retryable: boolean;

  constructor(
    code: PipelineErrorCode,
    message: string,
    options: { cause?: unknown; retryable?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

/** True when `err` is a PipelineError with one of `codes`. */
export function hasCode(err: unknown, ...codes: PipelineErrorCode[]): err is PipelineError {
  return err instanceof PipelineError && codes.includes(err.code);
}
