import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { test } from 'node:test';
import { freePort, isPortFree, LOOPBACK } from './free-port.js';

function listen(port: number, host: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

test('freePort returns a port that can be bound and reports it taken while held', async () => {
  const port = await freePort();
  assert.ok(port > 0 && port < 65536);
  assert.equal(await isPortFree(port), true);
  const server = await listen(port, LOOPBACK);
  try {
    assert.equal(await isPortFree(port), false);
  } finally {
    await close(server);
  }
  assert.equal(await isPortFree(port), true);
});

test('a port held on the wildcard address counts as taken', async () => {
  const port = await freePort();
  const server = await listen(port, '0.0.0.0');
  try {
    assert.equal(await isPortFree(port), false);
  } finally {
    await close(server);
  }
});
