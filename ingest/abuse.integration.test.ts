/**
 * Ingest under abuse, against the real broker, with ingest as a child process (`node
 * dist/ingest/main.js`) so that its resident memory is its own:
 *
 * - a slow-upload attack: hundreds of unauthenticated connections each declaring a body just
 *   under MAX_BODY_BYTES and trickling it; each is answered 401 from its headers, before a body
 *   byte is read, and closed; memory stays flat and authenticated traffic is served meanwhile;
 * - the bounds on admitted requests (MAX_CONCURRENT_REQUESTS) and on body bytes held
 *   (MAX_BUFFERED_BYTES), at their defaults: past them 503 `overloaded` with Retry-After, memory
 *   flat, and service again once the load is gone;
 * - the rate limiter behind a trusted proxy, under 200,000 distinct forwarded addresses: an
 *   abuser sending throughout stays limited, a legitimate client is never refused; and an
 *   `X-Forwarded-For` from a peer that is not a trusted proxy is ignored;
 * - a rolling shutdown under load (SIGTERM with DRAIN_DELAY_SEC): `/readyz` is 503 at once, not
 *   one connection is refused during the drain delay, and every acknowledged event is in the
 *   topic.
 *
 * Every loop here is bounded in count and in time.
 */
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, test } from 'node:test';
import { IngestProcess } from '../e2e/ingest-process.js';
import { createKafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, freeTcpPort, stackFromEnv, uniqueName, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const topics: string[] = [];
const processes: IngestProcess[] = [];
const API_KEY = 'abuse-test-key';
const MIB = 1_048_576;
/** The defaults of MAX_BODY_BYTES, MAX_CONCURRENT_REQUESTS and MAX_BUFFERED_BYTES. */
const MAX_BODY_BYTES = MIB;
const MAX_CONCURRENT_REQUESTS = 1024;
const MAX_BUFFERED_BYTES = 64 * MIB;
const RSS_GROWTH_LIMIT = 64 * MIB;

after(async () => {
  await Promise.allSettled(processes.map((p) => p.signal('SIGKILL')));
  if (topics.length > 0) await deleteTopics(stack.kafkaBrokers, topics, logger);
});

async function startIngest(env: Record<string, string> = {}): Promise<IngestProcess> {
  const topic = uniqueName('abuse_it');
  topics.push(topic);
  const ingest = new IngestProcess({
    KAFKA_BROKERS: stack.kafkaBrokers,
    TOPIC: topic,
    TOPIC_PARTITIONS: '3',
    INGEST_HOST: '127.0.0.1',
    INGEST_PORT: String(await freeTcpPort()),
    LOG_LEVEL: 'warn',
    ...env,
  });
  processes.push(ingest);
  ingest.start();
  await ingest.waitReady(30_000);
  return ingest;
}

let sequence = 0;
const eventBody = (label: string): string =>
  JSON.stringify({ user_id: `${label}-${++sequence}`, activity_type: 'page_view' });

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/** One request on its own connection; rejects with the socket error (ECONNREFUSED…). */
function post(
  port: number,
  path: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path,
        agent: false,
        headers: {
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(body)),
          ...headers,
        },
        timeout: 15_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: Buffer.concat(chunks).toString(),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** The first response on a raw connection, parsed; `closed` says whether the server closed it. */
interface RawOutcome {
  status: number | undefined;
  code: string | undefined;
  retryAfter: string | undefined;
  closedByServer: boolean;
  /** Body bytes this client had written when the answer arrived. */
  bodyBytesSentBeforeAnswer: number;
}

/**
 * A request whose body is sent slowly: the head (declaring `declaredLength`), then `firstChunk`
 * bytes, then `chunkBytes` every `everyMs` until the server answers or closes, `holdMs` passes,
 * or the body is complete. `release()` ends it.
 */
class SlowUpload {
  private readonly socket: Socket;
  private received = Buffer.alloc(0);
  private sent = 0;
  private sentAtAnswer = -1;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  readonly done: Promise<void>;

  constructor(
    port: number,
    head: string,
    private readonly options: {
      declaredLength: number;
      firstChunk: number;
      chunkBytes: number;
      everyMs: number;
      holdMs: number;
    },
  ) {
    this.socket = connect({ host: '127.0.0.1', port });
    this.socket.setNoDelay(true);
    this.socket.on('error', () => {});
    this.socket.on('data', (chunk: Buffer) => {
      if (this.sentAtAnswer < 0) this.sentAtAnswer = this.sent;
      this.received = Buffer.concat([this.received, chunk]);
    });
    this.done = new Promise((resolve) => {
      this.socket.on('close', () => {
        this.closed = true;
        clearInterval(this.timer);
        resolve();
      });
    });
    this.socket.once('connect', () => {
      this.socket.write(head);
      this.write(options.firstChunk);
      const stopAt = Date.now() + options.holdMs;
      this.timer = setInterval(() => {
        if (this.closed || this.received.length > 0 || Date.now() > stopAt) {
          clearInterval(this.timer);
          return;
        }
        this.write(options.chunkBytes);
      }, options.everyMs);
    });
  }

  private write(bytes: number): void {
    const n = Math.min(bytes, this.options.declaredLength - 1 - this.sent);
    if (n <= 0 || this.closed) return;
    this.socket.write(Buffer.alloc(n, 0x20));
    this.sent += n;
  }

  get answered(): boolean {
    return this.received.includes('\r\n\r\n');
  }

  outcome(): RawOutcome {
    const text = this.received.toString('latin1');
    const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1];
    const bodyStart = text.indexOf('\r\n\r\n');
    let code: string | undefined;
    try {
      code = (JSON.parse(text.slice(bodyStart + 4)) as { code?: string }).code;
    } catch {
      code = undefined;
    }
    return {
      status: status === undefined ? undefined : Number(status),
      code,
      retryAfter: /\r\nretry-after: ([^\r]*)/i.exec(text)?.[1],
      closedByServer: this.closed,
      bodyBytesSentBeforeAnswer: this.sentAtAnswer,
    };
  }

  release(): void {
    clearInterval(this.timer);
    this.socket.destroy();
  }
}

