/**
 * 10,000 clients that give up mid-request, against a real ingest and the real broker: after the
 * headers, in the middle of the body (at once, or a moment later), after the whole body but
 * before reading the answer, with a TCP reset, or after declaring a body past the limit.
 *
 * Afterwards ingest must still accept events, nothing may be left in flight, and its request
 * counters must account for every client: each one the server saw is counted exactly once, a
 * client gone before the answer as 499.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, freeTcpPort, stackFromEnv, uniqueName, waitFor } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

const CLIENTS = 10_000;
const CONCURRENCY = 200;
const MAX_BODY_BYTES = 65_536;

const stack = stackFromEnv();
const topic = uniqueName('abort_storm');
const logger = createLogger('test', 'error');
let ingest: IngestService | undefined;

before(async () => {
  ingest = await startIngest(
    readIngestConfig({
      KAFKA_BROKERS: stack.kafkaBrokers,
      TOPIC: topic,
      TOPIC_PARTITIONS: '3',
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: String(await freeTcpPort()),
      MAX_BODY_BYTES: String(MAX_BODY_BYTES),
    }),
    logger,
  );
});

after(async () => {
  const results = await Promise.allSettled([
    withDeadline(ingest?.close() ?? Promise.resolve(), 15_000, 'closing ingest'),
    withDeadline(deleteTopic(), 15_000, 'deleting the storm topic'),
  ]);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

function deleteTopic(): Promise<void> {
  return deleteTopics(stack.kafkaBrokers, [topic], logger);
}

/** How a client gives up. */
type Abort =
  /** Headers declaring a body, then the connection closed. */
  | 'after-headers'
  /** Part of the declared body, then closed at once. */
  | 'mid-body'
  /** Part of the declared body, then closed a few milliseconds later. */
  | 'mid-body-later'
  /** The whole body (a valid or an invalid event), closed without reading the answer. */
  | 'after-body'
  /** Part of the body, then a TCP reset: the server may never see the request at all. */
  | 'reset-mid-body'
  /** A declared body past MAX_BODY_BYTES, closed at once: refused before any body is read. */
  | 'oversized';
const ABORTS: readonly Abort[] = [
  'after-headers',
  'mid-body',
  'mid-body-later',
  'after-body',
  'reset-mid-body',
  'oversized',
];

function eventBody(i: number): Buffer {
  // Every other complete body is invalid, so both the broker path and the 400 path race the abort.
  const event =
    Math.floor(i / ABORTS.length) % 2 === 0
      ? { user_id: `storm-${i}`, activity_type: 'page_view' }
      : { user_id: `storm-${i}`, activity_type: 'page_view', typo: true };
  return Buffer.from(JSON.stringify(event));
}

/**
 * One client that gives up as `abort` says. Resolves once its socket is closed; `connected` is
 * false when it never got a connection (the server stopped accepting).
 */
function abortingClient(port: number, abort: Abort, i: number): Promise<{ connected: boolean }> {
  return new Promise((resolve) => {
    let connected = false;
    const socket = net.connect(port, '127.0.0.1');
    // The server may reset a connection this client is abandoning anyway.
    socket.on('error', () => {});
    socket.once('close', () => resolve({ connected }));
    socket.once('connect', () => {
      connected = true;
      const body = eventBody(i);
      const declared =
        abort === 'after-body'
          ? body.length
          : abort === 'oversized'
            ? MAX_BODY_BYTES * 4
            : body.length + 1 + (i % 500);
      const head = Buffer.from(
        `POST /activity HTTP/1.1\r\nHost: storm\r\nContent-Type: application/json\r\nContent-Length: ${declared}\r\n\r\n`,
      );
      const sentPart =
        abort === 'after-headers' || abort === 'oversized'
          ? head
          : abort === 'after-body'
            ? Buffer.concat([head, body])
            : Buffer.concat([head, body.subarray(0, 1 + (i % (body.length - 1)))]);
      // Wait until the bytes are with the kernel: closing earlier could drop them unsent.
      socket.write(sentPart, () => {
        if (abort === 'reset-mid-body') socket.resetAndDestroy();
        else if (abort === 'mid-body-later') setTimeout(() => socket.destroy(), i % 20);
        else socket.destroy();
      });
    });
  });
}

