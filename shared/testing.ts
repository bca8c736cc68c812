/**
 * Helpers for integration tests: the stack's addresses, unique names per test, polling with a
 * deadline. Integration tests run under `make test`, which starts one broker and one PostgreSQL
 * for the whole run and passes their addresses in KAFKA_BROKERS and DATABASE_URL.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { createKafka, type Kafka } from './kafka-client.js';
import { withDeadline } from './lifecycle.js';
import type { Logger } from './logger.js';

export interface StackAddresses {
  kafkaBrokers: string;
  databaseUrl: string;
}

/** The broker and database of this test run; throws with what to do when they are missing. */
export function stackFromEnv(env: NodeJS.ProcessEnv = process.env): StackAddresses {
  const kafkaBrokers = env.KAFKA_BROKERS;
  const databaseUrl = env.DATABASE_URL;
  if (kafkaBrokers === undefined || databaseUrl === undefined) {
    throw new Error(
      'integration tests need KAFKA_BROKERS and DATABASE_URL: run them with `make test`, which starts a broker and PostgreSQL',
    );
  }
  return { kafkaBrokers, databaseUrl };
}

type Admin = ReturnType<Kafka['admin']>;

/**
 * Runs `use` with an admin client of the broker at `brokers` (comma-separated), connected for
 * it and disconnected after, all within 20 s: a test's cleanup (deleting its topics) and its
 * looks at the topic.
 */
export async function withAdmin<T>(
  brokers: string,
  logger: Logger,
  use: (admin: Admin) => Promise<T>,
): Promise<T> {
  const admin = createKafka({
    brokers: brokers.split(','),
    clientId: 'test-admin',
    logger,
  }).admin();
  return withDeadline(
    (async () => {
      await admin.connect();
      try {
        return await use(admin);
      } finally {
        await admin.disconnect();
      }
    })(),
    20_000,
    'the test admin client',
  );
}

/** Deletes a test's topics. */
export function deleteTopics(brokers: string, topics: string[], logger: Logger): Promise<void> {
  return withAdmin(brokers, logger, (admin) => admin.deleteTopics({ topics, timeout: 10_000 }));
}

/** A name unique to this test: topics, consumer groups and schemas never collide. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
}

/** A TCP port that was free a moment ago. */
export async function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Polls `probe` until it returns a value other than `undefined`, or fails after `timeoutMs`
 * with the last value `describe` gives, so a failing test says what it saw.
 */
export async function waitFor<T>(
  probe: () => Promise<T | undefined>,
  options: { timeoutMs: number; intervalMs?: number; what: string; describe?: () => string },
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) {
      const seen = options.describe === undefined ? '' : `; last seen: ${options.describe()}`;
      throw new Error(`timed out after ${options.timeoutMs} ms waiting for ${options.what}${seen}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 200));
  }
}

/**
 * mulberry32: a small seeded PRNG returning uniform numbers in [0, 1), so that a failing random
 * input can be reproduced from its seed.
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/**
 * The text of /metrics of the service listening on `port` of 127.0.0.1, or undefined when the
 * service does not answer.
 */
export async function scrapeMetrics(port: number): Promise<string | undefined> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/metrics`, {
      signal: AbortSignal.timeout(2_000),
    });
    if (response.status !== 200) {
      await response.arrayBuffer().catch(() => undefined);
      return undefined;
    }
    return await response.text();
  } catch {
    return undefined;
  }
}

/**
 * The sum of a metric's samples in `text` (the Prometheus text format) — every label set, or
 * only those carrying all of `labels` — 0 when it has none.
 */
export function sumSamples(
  text: string,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number {
  const wanted = Object.entries(labels).map(([label, value]) => `${label}="${value}"`);
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name} `) && !line.startsWith(`${name}{`)) continue;
    const labelText = line.startsWith(`${name}{`)
      ? line.slice(name.length + 1, line.indexOf('}'))
      : '';
    // Label values here are plain (partition numbers, reasons): no escaped quotes or commas.
    const present = new Set(labelText.split(','));
    if (!wanted.every((pair) => present.has(pair))) continue;
    total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

/**
 * The sum of a metric's samples on the /metrics of the service listening on `port` of
 * 127.0.0.1 — every label set, or only those carrying all of `labels` — 0 when it has none, or
 * undefined when the service does not answer.
 */
export async function scrapeMetric(
  port: number,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): Promise<number | undefined> {
  const text = await scrapeMetrics(port);
  return text === undefined ? undefined : sumSamples(text, name, labels);
}
