import { randomBytes } from 'node:crypto';
import kafkaJavascript, {
  type DeliveryReport,
  type LibrdKafkaError,
  type MessageHeader,
} from '@confluentinc/kafka-javascript';
import { PipelineError } from '../shared/errors.js';
import { type ActivityEvent, DEFAULT_SITE, encodeEvent } from '../shared/event-schema.js';
import {
  type ClientLog,
  createClientLog,
  ensureTopic,
  type Kafka,
} from '../shared/kafka-client.js';
import { withDeadline } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { IngestMetrics } from './metrics.js';
import { DeliveryHealth } from './producer-watchdog.js';
import { MAX_EVENTS_PER_REQUEST, RequestDelivery } from './request-delivery.js';
import type { Site } from './sites.js';

const { Producer, CODES } = kafkaJavascript;
type NativeProducer = InstanceType<typeof Producer>;
type Admin = ReturnType<Kafka['admin']>;

/** The metadata request of `leadersKnown`: the client's timeout for it, and ours around it. */
const METADATA_TIMEOUT_MS = 5_000;
const METADATA_DEADLINE_MS = 8_000;

export interface EventProducerOptions {
  brokers: string[];
  clientId: string;
  topic: string;
  topicPartitions: number;
  ackTimeoutMs: number;
  maxInFlightEvents: number;
  /** `linger.ms` (PRODUCER_LINGER_SEC). */
  lingerMs: number;
  /** `batch.size` (PRODUCER_BATCH_BYTES). */
  batchBytes: number;
}

/**
 * The one headers list every record carries (librdkafka copies it per message). Records without
 * it were cheaper to consume, but end-to-end freshness p99 in `make bench` went from 2.1–2.5 s
 * to 3.1–4.0 s at the same load, for a reason not found yet (bench/results/analysis.md).
 */
const HEADERS: MessageHeader[] = [{ 'content-type': 'application/json' }];

/**
 * The encoding buffer's size. Every event fits many times over (a validated event is at most
 * about 9 KB of JSON, at most three bytes per UTF-16 unit); it is never grown.
 */
const ENCODE_BUFFER_BYTES = 256 * 1024;

/**
 * Produces validated events and resolves only once the broker has acknowledged every one of
 * them (idempotent producer, acks=all). The number of events waiting for acknowledgement is
 * bounded: past the bound, `produce` fails at once with `queue_full` instead of buffering.
 *
 * Every record carries its site and the site's time zone (`site`, `time_zone`), and is keyed by
 * `site/user_id` (`user_id` alone for `DEFAULT_SITE`, as before sites: an upgrade keeps every
 * user in the partition they had). So one (site, user) always lands in the same partition: the
 * aggregator's per-partition unique-user counts add up exactly because of it.
 *
 * Every produced event carries an `event_id`: the client's, or one assigned here. Even an
 * idempotent producer can write a message twice (librdkafka bumps the producer epoch after a
 * timeout, and re-sends what may already be stored under the new epoch); the copy is the same
 * bytes, id included, and the aggregator counts an id once per window.
 *
 * The native producer can be swapped for a new one (`replace`, asked by `ProducerWatchdog` when
 * it stops delivering while the broker is well). The in-flight bound counts the events of both.
 */
export class EventProducer {
  private producer: NativeProducer;
  private readonly clientLog: ClientLog;
  private inFlightEvents = 0;
  /** What the current native producer's delivery reports say, per partition (for the watchdog). */
  readonly health = new DeliveryHealth();
  private ready = false;
  /**
   * The current native producer reported a fatal error (it will never deliver again) and is
   * being replaced: not ready, and new events are refused (not stored) until the new one is in.
   */
  private failed = false;
  /** Replacements run one at a time (the watchdog's and a fatal error's). */
  private replacing: Promise<void> = Promise.resolve();
  /** A replaced producer delivering or timing out what it still holds, then disconnecting. */
  private retirement: Promise<void> | undefined;
  /**
   * The watchdog's admin client (`leadersKnown`), connecting or connected, made at its first
   * question; undefined again if connecting failed (an admin client connects only once).
   */
  private admin: Promise<Admin> | undefined;
  /** Assigned ids: unique to this process (random prefix), then a counter. */
  private readonly eventIdPrefix = `${randomBytes(9).toString('base64url')}.`;
  private eventIdSequence = 0;
  /**
   * The requests whose events are with a producer (the current one or one retiring), by number.
   * A message's opaque is `number × MAX_EVENTS_PER_REQUEST + index`: its report finds its request
   * and event without an object per event. Bounded by the in-flight bound.
   */
  private readonly deliveries = new Map<number, RequestDelivery>();
  private deliverySequence = 0;
  /**
   * A request's events are encoded one after another into this buffer and each is produced as a
   * slice of it (a view, no copy): `produce()` copies the bytes into librdkafka's own message
   * before it returns (`RK_MSG_COPY`), so the buffer is written over by the next request, and
   * from its start again when a request's events run past its end.
   */
  private readonly encodeBuffer = Buffer.allocUnsafe(ENCODE_BUFFER_BYTES);

