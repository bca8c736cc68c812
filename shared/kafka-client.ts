import kafkaJavascript from '@confluentinc/kafka-javascript';
import type { Logger } from './logger.js';

const { KafkaJS } = kafkaJavascript;
export type Kafka = InstanceType<typeof KafkaJS.Kafka>;

/** The default topic name, kept from the original service. */
export const DEFAULT_TOPIC = 'incoming.user_activity';

/** Builds a client whose own log lines go through the service's pino logger. */
export function createKafka(options: {
  brokers: string[];
  clientId: string;
  logger: Logger;
}): Kafka {
  const log = options.logger.child({ component: 'kafka-client' });
  const adapter = {
    info: (message: string, extra?: object) => log.debug(extra ?? {}, message),
    warn: (message: string, extra?: object) => log.warn(extra ?? {}, message),
    error: (message: string, extra?: object) => log.error(extra ?? {}, message),
    debug: (message: string, extra?: object) => log.trace(extra ?? {}, message),
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
    const existing = await admin.listTopics({ timeout: timeoutMs });
    let created = false;
    if (!existing.includes(topic)) {
      created = await admin.createTopics({
        timeout: timeoutMs,
        topics: [{ topic, numPartitions: partitions, replicationFactor: -1 }],
      });
    }
    const [metadata] = await admin.fetchTopicMetadata({ topics: [topic], timeout: timeoutMs });
    return { created, partitions: metadata?.partitions.length ?? partitions };
  } finally {
    await admin.disconnect();
  }
}
