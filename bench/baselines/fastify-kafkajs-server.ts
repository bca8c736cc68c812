/**
 * Baseline of ingest-single: what a typical Node team would write. Fastify (its JSON body
 * parser) + KafkaJS (pure JavaScript client), with ingest's contract: validate with the same
 * schema, produce keyed by user id, answer 200 only after the broker's acknowledgement (KafkaJS
 * default acks = -1, all in-sync replicas). KafkaJS sends each request's message in its own
 * produce request; it has no built-in LZ4, so nothing is compressed (less work, not more).
 *
 *   PORT=... KAFKA_BROKERS=... TOPIC=... node fastify-kafkajs-server.js
 */
import Fastify from 'fastify';
import { Kafka, logLevel } from 'kafkajs';
import { ConfigReader } from '../../shared/config-reader.js';
import { encodeEvent, validateEvent } from '../../shared/event-schema.js';

const r = new ConfigReader(process.env);
const port = r.port('PORT', 8091);
const brokers = r.list('KAFKA_BROKERS', ['127.0.0.1:9092']);
const topic = r.string('TOPIC', 'bench');
r.finish();

const kafka = new Kafka({ clientId: 'fastify-baseline', brokers, logLevel: logLevel.ERROR });
const producer = kafka.producer();
await producer.connect();

const app = Fastify({ logger: false });
app.get('/healthz', async () => 'ok');

const MAX_AGE_MS = 7 * 24 * 3600 * 1000;

app.post('/activity', async (request, reply) => {
  const receivedAtMs = Date.now();
  const result = validateEvent(request.body, { nowMs: receivedAtMs, maxAgeMs: MAX_AGE_MS });
  if (!result.ok) {
    return reply.code(400).send({ code: result.code, message: result.message });
  }
  try {
    await producer.send({
      topic,
      messages: [
        {
          key: result.event.user_id,
          value: encodeEvent(result.event),
          timestamp: String(receivedAtMs),
          headers: { 'content-type': 'application/json' },
        },
      ],
    });
  } catch {
    return reply.code(503).send({ code: 'broker_unavailable' });
  }
  return { status: 'accepted' };
});

await app.listen({ host: '127.0.0.1', port });

process.on('SIGTERM', () => {
  void app
    .close()
    .then(() => producer.disconnect())
    .finally(() => process.exit(0));
});
