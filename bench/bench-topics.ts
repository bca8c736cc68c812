/** Topics of a bench run: created with a known partition count, pre-filled, measured. */
import { type ActivityEvent, DEFAULT_SITE, encodeEvent } from '../shared/event-schema.js';
import { createKafka, ensureTopic, type Kafka } from '../shared/kafka-client.js';
import { createLogger } from '../shared/logger.js';

/** The partition count every bench topic gets (ingest's default, TOPIC_PARTITIONS). */
export const BENCH_PARTITIONS = 6;

export class BenchTopics {
  private readonly kafka: Kafka;
  private runs = 0;

  constructor(
    readonly brokers: string,
    private readonly prefix: string,
  ) {
    this.kafka = createKafka({
      brokers: brokers.split(','),
      clientId: 'bench',
      logger: createLogger('bench', 'warn'),
    });
  }

  /** A fresh name for a topic, consumer group or schema of this bench run. */
  name(what: string): string {
    this.runs++;
    return `${this.prefix}_${what.replace(/[^a-z0-9]/g, '_')}_${this.runs}`;
  }

  async create(topic: string): Promise<void> {
    await ensureTopic(this.kafka, topic, BENCH_PARTITIONS);
  }

  /** The sum of the partitions' high watermarks: records ever written to `topic`. */
  async endOffsets(topic: string): Promise<Map<number, number>> {
    const admin = this.kafka.admin();
    await admin.connect();
    try {
      const offsets = await admin.fetchTopicOffsets(topic);
      return new Map(offsets.map((entry) => [entry.partition, Number(entry.high)]));
    } finally {
      await admin.disconnect();
    }
  }

  async totalRecords(topic: string): Promise<number> {
    let total = 0;
    for (const high of (await this.endOffsets(topic)).values()) total += high;
    return total;
  }

  /**
   * Writes `events` to `topic` exactly as ingest does (key = `site/user_id`, or the user id alone
   * for the default site; JSON value, the receive time as the record timestamp, the content-type
   * header), as fast as the producer goes.
   */
  async fill(
    topic: string,
    events: readonly ActivityEvent[],
    progress: (done: number) => void,
  ): Promise<void> {
    // Uncompressed: KafkaJS, one of the baselines reading these topics, has no LZ4 codec.
    const producer = this.kafka.producer({
      kafkaJS: { idempotent: true, acks: -1 },
      'linger.ms': 20,
      'queue.buffering.max.messages': 1_000_000,
    });
    await producer.connect();
    try {
      const chunk = 10_000;
      const timestamp = String(Date.now());
      for (let i = 0; i < events.length; i += chunk * 4) {
        const sends: Promise<unknown>[] = [];
        for (let j = i; j < Math.min(events.length, i + chunk * 4); j += chunk) {
          sends.push(
            producer.send({
              topic,
              messages: events.slice(j, j + chunk).map((event) => ({
                key: recordKey(event),
                value: encodeEvent(event),
                timestamp,
                headers: { 'content-type': 'application/json' },
              })),
            }),
          );
        }
        await Promise.all(sends);
        progress(Math.min(events.length, i + chunk * 4));
      }
    } finally {
      await producer.disconnect();
    }
  }
}

/** Ingest's record key: one (site, user) always lands in the same partition. */
function recordKey(event: ActivityEvent): string {
  return event.site === undefined || event.site === DEFAULT_SITE
    ? event.user_id
    : `${event.site}/${event.user_id}`;
}
