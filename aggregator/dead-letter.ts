import type { Kafka } from '../shared/kafka-client.js';
import type { Logger } from '../shared/logger.js';

type Producer = ReturnType<Kafka['producer']>;

/** A record the aggregator could not count, with why. */
export interface DeadLetter {
  key: Buffer | null;
  value: Buffer | null;
  /** `late`, or the validation code (`invalid_json`, `unknown_field`, …). */
  reason: string;
  partition: number;
  offset: number;
}

/**
 * Produces records the aggregator could not count to `<topic>.dlq`, with headers naming the
 * reason and the source topic, partition and offset. `send` resolves only once the broker has
 * them all: the consumer waits for that before the records' offsets can be flushed as consumed,
 * so a crash can never drop a record silently.
 */
export class DeadLetterProducer {
  private readonly producer: Producer;

  constructor(
    kafka: Kafka,
    private readonly sourceTopic: string,
    readonly topic: string,
    private readonly logger: Logger,
  ) {
    this.producer = kafka.producer({
      kafkaJS: { idempotent: true, acks: -1 },
      'linger.ms': 5,
    });
  }

  async start(): Promise<void> {
    await this.producer.connect();
  }

  async send(letters: readonly DeadLetter[]): Promise<void> {
    if (letters.length === 0) return;
    await this.producer.send({
      topic: this.topic,
      messages: letters.map((letter) => ({
        key: letter.key,
        value: letter.value,
        headers: {
          reason: letter.reason,
          'source-topic': this.sourceTopic,
          'source-partition': String(letter.partition),
          'source-offset': String(letter.offset),
        },
      })),
    });
    this.logger.debug({ count: letters.length }, 'records sent to the dead-letter topic');
  }

  async close(): Promise<void> {
    await this.producer.flush({ timeout: 5000 }).catch(() => {});
    await this.producer.disconnect();
  }
}
