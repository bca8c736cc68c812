/**
 * Ingest through a broker outage, against a broker of its own (not the shared one of the test
 * run, which other tests use): accepted while up, a prompt 503 + Retry-After for every event while
 * the broker is down (killed), accepted again once it is back on the same port and data. Then the
 * contract that matters to a client that retries on 503: the topic holds exactly the events
 * answered 200, none of those answered 503. Requests keep flowing across the crash and the
 * restart, and a staggered burst is in flight at the moment the broker dies, so the events whose
 * acknowledgement is lost in the crash are checked too.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { KafkaBroker } from '../deploy/local/kafka-broker.js';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { createKafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, uniqueName, waitFor } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

const ACK_TIMEOUT_MS = 2_000;
const REQUEST_TIMEOUT_MS = 5_000;
/**
 * How long a 503 may take while the broker is down: ACK_TIMEOUT_SEC, plus the second librdkafka
 * may take to notice a message timed out, plus a little for a loaded machine.
 */
const PROMPT_MS = ACK_TIMEOUT_MS + 1_500;
const BROKER_DOWN_CODES = ['broker_timeout', 'broker_unavailable', 'queue_full'];
/**
 * 503 codes whose outcome is unknown: no acknowledgement arrived, yet the broker may have written
 * the event and lost the acknowledgement (librdkafka's "possibly persisted"). Such an event may be
 * in the topic, at most once. Every other refusal means "not stored".
 */
const UNKNOWN_OUTCOME_CODES = ['broker_timeout', 'deadline_exceeded'];

const logger = createLogger('test', 'warn');
const topic = uniqueName('outage');
const runId = randomBytes(4).toString('hex');
const dataDir = join(REPO_ROOT, '.local', 'test', `outage-${runId}`);

let port: number;
let controllerPort: number;
let brokers: string;
/** The running broker; a new instance for each start (a KafkaBroker's stop() runs only once). */
let broker: KafkaBroker | undefined;
let starts = 0;
let ingest: IngestService | undefined;

/** Every answer ingest gave in this file, by `user_id` (unique per event). */
const answers = new Map<string, Answer>();

interface Answer {
  /** HTTP status; 0 when no answer arrived (connection error). */
  status: number;
  code?: string;
  retryAfter?: string;
  ms: number;
  phase: string;
}

let sequence = 0;
const userId = (phase: string): string => `${runId}-${phase}-${++sequence}`;

function brokerLog(n: number): string {
  return join(dataDir, `kafka-${n}.log`);
}

async function startBroker(): Promise<void> {
  starts++;
  const next = new KafkaBroker({
    dataDir,
    logFile: brokerLog(starts),
    libsDir: join(REPO_ROOT, '.local', 'kafka', 'libs'),
    log4jConfig: join(REPO_ROOT, 'deploy', 'kafka', 'log4j2.yaml'),
    port,
    controllerPort,
    heap: '512m',
  });
  broker = next;
  const info = await next.start();
  brokers = info.brokers;
}

before(async () => {
  port = await freeTcpPort();
  do controllerPort = await freeTcpPort();
  while (controllerPort === port);
  await startBroker();
  ingest = await startIngest(
    readIngestConfig({
      KAFKA_BROKERS: brokers,
      TOPIC: topic,
      TOPIC_PARTITIONS: '3',
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: String(await freeTcpPort()),
      ACK_TIMEOUT_SEC: String(ACK_TIMEOUT_MS / 1000),
      REQUEST_TIMEOUT_SEC: String(REQUEST_TIMEOUT_MS / 1000),
      SHUTDOWN_GRACE_SEC: '5',
    }),
    logger.child({ service: 'ingest' }),
  );
});

