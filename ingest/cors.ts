/**
 * CORS for browsers posting events (including `navigator.sendBeacon`). Origins are matched
 * exactly; `*` allows any origin. With no origins configured, no CORS headers are sent.
 *
 * CORS headers only decide whether a browser lets a page *read* the answer; a `text/plain` POST
 * (what `sendBeacon` sends) needs no preflight, so the write would happen anyway. So when origins
 * are listed, a write whose `Origin` is not among them is refused outright (`refuses`). A request
 * without `Origin` (a server, an app, curl) is not a browser's cross-origin request and is left
 * alone: the allow-list is no authentication, API keys are.
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

  /** True when a write from `origin` must be refused: origins are listed and it is not one. */
  refuses(origin: string | undefined): boolean {
    return origin !== undefined && this.origins.size > 0 && !this.allows(origin);
  }

  private allows(origin: string): boolean {
    return this.any || this.origins.has(origin);
  }
}
