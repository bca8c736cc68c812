/**
 * The HTTP layer: the only file that touches uWebSockets.js, so the server library can be
 * swapped without touching request handling.
 *
 * uWS has sharp edges, handled here on purpose:
 * - an `onAborted` handler is attached to every request before anything asynchronous happens;
 * - request headers, method, URL and remote address are read synchronously, before any await
 *   (the uWS request object is invalid after the handler returns);
 * - `onData` chunks are copied (uWS reuses the memory after the callback);
 * - the handler's header gates (`checkHead`) run before any body byte is read: a refused request
 *   is answered at once; a body that may follow is drained unbuffered when it is declared small,
 *   otherwise its connection is closed unread;
 * - admitted requests are bounded in number and in body bytes held (`RequestBudget`): past
 *   either bound, 503 `overloaded` and the connection closed;
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
import { type Admission, RequestBudget } from './load-bounds.js';

/**
 * What is known of a request before its body: request line, headers and peer; and `grant`, what
 * the handler's head gates found out about it, for `handle`.
 */
export interface RequestHead<Grant = unknown> {
  /** Upper-case method, as sent. */
  method: string;
  path: string;
  query: string;
  /** Lower-case header names. */
  headers: Record<string, string>;
  /** The peer's address (a proxy's, behind one). */
  remoteAddress: string;
  /** Set by `checkHead` on a request it lets through (ingest: the API key's site). */
  grant?: Grant | undefined;
}

export interface HttpRequest<Grant = unknown> extends RequestHead<Grant> {
  body: Buffer;
}

export interface HttpResponse {
  status: number;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

export interface HttpHandler<Grant = unknown> {
  /**
   * The gates decidable from the head alone (endpoint, method, origin, API key, rate limit,
   * shutdown, media type). A response refuses the request before any of its body is read;
   * undefined lets it through to `handle`, with the `grant` it may have set on `head`. Must not
   * throw.
   */
  checkHead(head: RequestHead<Grant>): HttpResponse | undefined;
  /** A request that passed `checkHead`, with its whole body and its `grant`. */
  handle(request: HttpRequest<Grant>): HttpResponse | Promise<HttpResponse>;
}

export interface HttpServerOptions<Grant = unknown> {
  host: string;
  port: number;
  maxBodyBytes: number;
  requestTimeoutMs: number;
  /**
   * Requests with a body that passed the header gates and are not answered yet, at most; and
   * the body bytes they may hold together (a declared length is reserved in full up front).
   */
  maxConcurrentRequests: number;
  maxBufferedBytes: number;
  /** Every request, whatever its method and path. */
  handler: HttpHandler<Grant>;
  /**
   * Extra headers for the answers this layer gives by itself (413, 408, 503 deadline), from the
   * request's headers: CORS, so that a browser can read them.
   */
  errorHeaders: (requestHeaders: Record<string, string>) => Record<string, string>;
  /** Called once per answered request, for metrics. */
  onResponse: (request: { method: string; path: string }, status: number, seconds: number) => void;
  /** Called when a request is refused because the bounds on admitted requests are reached. */
  onRefused: (code: 'overloaded') => void;
  logger: Logger;
}

/**
 * The most body bytes still to come that a request refused from its head is drained of, rather
 * than having its connection closed under it.
 */
const DRAIN_AT_MOST_BYTES = 64 * 1024;

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

export class HttpServer<Grant = unknown> {
  private listenSocket: us_listen_socket | undefined;
  private inFlightCount = 0;
  private draining = false;
  private idleWaiters: Array<() => void> = [];
  private readonly budget: RequestBudget;

  constructor(private readonly options: HttpServerOptions<Grant>) {
    this.budget = new RequestBudget(options.maxConcurrentRequests, options.maxBufferedBytes);
  }

  /** Requests received and not yet answered. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Body bytes reserved by admitted requests (bounded by `maxBufferedBytes`). */
  get bufferedBytes(): number {
    return this.budget.bytes;
  }