after(async () => {
  traffic?.stop();
  const results = await Promise.allSettled([
    withDeadline(ingest?.close() ?? Promise.resolve(), 15_000, 'closing ingest'),
    withDeadline(broker?.kill() ?? Promise.resolve(), 15_000, 'killing the outage broker'),
  ]);
  await withDeadline(traffic?.done ?? Promise.resolve(), 10_000, 'stopping the traffic');
  await rm(dataDir, { recursive: true, force: true });
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

// ---------------------------------------------------------------------------------------------
// Sending and recording

interface Reply {
  status: number;
  body: Record<string, unknown>;
  retryAfter: string | undefined;
  ms: number;
}

/** One POST on its own connection; status 0 when the connection failed before an answer. */
function post(path: string, body: string, contentType = 'application/json'): Promise<Reply> {
  const service = ingest;
  assert.ok(service !== undefined, 'ingest is not running');
  const started = Date.now();
  return new Promise((resolve) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port: service.port,
        method: 'POST',
        path,
        agent: false,
        headers: { 'content-type': contentType, 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          let parsed: Record<string, unknown> = {};
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>;
          } catch {
            // Not JSON: left empty, the status tells.
          }
          const retryAfter = res.headers['retry-after'];
          resolve({
            status: res.statusCode ?? 0,
            body: parsed,
            retryAfter,
            ms: Date.now() - started,
          });
        });
        res.on('error', () => resolve({ status: 0, body: {}, retryAfter: undefined, ms: 0 }));
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS * 3, () => req.destroy(new Error('no answer')));
    req.on('error', (err) =>
      resolve({ status: 0, body: { error: err.message }, retryAfter: undefined, ms: 0 }),
    );
    req.end(body);
  });
}

/** Sends one event to POST /activity and records the answer. */
async function sendOne(phase: string): Promise<Answer> {
  const id = userId(phase);
  const reply = await post('/activity', JSON.stringify({ user_id: id, activity_type: 'click' }));
  const answer: Answer = {
    status: reply.status,
    ms: reply.ms,
    phase,
    ...(typeof reply.body.code === 'string' ? { code: reply.body.code } : {}),
    ...(reply.retryAfter === undefined ? {} : { retryAfter: reply.retryAfter }),
  };
  answers.set(id, answer);
  return answer;
}

/** Sends a batch to POST /activities and records each event's outcome from the answer. */
async function sendBatch(phase: string, size: number): Promise<Reply> {
  const ids = Array.from({ length: size }, () => userId(phase));
  const reply = await post(
    '/activities',
    JSON.stringify(ids.map((id) => ({ user_id: id, activity_type: 'page_view' }))),
  );
  const rejected = new Map(
    (Array.isArray(reply.body.rejected)
      ? (reply.body.rejected as Array<{ index: number; code: string }>)
      : []
    ).map((entry) => [entry.index, entry.code]),
  );
  ids.forEach((id, index) => {
    const stored = (reply.status === 200 || reply.status === 207) && !rejected.has(index);
    const code =
      rejected.get(index) ?? (typeof reply.body.code === 'string' ? reply.body.code : '');
    answers.set(id, {
      status: stored ? 200 : reply.status,
      ms: reply.ms,
      phase,
      ...(stored ? {} : { code }),
      ...(reply.retryAfter === undefined ? {} : { retryAfter: reply.retryAfter }),
    });
  });
  return reply;
}

/**
 * Clients sending one event after another, each right after the previous answer: across the
 * crash some are in flight at the moment the broker dies, which is where "503 but stored" would
 * show.
 */
class Traffic {
  private running = true;
  readonly done: Promise<void>;

  constructor(clients: number) {
    this.done = Promise.all(
      Array.from({ length: clients }, async () => {
        while (this.running) {
          await sendOne('traffic');
          await sleep(10);
        }
      }),
    ).then(() => {});
  }

  stop(): void {
    this.running = false;
  }
}

let traffic: Traffic | undefined;

/** Answer counts for every phase, as JSON. */
function summariseAnswers(): string {
  const phases = ['up', 'traffic', 'crash', 'down', 'recovery', 'after'];
  return JSON.stringify(
    Object.fromEntries(
      phases.map((phase) => [phase, JSON.parse(describeAnswers(phase)) as unknown]),
    ),
  );
}

function describeAnswers(phase: string): string {
  const seen = new Map<string, { count: number; maxMs: number }>();
  for (const answer of answers.values()) {
    if (answer.phase !== phase) continue;
    const key = `${answer.status}${answer.code === undefined ? '' : ` ${answer.code}`}`;
    const entry = seen.get(key) ?? { count: 0, maxMs: 0 };
    entry.count++;
    entry.maxMs = Math.max(entry.maxMs, answer.ms);
    seen.set(key, entry);
  }
  return JSON.stringify(Object.fromEntries(seen));
}

// ---------------------------------------------------------------------------------------------

