/**
 * Per-test broker and database resources: a topic (and its dead-letter topic), a consumer group
 * and a PostgreSQL schema named for the test, and their removal afterwards, each step bounded so
 * that cleanup can never hang a run.
 */
import pg from 'pg';
import { readAggregatorConfig } from '../aggregator/config.js';
import { type AggregatorService, startAggregator } from '../aggregator/service.js';
import { readIngestConfig } from '../ingest/config.js';
import { type IngestService, startIngest } from '../ingest/service.js';
import { createKafka, ensureTopic, type Kafka } from '../shared/kafka-client.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { type StackAddresses, uniqueName } from '../shared/testing.js';

export interface TestResources {
  topic: string;
  deadLetterTopic: string;
  group: string;
  /** A second group, for the test's own consumers (reading the dead-letter topic). */
  readerGroup: string;
  schema: string;
  kafka: Kafka;
  /** A connection for the test's own queries (not the aggregator's). */
  db: pg.Client;
  /** The environment every service of the test shares. */
  env: Record<string, string>;
  /**
   * Creates the topic with `partitions` partitions and waits until the broker's metadata has it.
   * Services then find it existing: `ensureTopic` right after a creation can fail with "unknown
   * topic or partition" while the new topic's metadata propagates.
   */
  createTopic(partitions: number): Promise<void>;
  /** Registers a close (of a service the test started) to run at cleanup, newest first. */
  defer(what: string, close: () => Promise<unknown>): void;
  /**
   * Creates the topic with `TOPIC_PARTITIONS` of `env` (so that ingest finds it with its
   * partitions) and starts ingest in this process; cleanup closes it.
   */
  startIngest(env: Record<string, string>): Promise<IngestService>;
  /** Starts an aggregator in this process; cleanup closes it. */
  startAggregator(env: Record<string, string>): Promise<AggregatorService>;
  /**
   * Runs the deferred closes, each under a deadline, then deletes the topics, the group and the
   * schema. Throws the first close that failed or hung: a shutdown bug fails the test.
   */
  cleanup(): Promise<void>;
}

const CLOSE_DEADLINE_MS = 15_000;

export async function createTestResources(
  prefix: string,
  stack: StackAddresses,
  logger: Logger,
): Promise<TestResources> {
  const name = uniqueName(prefix);
  const topic = `${name}.activity`;
  const deadLetterTopic = `${topic}.dlq`;
  const group = `${name}-group`;
  const readerGroup = `${name}-reader`;
  const kafka = createKafka({ brokers: stack.kafkaBrokers.split(','), clientId: 'test', logger });
  const db = new pg.Client({ connectionString: stack.databaseUrl });
  await db.connect();
  const deferred: Array<{ what: string; close: () => Promise<unknown> }> = [];
  const drop = async (): Promise<void> => {
    const admin = kafka.admin();
    const steps = [
      (async () => {
        await admin.connect();
        try {
          await admin.deleteGroups([group, readerGroup]).catch(() => {});
          // The broker auto-creates topics: a client still refreshing its metadata right after
          // the deletion can bring one back (seen after the crash test). Check, delete again.
          let left = [topic, deadLetterTopic];
          for (let attempt = 0; attempt < 4 && left.length > 0; attempt++) {
            await admin.deleteTopics({ topics: left, timeout: 10_000 }).catch(() => {});
            await sleep(750);
            const existing = new Set(await admin.listTopics());
            left = left.filter((name) => existing.has(name));
          }
        } finally {
          await admin.disconnect();
        }
      })(),
      (async () => {
        await db.query(`DROP SCHEMA IF EXISTS ${name} CASCADE`);
        await db.end();
      })(),
    ];
    await Promise.allSettled(steps.map((step) => withDeadline(step, 15_000, 'test cleanup')));
  };
  const createTopic = async (partitions: number): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      try {
        await ensureTopic(kafka, topic, partitions);
        return;
      } catch (err) {
        if (attempt >= 10) throw err;
        await sleep(300);
      }
    }
  };
  const defer = (what: string, close: () => Promise<unknown>): void => {
    deferred.push({ what, close });
  };
  return {
    topic,
    deadLetterTopic,
    group,
    readerGroup,
    schema: name,
    kafka,
    db,
    env: {
      KAFKA_BROKERS: stack.kafkaBrokers,
      DATABASE_URL: stack.databaseUrl,
      DATABASE_SCHEMA: name,
      TOPIC: topic,
      CONSUMER_GROUP: group,
    },
    createTopic,
    defer,
    startIngest: async (env) => {
      await createTopic(Number(env.TOPIC_PARTITIONS ?? '6'));
      const ingest = await startIngest(readIngestConfig(env), logger.child({ service: 'ingest' }));
      defer('closing ingest', () => ingest.close());
      return ingest;
    },
    startAggregator: async (env) => {
      const aggregator = await startAggregator(
        readAggregatorConfig(env),
        logger.child({ service: 'aggregator' }),
      );
      defer('closing the aggregator', () => aggregator.close());
      return aggregator;
    },
    cleanup: async () => {
      let failure: unknown;
      for (const { what, close } of deferred.reverse()) {
        try {
          await withDeadline(close(), CLOSE_DEADLINE_MS, what);
        } catch (err) {
          failure ??= err;
        }
      }
      await drop();
      if (failure !== undefined) throw failure;
    },
  };
}
