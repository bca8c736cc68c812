/**
 * Baseline of aggregate-catchup: a KafkaJS `eachMessage` consumer doing the aggregator's
 * per-record work on the main thread — parse, validate with the same schema, add the user to its
 * window's set, count page views — and nothing else (no dead letters, no PostgreSQL writes, so it
 * does less than the aggregator). Runs until it has seen EXPECTED records or CAP_SEC passed since
 * its first record, then prints one JSON line.
 *
 *   KAFKA_BROKERS=... TOPIC=... GROUP=... EXPECTED=... CAP_SEC=30 node kafkajs-consumer.js
 */
import { Kafka, logLevel } from 'kafkajs';
import { ConfigReader } from '../../shared/config-reader.js';
import { PAGE_VIEW, validateEvent } from '../../shared/event-schema.js';

const r = new ConfigReader(process.env);
const brokers = r.list('KAFKA_BROKERS', ['127.0.0.1:9092']);
const topic = r.string('TOPIC', 'bench');
const groupId = r.string('GROUP', 'bench-kafkajs');
const expected = r.int('EXPECTED', 1, { min: 1, max: 1e9 });
const capMs = r.secondsAsMs('CAP_SEC', 30, { min: 1, max: 3600 });
const windowMs = r.secondsAsMs('WINDOW_SEC', 60, { min: 1, max: 86_400 });
r.finish();

const windows = new Map<number, { users: Set<string>; events: number; pageViews: number }>();
let consumed = 0;
let firstAt = 0;
let lastAt = 0;
let cpuBefore: NodeJS.CpuUsage | undefined;
let finish: (() => void) | undefined;
const finished = new Promise<void>((resolve) => {
  finish = resolve;
});

const kafka = new Kafka({ clientId: 'kafkajs-baseline', brokers, logLevel: logLevel.ERROR });
const consumer = kafka.consumer({ groupId });
await consumer.connect();
await consumer.subscribe({ topic, fromBeginning: true });
await consumer.run({
  eachMessage: async ({ message }) => {
    if (firstAt === 0) {
      firstAt = performance.now();
      cpuBefore = process.cpuUsage();
    }
    consumed++;
    const value = message.value === null ? '' : message.value.toString('utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch {
      parsed = undefined;
    }
    const outcome = validateEvent(parsed, {
      nowMs: Number(message.timestamp),
      maxAgeMs: null,
      requireTimestamp: true,
    });
    if (outcome.ok) {
      const start = outcome.event.timestamp - (outcome.event.timestamp % windowMs);
      let window = windows.get(start);
      if (window === undefined) {
        window = { users: new Set(), events: 0, pageViews: 0 };
        windows.set(start, window);
      }
      window.users.add(outcome.event.user_id);
      window.events++;
      if (outcome.event.activity_type === PAGE_VIEW) window.pageViews++;
    }
    if (consumed >= expected || performance.now() - firstAt > capMs) {
      lastAt = performance.now();
      finish?.();
    }
  },
});
await finished;
const elapsedSec = (lastAt - firstAt) / 1000;
const cpu = process.cpuUsage(cpuBefore);
process.stdout.write(
  `${JSON.stringify({
    consumed,
    elapsedSec,
    eventsPerSec: consumed / elapsedSec,
    cappedAtSec: consumed < expected ? capMs / 1000 : null,
    windows: windows.size,
    cpuPct: ((cpu.user + cpu.system) / 1e6 / elapsedSec) * 100,
  })}\n`,
);
process.exit(0);