const postHead = (path: string, length: number, headers: Record<string, string> = {}): string =>
  `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n${Object.entries(
    headers,
  )
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}\r\n`;

/** Samples `ingest`'s RSS every 100 ms until `stop` is called; returns the highest seen. */
function sampleRss(ingest: IngestProcess): { stop: () => number } {
  let peak = ingest.rssBytes() ?? 0;
  const timer = setInterval(() => {
    peak = Math.max(peak, ingest.rssBytes() ?? 0);
  }, 100);
  return {
    stop: () => {
      clearInterval(timer);
      return Math.max(peak, ingest.rssBytes() ?? 0);
    },
  };
}

/** Authenticated traffic while `busy` resolves: one event at a time; every answer's status. */
async function legitimateTraffic(port: number, until: () => boolean): Promise<number[]> {
  const statuses: number[] = [];
  const deadline = Date.now() + 60_000;
  while (!until() && Date.now() < deadline) {
    try {
      const reply = await post(port, '/activity', eventBody('legit'), { 'x-api-key': API_KEY });
      statuses.push(reply.status);
    } catch (err) {
      statuses.push(-1);
      logger.warn({ err }, 'legitimate request failed');
    }
    await sleep(20);
  }
  return statuses;
}

/** Warms ingest up (JIT, producer) so that the RSS baseline is not its start-up. */
async function warmUp(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const reply = await post(port, '/activity', eventBody('warm'), { 'x-api-key': API_KEY });
    assert.equal(reply.status, 200, reply.text);
  }
}

