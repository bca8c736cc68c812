import { createServer } from 'node:net';

/** The loopback address every local-stack process listens on. */
export const LOOPBACK = '127.0.0.1';

/**
 * A TCP port on 127.0.0.1 that was free a moment ago: the kernel picks it when binding port 0.
 * Another process can still take it before the caller binds it; callers that start a server on
 * it report a clear error if that happens.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ port: 0, host: LOOPBACK, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no port was assigned'))));
    });
  });
}

/**
 * True when nothing listens on `port`: it can be bound on 127.0.0.1 and on the wildcard address
 * (the services bind 0.0.0.0, so a port held there counts as taken).
 */
export async function isPortFree(port: number): Promise<boolean> {
  for (const host of [LOOPBACK, '0.0.0.0']) {
    if (!(await canListen(port, host))) return false;
  }
  return true;
}

function canListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}
