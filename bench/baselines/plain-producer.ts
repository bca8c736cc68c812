/**
 * Baseline of ingest-batch: the broker's ceiling for this client on this machine. A plain
 * librdkafka producer (the same library and settings ingest uses: idempotent, acks=all, lz4,
 * ingest's linger and batch size, read from the same variables with the same defaults) pushes pre-generated events in-process, with no HTTP in between, as fast as the
 * delivery reports come back, for a fixed time. Prints one JSON line: the acknowledged events/s.
 *
 *   KAFKA_BROKERS=... TOPIC=... DURATION_SEC=10 BATCH_SIZE=1000 node plain-producer.js
 */
import kafkaJavascript from '@confluentinc/kafka-javascript';
import { readIngestConfig } from '../../ingest/config.js';
import { ConfigReader } from '../../shared/config-reader.js';
import { encodeEvent } from '../../shared/event-schema.js';
import { producedEvents } from '../event-generator.js';

const r = new ConfigReader(process.env);
const brokers = r.string('KAFKA_BROKERS', '127.0.0.1:9092');
const topic = r.string('TOPIC', 'bench');
const durationMs = r.secondsAsMs('DURATION_SEC', 10, { min: 0.1, max: 3600 });
/** Events kept in flight at most: ingest's MAX_IN_FLIGHT_EVENTS default. */
const maxInFlight = r.int('MAX_IN_FLIGHT_EVENTS', 50_000, { min: 1, max: 10_000_000 });
const ingestDefaults = readIngestConfig({});
const lingerMs = r.secondsAsMs('PRODUCER_LINGER_SEC', ingestDefaults.producerLingerMs / 1000, {
  min: 0,
  max: 1,
});
const batchBytes = r.int('PRODUCER_BATCH_BYTES', ingestDefaults.producerBatchBytes, {
  min: 1024,
  max: 16_777_216,
});
r.finish();

// The same events ingest-batch sends: validated, encoded, keyed by user.
const pool = producedEvents({ count: 100_000, endMs: Date.now(), spanMs: 1 }).map((event) => ({
  key: Buffer.from(event.user_id),
  value: Buffer.from(encodeEvent({ ...event, timestamp: Date.now() })),
}));
const headers = [{ 'content-type': Buffer.from('application/json') }];

const producer = new kafkaJavascript.Producer({
  'bootstrap.servers': brokers,
  'enable.idempotence': true,
  acks: -1,
  'compression.type': 'lz4',
  'linger.ms': lingerMs,
  'batch.size': batchBytes,
  'queue.buffering.max.messages': maxInFlight * 2,
  dr_cb: true,
});

await new Promise<void>((resolve, reject) => {
  producer.connect({}, (err) => (err ? reject(err) : resolve()));
});
producer.setPollInterval(1);

let inFlight = 0;
let acknowledged = 0;
let failed = 0;
let next = 0;
let startedAt = 0;
let done = false;
let wake: (() => void) | undefined;
producer.on('delivery-report', (err) => {
  inFlight--;
  if (err) failed++;
  else if (!done) acknowledged++;
  if (inFlight < maxInFlight / 2) wake?.();
});

const cpuBefore = process.cpuUsage();
startedAt = performance.now();
const endAt = startedAt + durationMs;
while (performance.now() < endAt) {
  while (inFlight < maxInFlight) {
    const message = pool[next++ % pool.length] as { key: Buffer; value: Buffer };
    try {
      producer.produce(topic, null, message.value, message.key, Date.now(), undefined, headers);
      inFlight++;
    } catch {
      break;
    }
  }
  await new Promise<void>((resolve) => {
    wake = resolve;
    setTimeout(resolve, 5);
  });
}
done = true;
const elapsedSec = (performance.now() - startedAt) / 1000;
const cpu = process.cpuUsage(cpuBefore);
await new Promise<void>((resolve) => producer.flush(10_000, () => resolve()));
producer.disconnect();
process.stdout.write(
  `${JSON.stringify({
    eventsPerSec: acknowledged / elapsedSec,
    acknowledged,
    failed,
    elapsedSec,
    cpuPct: ((cpu.user + cpu.system) / 1e6 / elapsedSec) * 100,
  })}\n`,
);
process.exit(0);
