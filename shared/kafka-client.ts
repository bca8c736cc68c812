import kafkaJavascript from '@confluentinc/kafka-javascript';
import type { Logger } from './logger.js';

const { KafkaJS } = kafkaJavascript;
export type Kafka = InstanceType<typeof KafkaJS.Kafka>;

/** The default topic name, kept from the original service. */
export const DEFAULT_TOPIC = 'incoming.user_activity';

/** Where a client's own log lines go: through the service's logger, repeats throttled. */
export interface ClientLog {
  debug(message: string, extra?: object): void;
  warn(message: string, extra?: object): void;
  error(message: string, extra?: object): void;
}

/**
 * A client's log, as child `kafka-client` of the service's logger. While a broker is down
 * librdkafka repeats the same complaint every second: each warning or error is said once per
 * 30 s, with how many times it was repeated in between.
 */
export function createClientLog(logger: Logger): ClientLog {
  const log = logger.child({ component: 'kafka-client' });
  const lastSaid = new Map<string, { atMs: number; repeated: number }>();
  const throttled =
    (level: 'warn' | 'error') =>
    (message: string, extra?: object): void => {
      const nowMs = Date.now();
      const seen = lastSaid.get(message);
      if (seen !== undefined && nowMs - seen.atMs < 30_000) {
        seen.repeated++;
        return;
      }
      if (lastSaid.size > 1000) lastSaid.clear();
      lastSaid.set(message, { atMs: nowMs, repeated: 0 });
      log[level]({ ...extra, repeatedSinceLast: seen?.repeated ?? 0 }, message);
    };
  return {
    debug: (message, extra) => log.trace(extra ?? {}, message),
    warn: throttled('warn'),
    error: throttled('error'),
  };
}

/** Builds a client whose own log lines go through the service's pino logger. */
export function createKafka(options: {
  brokers: string[];
  clientId: string;
  logger: Logger;
}): Kafka {
  const log = createClientLog(options.logger);
  const info = options.logger.child({ component: 'kafka-client' });
  const adapter = {
    info: (message: string, extra?: object) => info.debug(extra ?? {}, message),
    warn: log.warn,
    error: log.error,
    debug: log.debug,
    namespace: () => adapter,
    setLogLevel: () => {},
  };
  return new KafkaJS.Kafka({
    kafkaJS: {
      brokers: options.brokers,
      clientId: options.clientId,
      logLevel: KafkaJS.logLevel.WARN,
      logger: adapter,
    },
  });
}

/**
 * Creates `topic` with `partitions` partitions when it does not exist yet. An existing topic is
 * left as it is (its partition count is reported, never changed: changing it would move users
 * between partitions).
 *
 * A topic created a moment ago (here, or by another instance starting at the same time) can be
 * missing from the broker's metadata for a little while, which the client reports as "unknown
 * topic or partition": a few tries with a short backoff ride that out.
 */
export async function ensureTopic(
  kafka: Kafka,
  topic: string,
  partitions: number,
  timeoutMs = 10_000,
): Promise<{ created: boolean; partitions: number }> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    let created = false;
    for (let attempt = 1; ; attempt++) {
      try {
        const existing = await admin.listTopics({ timeout: timeoutMs });
        if (!existing.includes(topic)) {
          created =
            (await admin.createTopics({
              timeout: timeoutMs,
              topics: [{ topic, numPartitions: partitions, replicationFactor: -1 }],
            })) || created;
        }
        const [metadata] = await admin.fetchTopicMetadata({ topics: [topic], timeout: timeoutMs });
        return { created, partitions: metadata?.partitions.length ?? partitions };
      } catch (err) {
        if (attempt >= 5) throw err;
        await new Promise((resolve) => setTimeout(resolve, 300 * attempt));
      }
    }
  } finally {
    await admin.disconnect();
  }
}