test('slow-upload attack: every unauthenticated upload is 401 before its body is read', async (t) => {
  const ingest = await startIngest({ API_KEYS: API_KEY });
  await warmUp(ingest.port);
  const baseline = ingest.rssBytes() ?? 0;
  const rss = sampleRss(ingest);

  // 400 attackers at once, each reconnecting as soon as it is thrown out, for 4 s.
  const ATTACKERS = 400;
  const ATTACK_MS = 4_000;
  const declaredLength = MAX_BODY_BYTES - 1;
  const attackers: SlowUpload[] = [];
  const attackEnds = Date.now() + ATTACK_MS;
  let attackOver = false;
  const legit = legitimateTraffic(ingest.port, () => attackOver);
  await withDeadline(
    Promise.all(
      Array.from({ length: ATTACKERS }, async () => {
        for (let round = 0; round < 1_000 && Date.now() < attackEnds; round++) {
          // The head, then the body trickled: 4 KiB every 100 ms.
          const upload = new SlowUpload(ingest.port, postHead('/activity', declaredLength), {
            declaredLength,
            firstChunk: 0,
            chunkBytes: 4 * 1024,
            everyMs: 100,
            holdMs: 5_000,
          });
          attackers.push(upload);
          await upload.done;
        }
      }),
    ),
    ATTACK_MS + 10_000,
    'the server closing every attacking connection',
  ).finally(() => {
    attackOver = true;
  });
  const legitStatuses = await legit;
  const peak = rss.stop();
  for (const a of attackers) a.release();

  const outcomes = attackers.map((a) => a.outcome());
  const unauthorized = outcomes.filter((o) => o.status === 401 && o.code === 'missing_api_key');
  const maxSent = Math.max(...outcomes.map((o) => o.bodyBytesSentBeforeAnswer));
  t.diagnostic(
    `${unauthorized.length}/${attackers.length} uploads (${ATTACKERS} at once for ${ATTACK_MS} ms) answered 401; at most ${maxSent} body bytes sent before an answer; RSS ${(baseline / MIB).toFixed(1)} MiB -> peak ${(peak / MIB).toFixed(1)} MiB (+${((peak - baseline) / MIB).toFixed(1)}); legitimate ${legitStatuses.filter((s) => s === 200).length}/${legitStatuses.length} 200`,
  );
  assert.ok(attackers.length >= ATTACKERS, `${attackers.length} attacking uploads`);
  assert.equal(unauthorized.length, attackers.length, JSON.stringify(outcomes.slice(0, 3)));
  assert.ok(
    outcomes.every((o) => o.closedByServer),
    'the server closed every connection',
  );
  // The answer comes from the head: it arrives before the trickle gets anywhere near the body.
  assert.ok(maxSent < declaredLength / 4, `${maxSent} bytes sent before an answer`);
  assert.ok(peak - baseline < RSS_GROWTH_LIMIT, `RSS grew ${(peak - baseline) / MIB} MiB`);
  assert.ok(legitStatuses.length >= 10, `only ${legitStatuses.length} legitimate requests`);
  assert.deepEqual(
    legitStatuses.filter((s) => s !== 200),
    [],
    'authenticated traffic is served during the attack',
  );
  await ingest.signal('SIGTERM', 30_000);
});

