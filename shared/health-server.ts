import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import type { StateHolder } from './lifecycle.js';
import { listen } from './listen.js';

/**
 * A small HTTP server for a service without a public API of its own: `/healthz` (the process is
 * alive), `/readyz` (200 only while `isReady()`), `/metrics` (Prometheus text).
 */
export class HealthServer {
  private readonly server: Server;

  constructor(
    private readonly options: {
      host: string;
      port: number;
      registry: Registry;
      state: StateHolder;
      isReady: () => boolean;
    },
  ) {
    this.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      const send = (status: number, type: string, body: string): void => {
        res.writeHead(status, { 'content-type': type }).end(body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('allow', 'GET, HEAD');
        send(405, 'application/json', '{"code":"method_not_allowed","message":"use GET"}');
        return;
      }
      switch (path) {
        case '/healthz':
          send(200, 'application/json', '{"status":"alive"}');
          return;
        case '/readyz': {
          const ready = this.options.isReady();
          send(
            ready ? 200 : 503,
            'application/json',
            JSON.stringify({ ready, state: this.options.state.state }),
          );
          return;
        }
        case '/metrics':
          this.options.registry.metrics().then(
            (text) => send(200, this.options.registry.contentType, text),
            () => send(500, 'text/plain', 'metrics collection failed\n'),
          );
          return;
        default:
          send(404, 'application/json', '{"code":"not_found","message":"no such endpoint"}');
      }
    });
  }

  get port(): number {
    const address = this.server.address();
    return typeof address === 'object' && address !== null ? address.port : 0;
  }

  async start(): Promise<void> {
    await listen(this.server, this.options.port, this.options.host, 'AGGREGATOR_PORT');
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