  constructor(
    private readonly kafka: Kafka,
    private readonly options: EventProducerOptions,
    private readonly metrics: IngestMetrics,
    private readonly logger: Logger,
  ) {
    this.clientLog = createClientLog(logger);
    this.producer = this.createProducer();
  }

  /**
   * librdkafka's own producer API, not the KafkaJS-compatible `send()`: a send per event cost a
   * promise, a converted message and headers object, and a result array per event, half of
   * ingest's CPU under batches (bench/RESULTS.md). Here each event is one native `produce()`
   * whose delivery report settles it.
   */
  private createProducer(): NativeProducer {
    const producer = new Producer({
      'bootstrap.servers': this.options.brokers.join(','),
      'client.id': this.options.clientId,
      'enable.idempotence': true,
      acks: -1,
      'compression.type': 'lz4',
      // The Java client's partitioner (and the KafkaJS-compatible API's default): a user's
      // events land in the same partition whichever Kafka client wrote them, which the exact
      // unique-user counts depend on. librdkafka's own default (CRC32) would place them elsewhere.
      partitioner: 'murmur2_random',
      // A short linger batches concurrent requests into one produce request; chosen by
      // measurement (docs/CONFIGURATION.md, PRODUCER_LINGER_SEC).
      'linger.ms': this.options.lingerMs,
      'batch.size': this.options.batchBytes,
      // librdkafka gives up a message it could not deliver in time. Given up is not the same as
      // not stored: the broker may have written it and lost the acknowledgement (librdkafka's
      // "possibly persisted"). So a timeout is answered as an unknown outcome (see README).
      'message.timeout.ms': this.options.ackTimeoutMs,
      'queue.buffering.max.messages': Math.max(this.options.maxInFlightEvents * 2, 1000),
      // librdkafka notices timed-out messages when its broker thread wakes, and while the broker
      // is down that thread sleeps up to this reconnect backoff (default 10 s): keep it short so
      // a timeout is reported close to ACK_TIMEOUT_SEC.
      'reconnect.backoff.max.ms': 1000,
      log_level: 4,
      dr_cb: true,
    });
    producer.on('delivery-report', (err: LibrdKafkaError | null, report: DeliveryReport) => {
      if (producer === this.producer) {
        if (err === null) this.health.acknowledged(report.partition);
        else if (err.code === CODES.ERRORS.ERR__MSG_TIMED_OUT) {
          // Handed over at least message.timeout.ms ago (the report carries no send time).
          this.health.timedOut(report.partition, Date.now() - this.options.ackTimeoutMs);
        }
      }
      if (err !== null && err.code === CODES.ERRORS.ERR__FATAL) this.onFatal(producer, err);
      this.settle(report.opaque as number, err ? classifyDeliveryError(err) : null);
    });
    producer.on('event.error', (err: LibrdKafkaError) => {
      this.clientLog.error(err.message, { code: err.code });
      if (isFatal(err)) this.onFatal(producer, err);
    });
    producer.on('event.log', (log: { severity: number; fac: string; message: string }) => {
      const extra = { fac: log.fac };
      if (log.severity <= 3) this.clientLog.error(log.message, extra);
      else if (log.severity === 4) this.clientLog.warn(log.message, extra);
      else this.clientLog.debug(log.message, extra);
    });
    return producer;
  }

  /** Events handed to the producer and not yet acknowledged. */
  get inFlight(): number {
    return this.inFlightEvents;
  }

  /** True once connected and the topic is known, and while the producer has not failed. */
  get isReady(): boolean {
    return this.ready && !this.failed;
  }