/** Samples of `ingest_http_requests_total` for POST /activity, by status. */
function postsByStatus(metrics: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of metrics.split('\n')) {
    const match = /^ingest_http_requests_total\{(.*)\} (\S+)$/.exec(line);
    if (match === null) continue;
    const labels = match[1] ?? '';
    if (!labels.includes('route="/activity"') || !labels.includes('method="POST"')) continue;
    const status = /status="(\d+)"/.exec(labels)?.[1] ?? '?';
    counts.set(status, (counts.get(status) ?? 0) + Number(match[2]));
  }
  return counts;
}

function gauge(metrics: string, name: string): number {
  const line = metrics.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1));
}

test(`${CLIENTS} clients aborting mid-request leave ingest healthy and accounted for`, async (t) => {
  assert.ok(ingest !== undefined);
  const base = `http://127.0.0.1:${ingest.port}`;
  const post = (body: string) =>
    fetch(`${base}/activity`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
  // The producer's first acknowledgement can take a moment on a fresh broker.
  const warmUp = JSON.stringify({ user_id: 'warm-up', activity_type: 'page_view' });
  let warmUps = 0;
  await waitFor(
    async () => {
      warmUps++;
      return (await post(warmUp)).status === 200 ? true : undefined;
    },
    { timeoutMs: 30_000, what: 'ingest accepting events' },
  );

  const sent = new Map<Abort, number>(ABORTS.map((abort) => [abort, 0]));
  let refused = 0;
  let next = 0;
  const started = Date.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < CLIENTS; i = next++) {
        const abort = ABORTS[i % ABORTS.length] as Abort;
        sent.set(abort, (sent.get(abort) ?? 0) + 1);
        const { connected } = await abortingClient(ingest?.port ?? 0, abort, i);
        if (!connected) refused++;
      }
    }),
  );
  t.diagnostic(
    `${CLIENTS} aborting clients in ${Date.now() - started} ms, ${CONCURRENCY} at a time`,
  );
  assert.equal(refused, 0, 'every client got a connection');

  const count = (abort: Abort) => sent.get(abort) ?? 0;
  const goneBeforeAnswer = count('after-headers') + count('mid-body') + count('mid-body-later');
  // Every client whose request reached the server, apart from the resets it may never have seen.
  const seenForSure = goneBeforeAnswer + count('after-body') + count('oversized');

  // Aborts are counted when uWebSockets.js reports them: wait until they all are.
  let metrics = '';
  await waitFor(
    async () => {
      metrics = await (await fetch(`${base}/metrics`)).text();
      const total = [...postsByStatus(metrics).values()].reduce((a, b) => a + b, 0);
      const idle = gauge(metrics, 'ingest_http_in_flight_requests') === 0;
      return idle && total - warmUps >= seenForSure ? true : undefined;
    },
    {
      timeoutMs: 10_000,
      what: 'every aborted request counted and none in flight',
      describe: () =>
        `in flight ${gauge(metrics, 'ingest_http_in_flight_requests')}, POST /activity by status ${JSON.stringify([...postsByStatus(metrics)])}`,
    },
  );

  const byStatus = postsByStatus(metrics);
  const status = (code: number) => byStatus.get(String(code)) ?? 0;
  t.diagnostic(`sent ${JSON.stringify([...sent])}; counted ${JSON.stringify([...byStatus])}`);
  assert.deepEqual(
    [...byStatus.keys()].filter((code) => !['200', '400', '413', '499'].includes(code)),
    [],
    'only 200, 400, 413 and 499 can answer these clients',
  );
  assert.ok(
    status(499) >= goneBeforeAnswer,
    `every client gone before its body arrived is a 499: ${status(499)} < ${goneBeforeAnswer}`,
  );
  assert.equal(status(413), count('oversized'), 'an oversized body is refused at once');
  const counted = status(200) - warmUps + status(400) + status(413) + status(499);
  assert.ok(
    counted >= seenForSure && counted <= seenForSure + count('reset-mid-body'),
    `each client counted at most once: ${counted} counted, ${seenForSure} sure, ${count('reset-mid-body')} resets`,
  );
  assert.ok(
    status(200) - warmUps + status(400) <= count('after-body'),
    'only complete bodies are answered 200 or 400',
  );
  assert.equal(gauge(metrics, 'ingest_producer_in_flight_events'), 0, 'nothing left at the broker');

  // Still serving: a valid event is accepted, and the process is alive.
  const response = await post(JSON.stringify({ user_id: 'after-storm', activity_type: 'click' }));
  assert.equal(response.status, 200, await response.text());
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  const final = await (await fetch(`${base}/metrics`)).text();
  assert.equal(gauge(final, 'ingest_http_in_flight_requests'), 0);
});
