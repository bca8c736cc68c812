import { randomBytes } from 'node:crypto';
import kafkaJavascript from '@confluentinc/kafka-javascript';
import { PipelineError } from '../shared/errors.js';
import { type ActivityEvent, encodeEvent } from '../shared/event-schema.js';
import { ensureTopic, type Kafka } from '../shared/kafka-client.js';
import type { Logger } from '../shared/logger.js';
import type { IngestMetrics } from './metrics.js';

const { KafkaJS } = kafkaJavascript;
type Producer = ReturnType<Kafka['producer']>;

export interface EventProducerOptions {
  topic: string;
  topicPartitions: number;
  ackTimeoutMs: number;
  maxInFlightEvents: number;
}

/**
 * Produces validated events and resolves only once the broker has acknowledged every one of
 * them (idempotent producer, acks=all). The number of events waiting for acknowledgement is
 * bounded: past the bound, `produce` fails at once with `queue_full` instead of buffering.
 *
 * Messages are keyed by `user_id`, so one user always lands in the same partition: the
 * aggregator's per-partition unique-user counts add up exactly because of it.
 *
 * Every produced event carries an `event_id`: the client's, or one assigned here. Even an
 * idempotent producer can write a message twice (librdkafka bumps the producer epoch after a
 * timeout, and re-sends what may already be stored under the new epoch); the copy is the same
 * bytes, id included, and the aggregator counts an id once per window.
 */
export class EventProducer {
  private readonly producer: Producer;
  private inFlightEvents = 0;
  private ready = false;
  /** Assigned ids: unique to this process (random prefix), then a counter. */
  private readonly eventIdPrefix = `${randomBytes(9).toString('base64url')}.`;
  private eventIdSequence = 0;

  constructor(
    private readonly kafka: Kafka,
    private readonly options: EventProducerOptions,
    private readonly metrics: IngestMetrics,
    private readonly logger: Logger,
  ) {
    this.producer = kafka.producer({
      kafkaJS: {
        idempotent: true,
        acks: -1,
        compression: KafkaJS.CompressionTypes.LZ4,
      },
      // A short linger batches concurrent requests into one produce request.
      'linger.ms': 2,
      // librdkafka gives up a message it could not deliver in time. Given up is not the same as
      // not stored: the broker may have written it and lost the acknowledgement (librdkafka's
      // "possibly persisted"). So a timeout is answered as an unknown outcome (see README).
      'message.timeout.ms': options.ackTimeoutMs,
      'queue.buffering.max.messages': Math.max(options.maxInFlightEvents * 2, 1000),
      // librdkafka notices timed-out messages when its broker thread wakes, and while the broker
      // is down that thread sleeps up to this reconnect backoff (default 10 s): keep it short so
      // a timeout is reported close to ACK_TIMEOUT_SEC.
      'reconnect.backoff.max.ms': 1000,
    });
  }

  /** Events handed to the producer and not yet acknowledged. */
  get inFlight(): number {
    return this.inFlightEvents;
  }

  /** True once connected and the topic is known. */
  get isReady(): boolean {
    return this.ready;
  }

  async start(): Promise<void> {
    const topic = await ensureTopic(this.kafka, this.options.topic, this.options.topicPartitions);
    this.logger.info(
      { topic: this.options.topic, partitions: topic.partitions, created: topic.created },
      'topic ready',
    );
    await this.producer.connect();
    this.ready = true;
  }

  /**
   * Produces `events` and resolves, once every one is acknowledged or given up, with one entry
   * per event: `null` for acknowledged; otherwise a retryable PipelineError — `broker_timeout`
   * (no acknowledgement in time: the outcome is unknown), `broker_unavailable` or `queue_full`
   * (not stored). Rejects with `queue_full` or `broker_unavailable`, producing nothing, when
   * the events cannot be admitted at all.
   */
  async produce(
    events: readonly ActivityEvent[],
    receivedAtMs: number,
  ): Promise<Array<PipelineError | null>> {
    if (!this.ready) {
      throw new PipelineError('broker_unavailable', 'the producer is not connected', {
        retryable: true,
      });
    }
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
    const timestamp = String(receivedAtMs);
    try {
      // One send per event: each gets its own delivery report, so a batch's answer can say
      // exactly which events the broker has. librdkafka still batches them on the wire.
      const reports = await Promise.allSettled(
        events.map((event) =>
          this.producer.send({
            topic: this.options.topic,
            messages: [
              {
                key: event.user_id,
                value: encodeEvent(
                  event.event_id === undefined ? { ...event, event_id: this.nextEventId() } : event,
                ),
                timestamp,
                headers: { 'content-type': 'application/json' },
              },
            ],
          }),
        ),
      );
      return reports.map((report) =>
        report.status === 'fulfilled' ? null : classifyProduceError(report.reason),
      );
    } finally {
      stopTimer();
      this.inFlightEvents -= events.length;
      this.metrics.producerInFlight.set(this.inFlightEvents);
    }
  }

  private nextEventId(): string {
    this.eventIdSequence++;
    return this.eventIdPrefix + this.eventIdSequence.toString(36);
  }

  /** Flushes what is queued (bounded by `timeoutMs`) and disconnects. */
  async close(timeoutMs: number): Promise<void> {
    this.ready = false;
    try {
      await this.producer.flush({ timeout: timeoutMs });
    } catch (err) {
      this.logger.warn({ err }, 'producer flush did not complete');
    }
    await this.producer.disconnect();
  }
}

function classifyProduceError(err: unknown): PipelineError {
  const code = (err as { code?: unknown }).code;
  const text = err instanceof Error ? err.message : String(err);
  if (code === KafkaJS.ErrorCodes.ERR__MSG_TIMED_OUT || /timed out/i.test(text)) {
    return new PipelineError(
      'broker_timeout',
      'the broker did not acknowledge in time; the event may or may not be stored: resend it with the same event_id',
      { cause: err, retryable: true },
    );
  }
  if (code === KafkaJS.ErrorCodes.ERR__QUEUE_FULL) {
    return new PipelineError('queue_full', 'the producer queue is full', {
      cause: err,
      retryable: true,
    });
  }
  return new PipelineError('broker_unavailable', `the broker refused the events: ${text}`, {
    cause: err,
    retryable: true,
  });
}