  /**
   * A fatal error (an idempotent producer's sequence broken, say) leaves a native producer
   * unusable for good: it is replaced by a new one, tried every second until connected, and
   * ingest is not ready meanwhile. What the failed one held is answered by its delivery reports.
   */
  private onFatal(producer: NativeProducer, err: unknown): void {
    if (producer !== this.producer || this.failed || !this.ready) return;
    this.failed = true;
    this.metrics.producerFatalErrors.inc();
    this.logger.error({ err }, 'the producer reported a fatal error; replacing it');
    void (async () => {
      while (this.ready && this.producer === producer) {
        try {
          await this.replace();
        } catch (replaceErr) {
          this.logger.warn({ err: replaceErr }, 'replacing the failed producer failed; retrying');
          await new Promise((resolve) => setTimeout(resolve, 1_000));
        }
      }
      if (this.producer !== producer) this.logger.info('failed producer replaced');
    })();
  }

  async start(): Promise<void> {
    const topic = await ensureTopic(this.kafka, this.options.topic, this.options.topicPartitions);
    this.logger.info(
      { topic: this.options.topic, partitions: topic.partitions, created: topic.created },
      'topic ready',
    );
    await connect(this.producer);
    this.ready = true;
  }

  /** True while a replaced producer still delivers or gives up what it held. */
  get retiring(): boolean {
    return this.retirement !== undefined;
  }

  /**
   * Whether the broker names a leader for every partition of the topic, asked now through an
   * admin client of its own (not the producer, whose view of the partitions is what may be
   * wrong); undefined when the broker does not answer in time.
   */
  async leadersKnown(): Promise<boolean | undefined> {
    try {
      const [topic] = await withDeadline(
        this.connectedAdmin().then((admin) =>
          admin.fetchTopicMetadata({ topics: [this.options.topic], timeout: METADATA_TIMEOUT_MS }),
        ),
        METADATA_DEADLINE_MS,
        'the topic metadata',
      );
      if (topic === undefined || topic.partitions.length === 0) return false;
      return topic.partitions.every((partition) => partition.leader >= 0);
    } catch (err) {
      this.logger.debug({ err }, 'topic metadata unavailable');
      return undefined;
    }
  }

  /**
   * The admin client, connected once. A connection that outlives a question's deadline (the
   * broker frozen) is kept for the next one rather than connected again, which the client refuses.
   */
  private connectedAdmin(): Promise<Admin> {
    this.admin ??= (async () => {
      const admin = this.kafka.admin();
      try {
        await admin.connect();
        return admin;
      } catch (err) {
        this.admin = undefined;
        await admin.disconnect().catch(() => {});
        throw err;
      }
    })();
    return this.admin;
  }

  /**
   * Swaps the native producer for a new one, connected, and resolves once new events go to it.
   * The old one keeps what it holds: each of its events is still acknowledged or given up (at
   * ACK_TIMEOUT_SEC, an unknown outcome) and answered so; then it disconnects. One old producer
   * at a time: while one is still retiring, this waits for it first.
   */
  async replace(): Promise<void> {
    const next = this.replacing.catch(() => {}).then(() => this.replaceNow());
    this.replacing = next;
    return next;
  }

  private async replaceNow(): Promise<void> {
    await this.retirement;
    const fresh = this.createProducer();
    try {
      await connect(fresh);
    } catch (err) {
      fresh.disconnect();
      throw err;
    }
    if (!this.ready) {
      // Closed meanwhile: the current producer is the one being flushed.
      await new Promise<void>((resolve) => fresh.disconnect(() => resolve()));
      return;
    }
    const old = this.producer;
    this.producer = fresh;
    this.failed = false;
    this.health.reset();
    this.retirement = this.retire(old).finally(() => {
      this.retirement = undefined;
    });
  }

  private async retire(old: NativeProducer): Promise<void> {
    // Every message in it times out by ACK_TIMEOUT_SEC; the flush waits a little past that.
    await new Promise<void>((resolve) => {
      old.flush(this.options.ackTimeoutMs + 1000, (err) => {
        if (err) this.logger.warn({ err }, 'the replaced producer did not flush');
        resolve();
      });
    });
    await new Promise<void>((resolve) => old.disconnect(() => resolve()));
  }

