/**
 * The aggregator's Kafka consumer on the client's native API (`KafkaConsumer`, librdkafka's
 * high-level consumer), not its KafkaJS-compatible layer: `consume(n)` hands over the records
 * librdkafka has ready as one array, with no per-record promise, header conversion or message
 * cache. What the KafkaJS layer did for us is done by the caller: assignment and revocation in
 * the rebalance callback (`ActivityConsumer`), positions from PostgreSQL given with the
 * assignment, no offset ever stored or auto-committed.
 */

import type { Assignment, LibrdKafkaError, Message } from '@confluentinc/kafka-javascript';
import kafkaJavascript from '@confluentinc/kafka-javascript';
import { createClientLog } from '../shared/kafka-client.js';
import type { Logger } from '../shared/logger.js';

/** What the client offers but its type declarations leave out. */
export interface RdConsumer extends kafkaJavascript.KafkaConsumer {
  incrementalAssign(assignments: Assignment[]): this;
  incrementalUnassign(assignments: Assignment[]): this;
  /** 'NONE' until the group is joined. */
  rebalanceProtocol(): 'NONE' | 'COOPERATIVE' | 'EAGER';
  assignmentLost(): boolean;
  setDefaultIsTimeoutOnlyForFirstMessage(only: boolean): void;
}

/** librdkafka's codes for the two rebalance events. */
export const ASSIGN_PARTITIONS = -175;
export const REVOKE_PARTITIONS = -174;

/** Records asked for per `consume(n)`: one array, one call into the addon. */
export const CONSUME_MAX_MESSAGES = 5_000;
/** How long `consume(n)` waits for a first record before returning empty-handed. */
const CONSUME_WAIT_MS = 200;

/**
 * The consumer's fetch and prefetch settings, measured in bench/RESULTS.md
 * ("aggregate-catchup"); the client-consume baseline takes the same object.
 */
export const FETCH_SETTINGS = {
  /**
   * librdkafka's prefetch, at most (default 64 MiB). 16 MiB is tens of thousands of events,
   * seconds of work at the aggregator's rate, while a fetch of 8 MiB per partition (below) keeps
   * the broker round trips few.
   */
  'queued.max.messages.kbytes': 16_384,
  /** The most a fetch brings per partition (librdkafka's default 1 MiB). */
  'max.partition.fetch.bytes': 8 * 1024 * 1024,
  /**
   * How long librdkafka waits before fetching a partition again once its queue reached a bound
   * (the bytes above, or `queued.min.messages`). Its default, 1 s, is longer than the aggregator
   * takes to empty a full queue: it then waits for records the broker already has.
   */
  'fetch.queue.backoff.ms': 20,
} as const;

export interface NativeConsumerOptions {
  brokers: readonly string[];
  clientId: string;
  groupId: string;
  sessionTimeoutMs: number;
  offsetReset: 'stop' | 'earliest';
  /** Called on the main thread for every rebalance event (code, partitions). */
  onRebalance: (code: number, assignment: Assignment[]) => void;
}

/** Builds a consumer (not connected) with the aggregator's settings. */
export function createNativeConsumer(options: NativeConsumerOptions, logger: Logger): RdConsumer {
  const consumer = new kafkaJavascript.KafkaConsumer({
    'bootstrap.servers': options.brokers.join(','),
    'client.id': options.clientId,
    'group.id': options.groupId,
    'partition.assignment.strategy': 'cooperative-sticky',
    'session.timeout.ms': options.sessionTimeoutMs,
    // Several heartbeats per session, as the broker expects (librdkafka's default is 3 s).
    'heartbeat.interval.ms': Math.min(3000, Math.floor(options.sessionTimeoutMs / 3)),
    // Positions live in PostgreSQL: nothing is stored or committed to Kafka.
    'enable.auto.commit': false,
    'enable.auto.offset.store': false,
    // A position no longer in the topic (retention passed it, the topic was recreated) must
    // not be skipped silently: librdkafka's default jumps to the end. 'error' stops fetching
    // that partition; the watchdog's look finds it and says so (ActivityConsumer.noteEnds).
    'auto.offset.reset': options.offsetReset === 'earliest' ? 'earliest' : 'error',
    ...FETCH_SETTINGS,
    // As the KafkaJS layer set them, under which the chaos suite's broker faults were measured.
    'socket.timeout.ms': 30_000,
    'socket.connection.setup.timeout.ms': 11_000,
    'retry.backoff.ms': 300,
    'retry.backoff.max.ms': 30_000,
    // A batch held by the memory bound's flush can keep the loop from polling for a while.
    'max.poll.interval.ms': 600_000,
    event_cb: true,
    log_level: 4,
    rebalance_cb: (err: LibrdKafkaError | number | undefined, assignment: Assignment[]) => {
      const code = typeof err === 'number' ? err : (err?.code ?? 0);
      options.onRebalance(code, assignment);
    },
  }) as RdConsumer;
  const log = createClientLog(logger);
  consumer.on('event.log', (entry: { severity: number; fac: string; message: string }) => {
    if (entry.severity <= 3) log.error(entry.message, { fac: entry.fac });
    else if (entry.severity <= 4) log.warn(entry.message, { fac: entry.fac });
    else log.debug(entry.message, { fac: entry.fac });
  });
  consumer.on('event.error', (err: LibrdKafkaError) =>
    log.warn(`consumer error: ${err.message}`, { code: err.code }),
  );
  return consumer;
}

/** Connects and subscribes; consume calls return once a record is ready or after a short wait. */
export async function connectAndSubscribe(consumer: RdConsumer, topic: string): Promise<void> {
  await new Promise<void>((resolve, reject) =>
    consumer.connect({}, (err) => (err ? reject(err) : resolve())),
  );
  consumer.setDefaultConsumeTimeout(CONSUME_WAIT_MS);
  // Wait for the first record only; take whatever else is ready without waiting for more.
  consumer.setDefaultIsTimeoutOnlyForFirstMessage(true);
  consumer.subscribe([topic]);
}

/** Up to `max` records librdkafka has ready (all partitions), or none after a short wait. */
export function consumeBatch(consumer: RdConsumer, max: number): Promise<Message[]> {
  return new Promise((resolve, reject) =>
    consumer.consume(max, (err, messages) => (err ? reject(err) : resolve(messages))),
  );
}

/**
 * Seeks a partition and resolves once librdkafka has taken the seek (from then on it discards
 * what it fetched before); rejects when it did not within `timeoutMs`, or refused it.
 */
export function seekPartition(
  consumer: RdConsumer,
  topic: string,
  partition: number,
  offset: number,
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      consumer.seek({ topic, partition, offset }, timeoutMs, (err) =>
        err ? reject(err) : resolve(),
      );
    } catch (err) {
      reject(err);
    }
  });
}

/** Leaves the group (the revocation goes through the rebalance callback) and disconnects. */
export function leave(consumer: RdConsumer): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      consumer.unsubscribe();
    } catch {
      // Not connected (any more): disconnect still releases the client.
    }
    consumer.disconnect((err: unknown) => (err ? reject(err) : resolve()));
  });
}