test('while the broker is up, events are accepted (200)', async () => {
  for (let i = 0; i < 10; i++) {
    const answer = await sendOne('up');
    assert.equal(answer.status, 200, JSON.stringify(answer));
  }
  const batch = await sendBatch('up', 5);
  assert.equal(batch.status, 200, JSON.stringify(batch.body));
  assert.deepEqual(batch.body, { accepted: 5, rejected: [] });
});

test('while the broker is down, every event gets a prompt 503 + Retry-After', async () => {
  traffic = new Traffic(4);
  await sleep(500);
  // Events on their way to the broker when it dies, a few every few milliseconds around the
  // kill: some may reach the broker's log without their acknowledgement reaching ingest.
  const crashing: Array<Promise<Answer>> = [];
  const staggered = (async () => {
    for (let i = 0; i < 15; i++) {
      for (let j = 0; j < 4; j++) crashing.push(sendOne('crash'));
      await sleep(4);
    }
  })();
  await sleep(25);
  await withDeadline(broker?.kill() ?? Promise.resolve(), 15_000, 'killing the broker');
  await staggered;

  // Events sent once the broker is gone: one after another, then several at once, then a batch.
  const singles: Answer[] = [];
  for (let i = 0; i < 3; i++) singles.push(await sendOne('down'));
  singles.push(...(await Promise.all(Array.from({ length: 5 }, () => sendOne('down')))));
  const batch = await sendBatch('down', 4);
  await Promise.all(crashing);

  const prompt503 = (status: number, code: unknown, retryAfter: unknown, ms: number): boolean =>
    status === 503 &&
    BROKER_DOWN_CODES.includes(code as string) &&
    Number(retryAfter) >= 1 &&
    ms <= PROMPT_MS;
  const late = singles.filter((a) => !prompt503(a.status, a.code, a.retryAfter, a.ms));
  assert.deepEqual(
    late,
    [],
    `expected 503 + Retry-After within ${PROMPT_MS} ms for each of ${singles.length} events; all answers: ${JSON.stringify(singles)}`,
  );

  const batchSummary = JSON.stringify({ status: batch.status, ms: batch.ms, body: batch.body });
  assert.ok(prompt503(batch.status, batch.body.code, batch.retryAfter, batch.ms), batchSummary);
  assert.equal(batch.body.accepted, 0, batchSummary);
  for (const entry of batch.body.rejected as Array<Record<string, unknown>>) {
    assert.equal(entry.retryable, true, batchSummary);
    assert.ok(BROKER_DOWN_CODES.includes(entry.code as string), batchSummary);
  }
});

test('after the broker restarts on the same port and data, events are accepted again', async () => {
  const restarted = Date.now();
  await startBroker();
  await waitFor(
    async () => {
      const answer = await sendOne('recovery');
      if (answer.status === 200) return answer;
      await sleep(250);
      return undefined;
    },
    {
      timeoutMs: 60_000,
      intervalMs: 0,
      what: 'a 200 after the broker restarted',
      describe: () => describeAnswers('recovery'),
    },
  );
  const recoveredMs = Date.now() - restarted;
  assert.ok(recoveredMs < 60_000, `recovered after ${recoveredMs} ms`);

  // Steady again: every event accepted, the batch endpoint too.
  for (let i = 0; i < 5; i++) {
    const answer = await sendOne('after');
    assert.equal(answer.status, 200, JSON.stringify(answer));
  }
  const batch = await sendBatch('after', 5);
  assert.equal(batch.status, 200, JSON.stringify(batch.body));

  await sleep(500);
  traffic?.stop();
  await withDeadline(traffic?.done ?? Promise.resolve(), 3 * REQUEST_TIMEOUT_MS, 'traffic');
  const traffic200 = [...answers.values()].filter((a) => a.phase === 'traffic' && a.status === 200);
  assert.ok(traffic200.length > 0, describeAnswers('traffic'));
});

test('across the crash and the restart, every request got 200 or a retryable 503', async () => {
  const other = [...answers].filter(
    ([, a]) =>
      a.status !== 200 &&
      !(a.status === 503 && a.code !== undefined && BROKER_DOWN_CODES.includes(a.code)),
  );
  assert.deepEqual(
    other.map(([id, a]) => ({ id, ...a })),
    [],
    `answers other than 200 / 503 by phase: ${summariseAnswers()}`,
  );
});