  /**
   * Produces `events` of `site` (each is stamped with the site's name and time zone, and an
   * `event_id` when it has none: the events are changed) and resolves, once every one is
   * acknowledged or given up, with one entry per event: `null` for acknowledged; otherwise a
   * retryable PipelineError — `broker_timeout` or `broker_outcome_unknown` (no acknowledgement in
   * time, or a failure after the event may have been written: the outcome is unknown),
   * `broker_unavailable` or `queue_full` (not stored). Rejects with `queue_full` or
   * `broker_unavailable`, producing nothing, when the events cannot be admitted at all.
   */
  async produce(
    events: readonly ActivityEvent[],
    site: Site,
    receivedAtMs: number,
  ): Promise<Array<PipelineError | null>> {
    if (!this.ready) {
      throw new PipelineError('broker_unavailable', 'the producer is not connected', {
        retryable: true,
      });
    }
    if (this.failed) {
      throw new PipelineError('broker_unavailable', 'the producer failed and is being replaced', {
        retryable: true,
      });
    }
    if (events.length === 0) return [];
    if (this.inFlightEvents + events.length > this.options.maxInFlightEvents) {
      throw new PipelineError(
        'queue_full',
        'too many events are waiting for the broker; retry later',
        { retryable: true },
      );
    }
    this.inFlightEvents += events.length;
    this.metrics.producerInFlight.set(this.inFlightEvents);
    const stopTimer = this.metrics.ackDuration.startTimer();
    const delivery = new RequestDelivery(events.length);
    const number = this.deliverySequence++;
    this.deliveries.set(number, delivery);
    const firstOpaque = number * MAX_EVENTS_PER_REQUEST;
    const keyPrefix = site.name === DEFAULT_SITE ? '' : `${site.name}/`;
    // One message per event with its own delivery report, so that a batch's answer can say
    // exactly which events the broker has. librdkafka still batches them on the wire.
    let offset = 0;
    for (let index = 0; index < events.length; index++) {
      const event = events[index] as ActivityEvent;
      // Set on the validated event itself, not on a copy: no object per event for it.
      event.site = site.name;
      event.time_zone = site.timeZone;
      event.event_id ??= this.nextEventId();
      const json = encodeEvent(event);
      // At most three bytes per UTF-16 unit; what was written before is librdkafka's by now.
      if (offset + json.length * 3 > ENCODE_BUFFER_BYTES) offset = 0;
      let value: Buffer;
      if (json.length * 3 <= ENCODE_BUFFER_BYTES) {
        const end = offset + this.encodeBuffer.write(json, offset);
        value = this.encodeBuffer.subarray(offset, end);
        offset = end;
      } else {
        value = Buffer.from(json);
      }
      try {
        this.producer.produce(
          this.options.topic,
          null,
          value,
          keyPrefix === '' ? event.user_id : keyPrefix + event.user_id,
          receivedAtMs,
          firstOpaque + index,
          HEADERS,
        );
      } catch (err) {
        // Refused before it was queued (queue full, not connected): certainly not stored.
        if ((err as { code?: unknown }).code === CODES.ERRORS.ERR__FATAL) {
          this.onFatal(this.producer, err);
        }
        this.settle(firstOpaque + index, classifyRefusal(err));
      }
    }
    try {
      return await delivery.done;
    } finally {
      stopTimer();
      this.inFlightEvents -= events.length;
      this.metrics.producerInFlight.set(this.inFlightEvents);
    }
  }

  /** One event's outcome, `opaque` naming its request and index; the request's last settles it. */
  private settle(opaque: number, outcome: PipelineError | null): void {
    const number = Math.floor(opaque / MAX_EVENTS_PER_REQUEST);
    const delivery = this.deliveries.get(number);
    if (delivery === undefined) {
      this.logger.error({ opaque }, 'a delivery report for no request in flight');
      return;
    }
    if (delivery.settle(opaque - number * MAX_EVENTS_PER_REQUEST, outcome)) {
      this.deliveries.delete(number);
    }
  }

  private nextEventId(): string {
    this.eventIdSequence++;
    return this.eventIdPrefix + this.eventIdSequence.toString(36);
  }