test('past MAX_CONCURRENT_REQUESTS and MAX_BUFFERED_BYTES: 503 overloaded, memory flat, recovery', async (t) => {
  const ingest = await startIngest({ API_KEYS: API_KEY });
  await warmUp(ingest.port);
  const baseline = ingest.rssBytes() ?? 0;
  const rss = sampleRss(ingest);
  const auth = { 'x-api-key': API_KEY };

  // Concurrency: authenticated uploads that never finish, each declaring 1,000 bytes.
  const HOLDERS = MAX_CONCURRENT_REQUESTS + 76;
  const holders: SlowUpload[] = [];
  for (let i = 0; i < HOLDERS; i++) {
    holders.push(
      new SlowUpload(ingest.port, postHead('/activity', 1000, auth), {
        declaredLength: 1000,
        firstChunk: 10,
        chunkBytes: 1,
        everyMs: 1_000,
        holdMs: 8_000,
      }),
    );
    // Open them in order, a few at a time, so the admitted ones are the first ones.
    if (i % 64 === 63) await sleep(20);
  }
  await waitFor(
    async () =>
      holders.filter((h) => h.answered).length >= HOLDERS - MAX_CONCURRENT_REQUESTS
        ? true
        : undefined,
    { timeoutMs: 10_000, what: 'the uploads past the bound to be answered' },
  );
  await sleep(300);
  const refusedOutcomes = holders.filter((h) => h.answered).map((h) => h.outcome());
  const whileFull = await post(ingest.port, '/activity', eventBody('full'), auth);
  const concurrencyPeak = rss.stop();
  for (const h of holders) h.release();

  t.diagnostic(
    `${HOLDERS} held uploads: ${refusedOutcomes.length} answered (${refusedOutcomes.filter((o) => o.status === 503 && o.code === 'overloaded').length} 503 overloaded); one more request: ${whileFull.status}; RSS +${((concurrencyPeak - baseline) / MIB).toFixed(1)} MiB`,
  );
  assert.equal(refusedOutcomes.length, HOLDERS - MAX_CONCURRENT_REQUESTS);
  for (const outcome of refusedOutcomes) {
    assert.equal(outcome.status, 503, JSON.stringify(outcome));
    assert.equal(outcome.code, 'overloaded');
    assert.match(outcome.retryAfter ?? '', /^[1-9]\d*$/);
  }
  assert.equal(whileFull.status, 503, whileFull.text);
  assert.equal((JSON.parse(whileFull.text) as { code: string }).code, 'overloaded');
  assert.ok(concurrencyPeak - baseline < RSS_GROWTH_LIMIT);

  // Recovery once the held uploads are gone.
  await waitFor(
    async () => {
      const reply = await post(ingest.port, '/activity', eventBody('after'), auth);
      return reply.status === 200 ? true : undefined;
    },
    { timeoutMs: 5_000, what: 'a 200 once the uploads are gone' },
  );

  // Bytes: uploads declaring just under MAX_BODY_BYTES, each actually sending 256 KiB.
  const bytesRss = sampleRss(ingest);
  const BIG = 100;
  const declaredLength = MAX_BODY_BYTES - 1;
  const admittable = Math.floor(MAX_BUFFERED_BYTES / declaredLength);
  const big: SlowUpload[] = [];
  for (let i = 0; i < BIG; i++) {
    big.push(
      new SlowUpload(ingest.port, postHead('/activity', declaredLength, auth), {
        declaredLength,
        firstChunk: 256 * 1024,
        chunkBytes: 1,
        everyMs: 1_000,
        holdMs: 8_000,
      }),
    );
    if (i % 16 === 15) await sleep(50);
  }
  await waitFor(
    async () => (big.filter((h) => h.answered).length >= BIG - admittable ? true : undefined),
    { timeoutMs: 10_000, what: 'the big uploads past the byte bound to be answered' },
  );
  await sleep(500);
  const bigRefused = big.filter((h) => h.answered).map((h) => h.outcome());
  const bytesPeak = bytesRss.stop();
  for (const h of big) h.release();
  t.diagnostic(
    `${BIG} uploads of ${declaredLength} bytes: ${bigRefused.length} answered 503 (bound admits ${admittable}); RSS +${((bytesPeak - baseline) / MIB).toFixed(1)} MiB over the first baseline`,
  );
  assert.equal(bigRefused.length, BIG - admittable);
  assert.ok(bigRefused.every((o) => o.status === 503 && o.code === 'overloaded'));
  assert.ok(
    bytesPeak - baseline < RSS_GROWTH_LIMIT,
    `RSS grew ${(bytesPeak - baseline) / MIB} MiB`,
  );

  await waitFor(
    async () => {
      const reply = await post(ingest.port, '/activity', eventBody('after'), auth);
      return reply.status === 200 ? true : undefined;
    },
    { timeoutMs: 5_000, what: 'a 200 once the big uploads are gone' },
  );
  await ingest.signal('SIGTERM', 30_000);
});

/**
 * Sends `count` requests pipelined on one kept-alive connection, `window` at a time, and returns
 * their statuses in order. `headersOf(i)` gives request i's extra headers.
 */
async function pipelined(
  port: number,
  count: number,
  headersOf: (i: number) => string,
  window = 256,
): Promise<number[]> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const statuses: number[] = [];
  let buffer: Buffer = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  let failed: Error | undefined;
  socket.on('data', (chunk: Buffer) => {
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
    // Parse whole responses: status line, headers, Content-Length bytes of body.
    for (;;) {
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) break;
      const head = buffer.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (buffer.length < end + 4 + length) break;
      statuses.push(Number(head.slice(9, 12)));
      buffer = buffer.subarray(end + 4 + length);
    }
    wake?.();
  });
  socket.on('error', (err) => {
    failed = err;
    wake?.();
  });
  socket.on('close', () => {
    failed ??= new Error(`connection closed after ${statuses.length} answers`);
    wake?.();
  });
  const deadline = Date.now() + 120_000;
  try {
    for (let sent = 0; sent < count; ) {
      const n = Math.min(window, count - sent);
      let batch = '';
      for (let i = sent; i < sent + n; i++) {
        batch += `POST /activity HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 0\r\n${headersOf(i)}\r\n`;
      }
      socket.write(batch);
      sent += n;
      while (statuses.length < sent) {
        if (failed !== undefined) throw failed;
        if (Date.now() > deadline) throw new Error(`pipelining: ${statuses.length} of ${count}`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 1_000);
        });
      }
    }
  } finally {
    socket.destroy();
  }
  return statuses;
}

