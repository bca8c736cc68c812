/**
 * The consumer lag `/v1/realtime` reports: records in the topic that PostgreSQL does not reflect
 * yet, over every partition of the topic (partitions hold every site's events, so there is no
 * lag of one site). Per partition: the broker's high watermark minus the position the rows hold
 * (the newest `through_offset` + 1; a partition with no rows: minus the low watermark), which is
 * where the aggregators stand whoever consumes each partition.
 *
 * One admin call and one index read per partition serve every request of a second or so. A
 * broker that does not answer within the deadline makes the figure `null`, never the answer.
 */
import kafkaJavascript from '@confluentinc/kafka-javascript';
import { createKafka, type Kafka } from '../shared/kafka-client.js';
import { withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { loadStoredPositions } from '../shared/stored-positions.js';
import type { QueryDatabase } from './database.js';

const { KafkaJS } = kafkaJavascript;
type Admin = ReturnType<Kafka['admin']>;

/** How long one measurement serves every request. */
const REUSE_MS = 1500;
/** After a failed measurement, how long `null` is answered before the broker is asked again. */
const REUSE_FAILED_MS = 10_000;
/** Longest wait for the broker and PostgreSQL together; the answer goes on without the figure. */
const DEADLINE_MS = 2000;
/** At most one warning this often while the broker does not answer. */
const WARN_EVERY_MS = 30_000;

export interface ConsumerLagOptions {
  brokers: string[];
  topic: string;
  /** Rows of this window length hold the positions (the aggregator's `WINDOW_SEC`). */
  windowSeconds: number;
  database: QueryDatabase;
  logger: Logger;
}

export class ConsumerLag {
  private readonly kafka: Kafka;
  private admin: Admin | undefined;
  private connecting: Promise<Admin> | undefined;
  private measured: { atMs: number; records: number | null } | undefined;
  private inFlight: Promise<number | null> | undefined;
  private lastWarnMs = 0;
  private closed = false;

  constructor(private readonly options: ConsumerLagOptions) {
    this.kafka = createKafka({
      brokers: options.brokers,
      clientId: 'query-lag',
      logger: options.logger,
    });
  }

  /** Records of the topic not yet in PostgreSQL; null when the broker or the rows do not tell. */
  async records(nowMs = Date.now()): Promise<number | null> {
    if (this.closed) return null;
    const reuseMs = this.measured?.records === null ? REUSE_FAILED_MS : REUSE_MS;
    if (this.measured !== undefined && nowMs - this.measured.atMs < reuseMs) {
      return this.measured.records;
    }
    // Every step of a measurement has a deadline, so a hung broker cannot keep later requests
    // waiting on it.
    this.inFlight ??= this.measure()
      .then(
        (records) => records,
        (err: unknown) => {
          this.warn(err);
          return null;
        },
      )
      .then((records) => {
        this.measured = { atMs: Date.now(), records };
        this.inFlight = undefined;
        return records;
      });
    return this.inFlight;
  }

  async close(): Promise<void> {
    this.closed = true;
    const admin = this.admin;
    this.admin = undefined;
    // A connect still under way disconnects itself when it ends (see connect()).
    if (admin !== undefined) {
      await withDeadline(admin.disconnect(), DEADLINE_MS, 'disconnecting the admin client').catch(
        (err: unknown) => this.options.logger.warn({ err }, 'admin client did not disconnect'),
      );
    }
  }

  private async measure(): Promise<number> {
    const admin = await withDeadline(this.connect(), DEADLINE_MS, 'connecting to the broker');
    const started = Date.now();
    const offsets = await withDeadline(
      admin.fetchTopicOffsets(this.options.topic, {
        timeout: DEADLINE_MS,
        isolationLevel: KafkaJS.IsolationLevel.READ_COMMITTED,
      }),
      DEADLINE_MS,
      'reading the topic offsets',
    );
    const positions = await withDeadline(
      this.options.database.use((db) =>
        loadStoredPositions(
          db,
          offsets.map((o) => o.partition),
          this.options.windowSeconds,
        ),
      ),
      Math.max(100, DEADLINE_MS - (Date.now() - started)),
      'reading the stored positions',
    );
    let lag = 0;
    for (const { partition, high, low } of offsets) {
      const stored = positions.get(partition);
      const position = typeof stored === 'number' ? stored : Number(low);
      lag += Math.max(0, Number(high) - Math.max(position, Number(low)));
    }
    return lag;
  }

  private connect(): Promise<Admin> {
    if (this.admin !== undefined) return Promise.resolve(this.admin);
    this.connecting ??= (async () => {
      const admin = this.kafka.admin();
      try {
        await admin.connect();
      } catch (err) {
        this.connecting = undefined;
        await admin.disconnect().catch(() => {});
        throw err;
      }
      this.connecting = undefined;
      if (this.closed) {
        await admin.disconnect().catch(() => {});
        throw new Error('consumer lag closed');
      }
      this.admin = admin;
      return admin;
    })();
    return this.connecting;
  }

  private warn(err: unknown): void {
    const nowMs = Date.now();
    if (nowMs - this.lastWarnMs < WARN_EVERY_MS) return;
    this.lastWarnMs = nowMs;
    this.options.logger.warn(
      { err, topic: this.options.topic },
      'consumer lag unknown: the broker or PostgreSQL did not answer; realtime reports null',
    );
  }
}