  /** Flushes what is queued (bounded by `timeoutMs`) and disconnects. */
  async close(timeoutMs: number): Promise<void> {
    this.ready = false;
    if (this.admin !== undefined) {
      await withDeadline(
        this.admin.then((admin) => admin.disconnect()),
        2_000,
        'disconnecting the admin client',
      ).catch(() => {});
    }
    await this.retirement;
    if (!this.producer.isConnected()) return;
    await new Promise<void>((resolve) => {
      this.producer.flush(timeoutMs, (err) => {
        if (err) this.logger.warn({ err }, 'producer flush did not complete');
        resolve();
      });
    });
    await new Promise<void>((resolve) => {
      this.producer.disconnect(() => resolve());
    });
  }
}

/** Connects a native producer, its delivery reports polled on librdkafka's background thread. */
async function connect(producer: NativeProducer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    producer.connect({}, (err) => (err ? reject(err) : resolve()));
  });
  producer.setPollInBackground(true);
}

/**
 * The binding hands a client error event over as its text only: librdkafka's
 * `err2str(ERR__FATAL)`, "Local: Fatal error", which `LibrdKafkaError` then splits into origin
 * `local` and message `fatal error` (its code is lost, -1). So that text is all there is to
 * recognise a fatal error event by; the flag and the code are checked too, for when they are
 * there (delivery reports and `produce()` carry the code).
 */
function isFatal(err: LibrdKafkaError): boolean {
  const { origin } = err as { origin?: string };
  return (
    (err as { isFatal?: boolean }).isFatal === true ||
    err.code === CODES.ERRORS.ERR__FATAL ||
    err.message === 'Local: Fatal error' ||
    (origin === 'local' && err.message === 'fatal error')
  );
}

/**
 * Delivery-report errors that say the message was never written: it was never sent (unknown
 * partition or topic, purged from the queue, too large), or the broker refused it as invalid.
 * The binding does not expose librdkafka's persistence status (`rd_kafka_message_status`), so
 * every other error — a timeout, a purge in flight, a fatal error, a broken connection — is an
 * unknown outcome: the broker may have written it (librdkafka's "possibly persisted").
 */
const NOT_PERSISTED_CODES: ReadonlySet<number> = new Set([
  CODES.ERRORS.ERR__QUEUE_FULL,
  CODES.ERRORS.ERR__UNKNOWN_PARTITION,
  CODES.ERRORS.ERR__UNKNOWN_TOPIC,
  CODES.ERRORS.ERR__PURGE_QUEUE,
  CODES.ERRORS.ERR__INVALID_ARG,
  CODES.ERRORS.ERR_MSG_SIZE_TOO_LARGE,
  CODES.ERRORS.ERR_INVALID_RECORD,
  CODES.ERRORS.ERR__INVALID_DIFFERENT_RECORD,
]);

/** What a failed delivery report means for the event: not stored, or unknown. */
export function classifyDeliveryError(err: { code?: unknown; message?: string }): PipelineError {
  const code = typeof err.code === 'number' ? err.code : undefined;
  const text = err.message ?? String(err);
  if (code === CODES.ERRORS.ERR__MSG_TIMED_OUT) {
    return new PipelineError(
      'broker_timeout',
      'the broker did not acknowledge in time; the event may or may not be stored: resend it with the same event_id',
      { cause: err, retryable: true },
    );
  }
  if (code === CODES.ERRORS.ERR__QUEUE_FULL) {
    return new PipelineError('queue_full', 'the producer queue is full', {
      cause: err,
      retryable: true,
    });
  }
  if (code !== undefined && NOT_PERSISTED_CODES.has(code)) {
    return new PipelineError('broker_unavailable', `the broker refused the events: ${text}`, {
      cause: err,
      retryable: true,
    });
  }
  return new PipelineError(
    'broker_outcome_unknown',
    `the delivery failed (${text}); the event may or may not be stored: resend it with the same event_id`,
    { cause: err, retryable: true },
  );
}

/** A `produce()` call that threw: the event was never queued, so it is certainly not stored. */
function classifyRefusal(err: unknown): PipelineError {
  const code = (err as { code?: unknown }).code;
  const text = err instanceof Error ? err.message : String(err);
  if (code === CODES.ERRORS.ERR__QUEUE_FULL) {
    return new PipelineError('queue_full', 'the producer queue is full', {
      cause: err,
      retryable: true,
    });
  }
  return new PipelineError('broker_unavailable', `the producer refused the events: ${text}`, {
    cause: err,
    retryable: true,
  });
}