test('the topic holds exactly the events answered 200: none answered 503', async () => {
  const acceptedIds = new Set([...answers].filter(([, a]) => a.status === 200).map(([id]) => id));
  const refusedIds = new Set([...answers].filter(([, a]) => a.status !== 200).map(([id]) => id));
  assert.ok(acceptedIds.size > 0 && refusedIds.size > 0);

  const kafka = createKafka({ brokers: [brokers], clientId: 'outage-reader', logger });
  const admin = kafka.admin();
  await admin.connect();
  let offsetsTotal = 0;
  try {
    for (const partition of await admin.fetchTopicOffsets(topic)) {
      offsetsTotal += Number(partition.high) - Number(partition.low);
    }
  } finally {
    await admin.disconnect();
  }

  const keys: string[] = [];
  const values: string[] = [];
  const consumer = kafka.consumer({
    kafkaJS: { groupId: `${topic}-reader`, fromBeginning: true },
  });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic] });
    await consumer.run({
      eachMessage: async ({ message }) => {
        keys.push(message.key?.toString() ?? '');
        values.push(message.value?.toString() ?? '');
      },
    });
    await waitFor(async () => (keys.length >= offsetsTotal ? true : undefined), {
      timeoutMs: 30_000,
      what: `all ${offsetsTotal} records`,
      describe: () => `${keys.length} records`,
    });
  } finally {
    await withDeadline(consumer.disconnect(), 10_000, 'disconnecting the consumer');
  }

  const unknownOutcome = (key: string): boolean => {
    const answer = answers.get(key);
    return answer?.status === 503 && UNKNOWN_OUTCOME_CODES.includes(answer.code as string);
  };
  const storedDespite503 = keys.filter(
    (key) => answers.get(key)?.status === 503 && !unknownOutcome(key),
  );
  const storedUnknown = keys.filter(unknownOutcome);
  const storedDespiteOther = keys.filter((key) => {
    const status = answers.get(key)?.status;
    return status !== undefined && status !== 200 && status !== 503;
  });
  const missing = [...acceptedIds].filter((id) => !keys.includes(id));
  // A record may be in the topic twice: librdkafka bumps the idempotent producer's epoch after a
  // timeout and re-sends what may already be stored (librdkafka issue 4953). Such a copy must be
  // the same bytes, event_id included, so that the aggregator counts it once per window.
  const duplicated = keys.filter((key, i) => keys.indexOf(key) !== i);
  const duplicates = duplicated.length;
  const firstValue = new Map<string, string>();
  const unlikeCopies = keys.filter((key, i) => {
    const value = values[i] as string;
    const first = firstValue.get(key);
    if (first === undefined) firstValue.set(key, value);
    return first !== undefined && first !== value;
  });
  const withoutEventId = values.filter(
    (value) => typeof (JSON.parse(value) as { event_id?: unknown }).event_id !== 'string',
  );
  const summary = JSON.stringify({
    answered200: acceptedIds.size,
    answeredOther: refusedIds.size,
    recordsInTopic: keys.length,
    offsetsInTopic: offsetsTotal,
    storedDespite503: storedDespite503.map((id) => ({ id, ...answers.get(id) })),
    storedWithUnknownOutcome: storedUnknown.length,
    storedDespiteOther: storedDespiteOther.map((id) => ({ id, ...answers.get(id) })),
    missing: missing.length,
    duplicates,
    duplicated: duplicated.map((id) => ({ id, ...answers.get(id) })),
    answers: JSON.parse(summariseAnswers()) as unknown,
  });
  assert.deepEqual(
    storedDespite503,
    [],
    `events answered 503 "not stored" (${BROKER_DOWN_CODES.filter((c) => !UNKNOWN_OUTCOME_CODES.includes(c)).join(', ')}, draining) are in the topic: ${summary}`,
  );
  assert.deepEqual(
    storedDespiteOther,
    [],
    `events answered neither 200 nor 503 (e.g. 408 "did not arrive") are in the topic: ${summary}`,
  );
  assert.deepEqual(missing, [], `events answered 200 are missing: ${summary}`);
  assert.deepEqual(unlikeCopies, [], `records of one event that differ: ${summary}`);
  assert.deepEqual(withoutEventId, [], 'every record carries an event_id');
  // Every 200 once, plus each unknown-outcome event at most once, counting distinct events.
  assert.equal(new Set(keys).size, acceptedIds.size + new Set(storedUnknown).size, summary);
});
