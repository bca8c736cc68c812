/**
 * Baseline of aggregate-catchup: the ceiling of the client the aggregator is built on. The
 * native (non-KafkaJS) API of @confluentinc/kafka-javascript, `KafkaConsumer.consume(n)` in a
 * loop, with the aggregator's fetch settings and no per-record work beyond reading each value's
 * length. Every record still becomes a JavaScript object with a copied value `Buffer` on the main
 * thread: what no consumer on this client can avoid, and what `kcat` (C, no JavaScript) never
 * pays. Runs until it has seen EXPECTED records or CAP_SEC passed since its first record, then
 * prints one JSON line.
 *
 *   KAFKA_BROKERS=... TOPIC=... GROUP=... EXPECTED=... CAP_SEC=30 node client-consumer.js
 */
import kafkaJavascript from '@confluentinc/kafka-javascript';
import { CONSUME_MAX_MESSAGES, FETCH_SETTINGS } from '../../aggregator/native-consumer.js';
import { ConfigReader } from '../../shared/config-reader.js';

const r = new ConfigReader(process.env);
const brokers = r.list('KAFKA_BROKERS', ['127.0.0.1:9092']);
const topic = r.string('TOPIC', 'bench');
const groupId = r.string('GROUP', 'bench-client');
const expected = r.int('EXPECTED', 1, { min: 1, max: 1e9 });
const capMs = r.secondsAsMs('CAP_SEC', 30, { min: 1, max: 3600 });
r.finish();

const consumer = new kafkaJavascript.KafkaConsumer(
  {
    'metadata.broker.list': brokers.join(','),
    'group.id': groupId,
    'enable.auto.commit': false,
    // As the aggregator (aggregator/native-consumer.ts).
    ...FETCH_SETTINGS,
  },
  { 'auto.offset.reset': 'earliest' },
);
await new Promise<void>((resolve, reject) =>
  consumer.connect({}, (err) => (err ? reject(err) : resolve())),
);
consumer.setDefaultConsumeTimeout(100);
(
  consumer as unknown as { setDefaultIsTimeoutOnlyForFirstMessage(only: boolean): void }
).setDefaultIsTimeoutOnlyForFirstMessage(true);
consumer.subscribe([topic]);

let consumed = 0;
let bytes = 0;
let firstAt = 0;
let cpuBefore: NodeJS.CpuUsage | undefined;
const startDeadline = Date.now() + 60_000;
while (consumed < expected && (firstAt === 0 || performance.now() - firstAt < capMs)) {
  if (firstAt === 0 && Date.now() > startDeadline) throw new Error('nothing consumed within 60 s');
  const messages = await new Promise<kafkaJavascript.Message[]>((resolve, reject) =>
    consumer.consume(CONSUME_MAX_MESSAGES, (err, batch) => (err ? reject(err) : resolve(batch))),
  );
  if (messages.length > 0 && firstAt === 0) {
    firstAt = performance.now();
    cpuBefore = process.cpuUsage();
  }
  for (const message of messages) bytes += message.value?.length ?? 0;
  consumed += messages.length;
}
const elapsedSec = (performance.now() - firstAt) / 1000;
const cpu = process.cpuUsage(cpuBefore);
process.stdout.write(
  `${JSON.stringify({
    consumed,
    bytes,
    elapsedSec,
    eventsPerSec: consumed / elapsedSec,
    cappedAtSec: consumed < expected ? capMs / 1000 : null,
    cpuPct: ((cpu.user + cpu.system) / 1e6 / elapsedSec) * 100,
  })}\n`,
);
consumer.disconnect(() => process.exit(0));
