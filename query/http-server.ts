/**
 * The query service's HTTP layer (node:http): reads a request's head, hands it to the handler,
 * and writes what the handler answers — a whole response, or a Server-Sent Events stream that
 * stays open. GET requests only carry no body, so none is read.
 *
 * node:http rather than ingest's uWebSockets.js layer: an answer here costs one or more
 * PostgreSQL queries, which dominate its time, and a long-lived streaming response with
 * backpressure is what node:http does plainly.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { listen } from '../shared/listen.js';
import type { Logger } from '../shared/logger.js';
import type { EventSink } from './window-stream.js';

export interface QueryRequest {
  method: string;
  path: string;
  /** The raw query string, without `?`. */
  query: string;
  /** Lower-case names; repeated headers joined. */
  headers: Record<string, string>;
  remoteAddress: string;
}

export interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

/** An answer that stays open: `open` is given the stream once its headers are sent. */
export interface StreamReply {
  headers?: Record<string, string>;
  open: (sink: EventSink) => void;
}

export interface QueryHttpHandler {
  handle(request: QueryRequest): Promise<Reply | StreamReply>;
}

export interface QueryHttpServerOptions {
  host: string;
  port: number;
  handler: QueryHttpHandler;
  /** Called once per request answered (a stream: when its headers are sent). */
  onResponse: (path: string, status: number, seconds: number) => void;
  logger: Logger;
}

export class QueryHttpServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private inFlightCount = 0;
  private idleWaiters: Array<() => void> = [];
  private stopping = false;

  constructor(private readonly options: QueryHttpServerOptions) {
    this.server = createServer({ keepAliveTimeout: 5000 }, (req, res) => this.onRequest(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    // A head that does not arrive in time is not waited for.
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 0;
  }

  get port(): number {
    const address = this.server.address();
    return typeof address === 'object' && address !== null ? address.port : 0;
  }

  async start(): Promise<void> {
    await listen(this.server, this.options.port, this.options.host, 'QUERY_PORT');
  }

  /** Stops accepting connections; idle kept-alive ones are closed, requests in hand answered. */
  stopAccepting(): void {
    this.stopping = true;
    this.server.close();
    this.server.closeIdleConnections();
  }

  /** Resolves once every request received has been answered. */
  async drained(): Promise<void> {
    if (this.inFlightCount === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Closes every connection left (after the drain, or when it timed out). */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const started = process.hrtime.bigint();
    const url = req.url ?? '/';
    const at = url.indexOf('?');
    const path = at < 0 ? url : url.slice(0, at);
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    const request: QueryRequest = {
      method: req.method ?? 'GET',
      path,
      query: at < 0 ? '' : url.slice(at + 1),
      headers,
      remoteAddress: req.socket.remoteAddress ?? '',
    };
    // No request here has a body; whatever is sent is discarded.
    req.resume();
    this.inFlightCount++;
    let counted = false;
    const done = (status: number): void => {
      if (counted) return;
      counted = true;
      this.inFlightCount--;
      this.options.onResponse(path, status, Number(process.hrtime.bigint() - started) / 1e9);
      if (this.inFlightCount === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    };
    res.on('close', () => done(499));

    this.options.handler.handle(request).then(
      (reply) => {
        if (res.destroyed) return;
        if ('open' in reply) {
          this.openStream(res, reply);
          done(200);
          return;
        }
        const body = reply.body ?? '';
        res.writeHead(reply.status, {
          ...(this.stopping ? { connection: 'close' } : {}),
          'content-length': String(Buffer.byteLength(body)),
          ...reply.headers,
        });
        res.end(request.method === 'HEAD' ? undefined : body);
        done(reply.status);
      },
      (err: unknown) => {
        this.options.logger.error({ err, path }, 'request handler failed');
        if (!res.headersSent && !res.destroyed) {
          const body = JSON.stringify({
            code: 'internal_error',
            message: 'the server failed to answer the request',
          });
          res.writeHead(500, { 'content-type': 'application/json' }).end(body);
        }
        done(500);
      },
    );
  }

  private openStream(res: ServerResponse, reply: StreamReply): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      // Proxies that buffer (nginx) pass events on at once.
      'x-accel-buffering': 'no',
      ...reply.headers,
    });
    res.socket?.setNoDelay(true);
    const listeners: Array<() => void> = [];
    res.on('close', () => {
      for (const listener of listeners.splice(0)) listener();
    });
    reply.open({
      write: (text) => {
        if (!res.writableEnded && !res.destroyed) res.write(text);
      },
      get unreadBytes() {
        return res.writableLength;
      },
      end: () => {
        if (!res.writableEnded) res.end();
      },
      onClose: (listener) => {
        if (res.destroyed || res.writableEnded) listener();
        else listeners.push(listener);
      },
    });
  }
}
