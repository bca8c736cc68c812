/**
 * CORS for browsers posting events (including `navigator.sendBeacon`). Origins are matched
 * exactly; `*` allows any origin. With no origins configured, no CORS headers are sent.
 */
export class CorsPolicy {
  private readonly any: boolean;
  private readonly origins: Set<string>;

  constructor(allowedOrigins: readonly string[]) {
    this.any = allowedOrigins.includes('*');
    this.origins = new Set(allowedOrigins);
  }

  /** Headers for an actual (non-preflight) response to a request from `origin`. */
  responseHeaders(origin: string | undefined): Record<string, string> {
    if (origin === undefined || !this.allows(origin)) return {};
    return {
      'access-control-allow-origin': this.any ? '*' : origin,
      ...(this.any ? {} : { vary: 'Origin' }),
    };
  }

  /** Headers for a preflight, or `undefined` when the origin is not allowed. */
  preflightHeaders(
    origin: string | undefined,
    allowedMethods: readonly string[],
  ): Record<string, string> | undefined {
    if (origin === undefined || !this.allows(origin)) return undefined;
    return {
      ...this.responseHeaders(origin),
      'access-control-allow-methods': allowedMethods.join(', '),
      'access-control-allow-headers': 'content-type, content-encoding, authorization, x-api-key',
      'access-control-max-age': '600',
    };
  }

  private allows(origin: string): boolean {
    return this.any || this.origins.has(origin);
  }
}