test('the limiter behind a trusted proxy: 200,000 spoofed addresses reset no one', async (t) => {
  // A long refill (burst / rate = 60 s) keeps every sprayed address in the table for the whole
  // run, so the spray fills it (100,000 clients) and goes on past it.
  const RATE = 1;
  const BURST = 60;
  const TABLE = 100_000;
  const ingest = await startIngest({
    TRUSTED_PROXIES: '127.0.0.1',
    RATE_LIMIT_PER_SEC: String(RATE),
    RATE_LIMIT_BURST: String(BURST),
  });
  const SPOOFED = 200_000;
  const LANES = 4;
  const started = Date.now();
  const abuser = { admitted: 0, refused: 0 };
  const legit = { admitted: 0, refused: 0 };
  let sprayDone = false;
  const send = async (address: string, tally: { admitted: number; refused: number }) => {
    const reply = await post(ingest.port, '/activity', '', { 'x-forwarded-for': address });
    // Content-Length 0: past the limiter it is 400 invalid_json, and nothing is produced.
    if (reply.status === 429) tally.refused++;
    else if (reply.status === 400) tally.admitted++;
    else throw new Error(`unexpected ${reply.status} ${reply.text}`);
  };
  // Both go through the same proxy, their own addresses forwarded, and are seen first.
  await send('203.0.113.66', abuser);
  await send('198.51.100.7', legit);
  // The abuser: eight requests at a time, as fast as they are answered.
  const abuse = Promise.all(
    Array.from({ length: 8 }, async () => {
      const deadline = Date.now() + 120_000;
      while (!sprayDone && Date.now() < deadline) await send('203.0.113.66', abuser);
    }),
  );
  // The legitimate client: one request every 2 s, well within its burst.
  const legitimate = (async () => {
    const deadline = Date.now() + 120_000;
    while (!sprayDone && Date.now() < deadline) {
      await sleep(2_000);
      await send('198.51.100.7', legit);
    }
  })();
  // Addresses from 100.64.0.0/10, each used once: 200,000 distinct clients as ingest sees them.
  const address = (i: number): string => `100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  const lanes = await Promise.all(
    Array.from({ length: LANES }, (_, lane) =>
      pipelined(
        ingest.port,
        SPOOFED / LANES,
        (i) => `x-forwarded-for: 192.0.2.1, ${address(lane * (SPOOFED / LANES) + i)}\r\n`,
      ),
    ),
  ).finally(() => {
    sprayDone = true;
  });
  await Promise.all([abuse, legitimate]);
  const elapsedSec = (Date.now() - started) / 1000;
  const statuses = lanes.flat();
  const spray = {
    admitted: statuses.filter((s) => s === 400).length,
    refused: statuses.filter((s) => s === 429).length,
  };
  t.diagnostic(
    `${SPOOFED} spoofed requests in ${elapsedSec.toFixed(1)} s: ${spray.admitted} admitted, ${spray.refused} limited; abuser ${abuser.admitted} admitted / ${abuser.refused} limited; legitimate ${legit.admitted} admitted / ${legit.refused} limited`,
  );
  assert.equal(spray.admitted + spray.refused, SPOOFED);
  // New clients past a full table share one bucket: the spray gets the table's worth of
  // first requests and one bucket more, not a fresh bucket per address.
  const bucket = BURST + Math.ceil(RATE * elapsedSec) + 1;
  assert.ok(spray.admitted <= TABLE + bucket, `the spray was admitted ${spray.admitted} times`);
  // The abuser gets its burst and its rate, nothing more, however many others come and go.
  assert.ok(abuser.admitted <= bucket, `abuser admitted ${abuser.admitted} times`);
  assert.ok(abuser.refused > 0, 'the abuser was limited');
  assert.ok(legit.admitted >= 3, `legitimate admitted ${legit.admitted}`);
  assert.equal(legit.refused, 0, 'the legitimate client is never limited');

  // From a peer that is not a trusted proxy, X-Forwarded-For is ignored: all one client.
  const untrusting = await startIngest({
    TRUSTED_PROXIES: '10.0.0.0/8',
    RATE_LIMIT_PER_SEC: '1',
    RATE_LIMIT_BURST: '2',
  });
  const answers = await pipelined(
    untrusting.port,
    50,
    (i) => `x-forwarded-for: ${address(i)}\r\n`,
    50,
  );
  assert.ok(answers.filter((s) => s === 400).length <= 3, JSON.stringify(answers));
  await Promise.all([ingest.signal('SIGTERM', 30_000), untrusting.signal('SIGTERM', 30_000)]);
});

test('rolling shutdown under load: no refusal during the drain delay, no acknowledged event lost', async (t) => {
  // The delay is what is tested: 2 s keeps the test short (production sets it, e.g. k8s 10 s).
  const DRAIN_DELAY_MS = 2_000;
  const ingest = await startIngest({ DRAIN_DELAY_SEC: String(DRAIN_DELAY_MS / 1000) });
  const topic = topics.at(-1) as string;
  const acknowledged = new Set<string>();
  const refusals: number[] = [];
  const otherFailures: Array<{ at: number; what: string }> = [];
  let served = 0;
  let stop = false;
  const WORKERS = 8;
  const workers = Array.from({ length: WORKERS }, async (_, w) => {
    const deadline = Date.now() + 60_000;
    for (let i = 0; !stop && Date.now() < deadline; i++) {
      const userId = `drain-${w}-${i}`;
      try {
        const reply = await post(
          ingest.port,
          '/activity',
          JSON.stringify({ user_id: userId, activity_type: 'page_view' }),
        );
        if (reply.status === 200) {
          acknowledged.add(userId);
          served++;
        } else otherFailures.push({ at: Date.now(), what: `${reply.status} ${reply.text}` });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED') {
          refusals.push(Date.now());
          await sleep(20);
        } else otherFailures.push({ at: Date.now(), what: String(err) });
      }
    }
  });
  await sleep(1_000);
  const servedBefore = served;
  const signalledAt = Date.now();
  const exited = ingest.signal('SIGTERM', 30_000);
  const readyz = await waitFor(
    async () => {
      try {
        const response = await fetch(`http://127.0.0.1:${ingest.port}/readyz`, {
          signal: AbortSignal.timeout(1_000),
        });
        await response.arrayBuffer();
        return response.status === 503 ? Date.now() - signalledAt : undefined;
      } catch {
        return undefined;
      }
    },
    { timeoutMs: DRAIN_DELAY_MS, intervalMs: 20, what: '/readyz to turn 503' },
  );
  await exited;
  stop = true;
  await Promise.all(workers);
  const refusedDuringDelay = refusals.filter((at) => at < signalledAt + DRAIN_DELAY_MS).length;
  t.diagnostic(
    `served ${servedBefore} before SIGTERM, ${served - servedBefore} after; /readyz 503 after ${readyz} ms; refusals ${refusals.length} (first ${refusals.length > 0 ? (refusals[0] as number) - signalledAt : '-'} ms after SIGTERM), ${refusedDuringDelay} within the ${DRAIN_DELAY_MS} ms delay; other answers ${JSON.stringify(otherFailures.map((f) => `${f.at - signalledAt} ms: ${f.what.slice(0, 40)}`))}`,
  );
  assert.equal(refusedDuringDelay, 0, 'no connection refused during the drain delay');
  assert.ok(served - servedBefore > 0, 'requests were served after SIGTERM');
  // Once the listener is closed, a request on a connection accepted just before it is 503
  // `draining` (not stored): after the delay, never during it.
  assert.deepEqual(
    otherFailures.filter((f) => f.at < signalledAt + DRAIN_DELAY_MS),
    [],
    'every request during the drain delay is served',
  );

  // Every acknowledged event is in the topic.
  const kafka = createKafka({ brokers: [stack.kafkaBrokers], clientId: 'drain-reader', logger });
  const consumer = kafka.consumer({
    kafkaJS: { groupId: `${topic}-reader`, fromBeginning: true },
  });
  const stored = new Set<string>();
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic] });
    await consumer.run({
      eachMessage: async ({ message }) => {
        const key = message.key?.toString();
        if (key !== undefined) stored.add(key);
      },
    });
    await waitFor(
      async () => ([...acknowledged].every((id) => stored.has(id)) ? true : undefined),
      {
        timeoutMs: 30_000,
        what: `${acknowledged.size} acknowledged events in the topic`,
        describe: () => `${stored.size} stored`,
      },
    );
  } finally {
    await withDeadline(consumer.disconnect(), 10_000, 'disconnecting the consumer');
  }
});