  /** Admitted requests with a body, not yet answered (bounded by `maxConcurrentRequests`). */
  get admittedRequests(): number {
    return this.budget.active;
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

  /**
   * From now on every answer says `Connection: close`, so that kept-alive clients reconnect,
   * through the load balancer, to another instance. The listener stays open.
   */
  closeConnectionsAfterAnswer(): void {
    this.draining = true;
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
    const head: RequestHead<Grant> = { method, path, query, headers, remoteAddress };

    this.inFlightCount++;
    let finished = false;
    let aborted = false;
    let bodyComplete = false;
    let admission: Admission | undefined;
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
      admission?.release();
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
        const close = closeConnection || this.draining;
        if (close && response.headers?.connection === undefined) {
          res.writeHeader('connection', 'close');
        }
        const body = response.body ?? '';
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

    const failed = (err: unknown): HttpResponse => {
      this.options.logger.error({ err, path }, 'request handler failed');
      return errorResponse(500, 'internal_error', 'the server failed to handle the request');
    };

    const run = (body: Buffer): void => {
      bodyComplete = true;
      let result: HttpResponse | Promise<HttpResponse>;
      try {
        result = this.options.handler.handle({
          method,
          path,
          query,
          headers,
          body,
          remoteAddress,
          grant: head.grant,
        });
      } catch (err) {
        respond(failed(err));
        return;
      }
      if (result instanceof Promise) {
        result.then(respond, (err: unknown) => respond(failed(err)));
      } else {
        respond(result);
      }
    };

    const hasBody = !(
      method === 'GET' ||
      method === 'HEAD' ||
      method === 'OPTIONS' ||
      method === 'DELETE'
    );
    const declaredText = headers['content-length'];
    const declared = declaredText === undefined ? undefined : Number(declaredText);
    const chunked = headers['transfer-encoding'] !== undefined;
    // Body bytes may follow the head of a request refused from its head alone. A small declared
    // rest is drained (discarded as it arrives, the answer saying `Connection: close`): closing
    // on bytes not yet read makes the kernel reset the connection, and the client may lose the
    // answer. Anything larger, or of unknown length, gets its connection closed at once.
    const bodyFollows = hasBody && (chunked || declared === undefined || declared > 0);
    const refuseFromHead = (response: HttpResponse): void => {
      if (!bodyFollows) {
        respond(response);
        return;
      }
      if (chunked || declared === undefined || !(declared <= DRAIN_AT_MOST_BYTES)) {
        respond(response, true);
        return;
      }
      res.onData(() => {});
      respond({ ...response, headers: { ...response.headers, connection: 'close' } });
    };

    const limit = this.options.maxBodyBytes;
    if (hasBody && declared !== undefined && declared > limit) {
      respond(tooLarge(limit, layerHeaders), true);
      return;
    }

    let refusal: HttpResponse | undefined;
    try {
      refusal = this.options.handler.checkHead(head);
    } catch (err) {
      refusal = failed(err);
    }
    if (refusal !== undefined) {
      refuseFromHead(refusal);
      return;
    }

    if (!hasBody) {
      // No body is read for these methods; uWS discards any that is sent.
      run(Buffer.alloc(0));
      return;
    }

    admission = this.budget.admit(
      declared !== undefined && Number.isSafeInteger(declared) ? declared : 0,
    );
    if (admission === undefined) {
      this.options.onRefused('overloaded');
      refuseFromHead(overloaded(layerHeaders));
      return;
    }
    const reservation = admission;
    let reserved = declared !== undefined && Number.isSafeInteger(declared) ? declared : 0;
    const chunks: Buffer[] = [];
    let received = 0;
    res.onData((chunk, isLast) => {
      if (finished) return;
      received += chunk.byteLength;
      if (received > limit) {
        respond(tooLarge(limit, layerHeaders), true);
        return;
      }
      if (received > reserved) {
        // More than declared (chunked): reserve as it arrives.
        if (!reservation.grow(received - reserved)) {
          this.options.onRefused('overloaded');
          respond(overloaded(layerHeaders), true);
          return;
        }
        reserved = received;
      }
      // Copy: uWS reuses the chunk's memory once this callback returns.
      chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) run(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    });
  }
}

function overloaded(headers: Record<string, string>): HttpResponse {
  return errorResponse(
    503,
    'overloaded',
    'the server is handling as many requests as it takes at once; nothing was stored: retry',
    {},
    { ...headers, 'retry-after': '1' },
  );
}

function tooLarge(limit: number, headers: Record<string, string>): HttpResponse {
  const message = `the request body is larger than ${limit} bytes`;
  return errorResponse(413, 'body_too_large', message, { limit }, headers);
}
