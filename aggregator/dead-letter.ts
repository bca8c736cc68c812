import type { Kafka } from '../shared/kafka-client.js';
import type { Logger } from '../shared/logger.js';

type Producer = ReturnType<Kafka['producer']>;

/**
 * Most bytes of a dead letter's key and value together. A foreign producer may have written a
 * record that fits the source topic but not, with our headers added, the producer's
 * `message.max.bytes` (1,000,000) or the broker's limit (1 MiB): such a send would fail on every
 * retry and stall the partition. Larger records are cut to this size and say so in a header; the
 * source position in the headers still leads to the whole record.
 */
export const MAX_DEAD_LETTER_BYTES = 900_000;

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
      messages: letters.map((letter) => {
        const key = cut(letter.key, MAX_DEAD_LETTER_BYTES);
        const value = cut(letter.value, MAX_DEAD_LETTER_BYTES - (key?.byteLength ?? 0));
        const headers: Record<string, string> = {
          reason: letter.reason,
          'source-topic': this.sourceTopic,
          'source-partition': String(letter.partition),
          'source-offset': String(letter.offset),
        };
        if (key !== letter.key) headers['key-truncated-from'] = String(letter.key?.byteLength);
        if (value !== letter.value)
          headers['value-truncated-from'] = String(letter.value?.byteLength);
        return { key, value, headers };
      }),
    });
    this.logger.debug({ count: letters.length }, 'records sent to the dead-letter topic');
  }

  async close(): Promise<void> {
    await this.producer.flush({ timeout: 5000 }).catch(() => {});
    await this.producer.disconnect();
  }
}

/** `bytes` itself when it fits in `max`, else its first `max` bytes. */
function cut(bytes: Buffer | null, max: number): Buffer | null {
  return bytes === null || bytes.byteLength <= max ? bytes : bytes.subarray(0, max);
}
