import type { KafkaJS } from '@confluentinc/kafka-javascript';
import type { Kafka } from '../shared/kafka-client.js';
import type { Logger } from '../shared/logger.js';
import type { Aggregation } from './aggregation.js';

type Consumer = ReturnType<Kafka['consumer']>;
type Batch = KafkaJS.Batch;

export interface ActivityConsumerOptions {
  topic: string;
  consumerGroup: string;
  flushIntervalMs: number;
  batchSize: number;
}

/**
 * Consumes the activity topic in a consumer group, hands each partition's batch to the
 * aggregation, and triggers flushes: every `flushIntervalMs`, after `batchSize` records, and on
 * shutdown. Offsets are committed to Kafka only after the figures covering them are in
 * PostgreSQL.
 */
export class ActivityConsumer {
  private readonly consumer: Consumer;
  private timer: NodeJS.Timeout | undefined;
  private lastFlushOk = true;
  /** The batch being applied, if any: close() waits for it before the final flush. */
  private batchInHand: Promise<void> = Promise.resolve();
  private stopping = false;

  constructor(
    kafka: Kafka,
    private readonly aggregation: Aggregation,
    private readonly options: ActivityConsumerOptions,
    private readonly logger: Logger,
  ) {
    this.consumer = kafka.consumer({
      kafkaJS: {
        groupId: options.consumerGroup,
        fromBeginning: true,
        autoCommit: false,
      },
      // The default of 32 is too small to be worth a round trip per batch.
      'js.consumer.max.batch.size': 2000,
    });
  }

  /** False while the last flush failed. */
  get healthy(): boolean {
    return this.lastFlushOk;
  }

  async start(): Promise<void> {
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [this.options.topic] });
    await this.consumer.run({
      eachBatch: async ({ batch }) => {
        if (this.stopping) return;
        let done = (): void => {};
        this.batchInHand = new Promise((resolve) => {
          done = resolve;
        });
        try {
          await this.applyBatch(batch);
        } finally {
          done();
        }
      },
    });
    this.timer = setInterval(() => {
      this.flush().catch(() => {});
    }, this.options.flushIntervalMs);
  }

  private async applyBatch(batch: Batch): Promise<void> {
    this.aggregation.apply(
      batch.partition,
      batch.messages.map((message) => ({
        offset: Number(message.offset),
        value: message.value,
      })),
    );
    if (this.aggregation.pendingRecords >= this.options.batchSize) await this.flush();
  }

  /** Flushes the aggregation and commits the offsets it reflects. */
  async flush(): Promise<void> {
    let reflected: Map<number, number>;
    try {
      reflected = await this.aggregation.flush();
    } catch (err) {
      if (this.lastFlushOk) this.logger.error({ err }, 'flush failed; will retry');
      this.lastFlushOk = false;
      throw err;
    }
    if (!this.lastFlushOk) this.logger.info('flush succeeded again');
    this.lastFlushOk = true;
    if (reflected.size === 0) return;
    // For lag monitoring only: positions on restart come from what PostgreSQL holds.
    await this.consumer
      .commitOffsets(
        [...reflected].map(([partition, offset]) => ({
          topic: this.options.topic,
          partition,
          offset: String(offset + 1),
        })),
      )
      .catch((err: unknown) => this.logger.warn({ err }, 'offset commit failed'));
  }

  /** Stops consuming, writes a final flush, commits, and leaves the group. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    // No new batch is applied from here on; the final flush covers everything applied before.
    this.stopping = true;
    this.consumer.pause([{ topic: this.options.topic }]);
    await this.batchInHand;
    try {
      await this.flush();
    } finally {
      await this.consumer.disconnect();
    }
  }
}
