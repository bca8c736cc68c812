/**
 * The HTTP layer: the only file that touches uWebSockets.js, so the server library can be
 * swapped without touching request handling.
 *
 * uWS has sharp edges, handled here on purpose:
 * - an `onAborted` handler is attached to every request before anything asynchronous happens;
 * - request headers, method, URL and remote address are read synchronously, before any await
 *   (the uWS request object is invalid after the handler returns);
 * - `onData` chunks are copied (uWS reuses the memory after the callback);
 * - the body limit is enforced while streaming: a declared or actual body past the limit gets 413
 *   and the connection is closed, nothing more is buffered;
 * - every write happens inside `cork`;
 * - each request has a deadline.
 */

import type {
  HttpRequest as UwsRequest,
  HttpResponse as UwsResponse,
  us_listen_socket,
  us_socket,
} from 'uWebSockets.js';
import uWS from 'uWebSockets.js';
import type { Logger } from '../shared/logger.js';

export interface HttpRequest {
  /** Upper-case method, as sent. */
  method: string;
  path: string;
  query: string;
  /** Lower-case header names. */
  headers: Record<string, string>;
  body: Buffer;
  remoteAddress: string;
}

export interface HttpResponse {
  status: number;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

export type HttpHandler = (request: HttpRequest) => HttpResponse | Promise<HttpResponse>;

export interface HttpServerOptions {
  host: string;
  port: number;
  maxBodyBytes: number;
  requestTimeoutMs: number;
  /** Every request, whatever its method and path. */
  handler: HttpHandler;
  /**
   * Extra headers for the answers this layer gives by itself (413, 408, 503 deadline), from the
   * request's headers: CORS, so that a browser can read them.
   */
  errorHeaders: (requestHeaders: Record<string, string>) => Record<string, string>;
  /** Called once per answered request, for metrics. */
  onResponse: (request: { method: string; path: string }, status: number, seconds: number) => void;
  logger: Logger;
}

const STATUS_TEXT: Record<number, string> = {
  200: 'OK',
  202: 'Accepted',
  204: 'No Content',
  207: 'Multi-Status',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** A JSON error body in the documented shape. */
export function errorResponse(
  status: number,
  code: string,
  message: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): HttpResponse {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ code, message, ...extra }),
  };
}

export class HttpServer {
  private listenSocket: us_listen_socket | undefined;
  private inFlightCount = 0;
  private draining = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly options: HttpServerOptions) {}

  /** Requests received and not yet answered. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** The port actually listened on (useful with port 0). */
  get port(): number {
    return this.listenSocket === undefined
      ? 0
      : uWS.us_socket_local_port(this.listenSocket as unknown as us_socket);
  }

  async start(): Promise<void> {
    const app = uWS.App();
    app.any('/*', (res, req) => this.onRequest(res, req));
    await new Promise<void>((resolve, reject) => {
      app.listen(this.options.host, this.options.port, (socket) => {
        if (socket === false) {
          reject(
            new Error(
              `cannot listen on ${this.options.host}:${this.options.port}: the port is taken or the address is not local; set INGEST_PORT to a free port`,
            ),
          );
          return;
        }
        this.listenSocket = socket;
        resolve();
      });
    });
  }

  /** Stops accepting connections; requests already received are still answered. */
  stopAccepting(): void {
    this.draining = true;
    if (this.listenSocket !== undefined) {
      uWS.us_listen_socket_close(this.listenSocket);
      this.listenSocket = undefined;
    }
  }

  /** Resolves once every received request has been answered. */
  async drained(): Promise<void> {
    if (this.inFlightCount === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private onRequest(res: UwsResponse, req: UwsRequest): void {
    const started = process.hrtime.bigint();
    // Everything from `req` must be read now: it is invalid once this function returns.
    const method = req.getCaseSensitiveMethod().toUpperCase();
    const path = req.getUrl();
    const query = req.getQuery() ?? '';
    const headers: Record<string, string> = {};
    req.forEach((key, value) => {
      headers[key] = value;
    });
    const remoteAddress = Buffer.from(res.getRemoteAddressAsText()).toString();

    this.inFlightCount++;
    let finished = false;
    let aborted = false;
    let bodyComplete = false;
    const layerHeaders = this.options.errorHeaders(headers);
    const deadline = setTimeout(() => {
      if (!bodyComplete) {
        // The body never finished arriving: answer and drop the connection.
        const message = 'the request body did not arrive in time';
        respond(errorResponse(408, 'request_timeout', message, {}, layerHeaders), true);
        return;
      }
      // The request was read but not answered in time: what became of its events is unknown.
      respond(
        errorResponse(
          503,
          'deadline_exceeded',
          'the request could not be completed in time; its events may or may not be stored: resend them with the same event_id',
          {},
          { ...layerHeaders, 'retry-after': '1' },
        ),
      );
    }, this.options.requestTimeoutMs);

    const finish = (status: number): void => {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      this.inFlightCount--;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      this.options.onResponse({ method, path }, status, seconds);
      if (this.inFlightCount === 0 && this.idleWaiters.length > 0) {
        for (const wake of this.idleWaiters.splice(0)) wake();
      }
    };

    const respond = (response: HttpResponse, closeConnection = false): void => {
      if (finished) return;
      if (aborted) {
        finish(499);
        return;
      }
      res.cork(() => {
        res.writeStatus(`${response.status} ${STATUS_TEXT[response.status] ?? 'Unknown'}`);
        for (const [name, value] of Object.entries(response.headers ?? {})) {
          res.writeHeader(name, value);
        }
        if (this.draining) res.writeHeader('connection', 'close');
        const body = response.body ?? '';
        const close = closeConnection || this.draining;
        // HEAD: the GET's headers and no body. This uWS build treats a non-zero length given to
        // endWithoutBody as body still to come and drops the kept-alive connection, so HEAD
        // answers say Content-Length: 0 instead of the GET's length.
        res.end(method === 'HEAD' ? '' : body, close);
      });
      finish(response.status);
    };

    res.onAborted(() => {
      aborted = true;
      finish(499);
    });

    const run = (body: Buffer): void => {
      bodyComplete = true;
      let result: HttpResponse | Promise<HttpResponse>;
      try {
        result = this.options.handler({ method, path, query, headers, body, remoteAddress });
      } catch (err) {
        this.options.logger.error({ err, path }, 'request handler failed');
        respond(errorResponse(500, 'internal_error', 'the server failed to handle the request'));
        return;
      }
      if (result instanceof Promise) {
        result.then(respond, (err: unknown) => {
          this.options.logger.error({ err, path }, 'request handler failed');
          respond(errorResponse(500, 'internal_error', 'the server failed to handle the request'));
        });
      } else {
        respond(result);
      }
    };

    if (method === 'GET' || method === 'HEAD' || method === 'OPTIONS' || method === 'DELETE') {
      // No body is read for these methods; uWS discards any that is sent.
      run(Buffer.alloc(0));
      return;
    }

    const limit = this.options.maxBodyBytes;
    const declared = headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      respond(tooLarge(limit, layerHeaders), true);
      return;
    }
    const chunks: Buffer[] = [];
    let received = 0;
    res.onData((chunk, isLast) => {
      if (finished) return;
      received += chunk.byteLength;
      if (received > limit) {
        respond(tooLarge(limit, layerHeaders), true);
        return;
      }
      // Copy: uWS reuses the chunk's memory once this callback returns.
      chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) run(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    });
  }
}

function tooLarge(limit: number, headers: Record<string, string>): HttpResponse {
  const message = `the request body is larger than ${limit} bytes`;
  return errorResponse(413, 'body_too_large', message, { limit }, headers);
}
