/**
 * ingest-batch: POST /activities with 100 and 1,000 events per request, in events/s, against a
 * plain librdkafka producer pushing the same kind of events in-process (the broker's ceiling for
 * this client on this machine).
 */
import { BenchProcess, distScript } from '../bench-process.js';
import { atLeast, type Contender, type ScenarioResult } from '../bench-result.js';
import { batchBodies } from '../event-generator.js';
import { type LoadResult, runLoad } from '../http-load.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import { startIngestProcess } from '../service-processes.js';
import { figure } from '../statistics.js';
import { describeLoad, loadScenarioResult } from './ingest-single.js';

const BATCH_SIZES = [100, 1000] as const;

interface ProducerRun {
  eventsPerSec: number;
  cpuPct: number;
  failed: number;
}

export const ingestBatch: Scenario = {
  name: 'ingest-batch',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config, log } = context;
    const startedAt = new Date();
    const ingestTopic = context.topics.name('batch_ingest');
    const producerTopic = context.topics.name('batch_producer');
    await context.topics.create(ingestTopic);
    await context.topics.create(producerTopic);
    const ingest = await startIngestProcess({
      kafkaBrokers: context.kafkaBrokers,
      topic: ingestTopic,
      cpuProfileDir: config.ingestCpuProfileDir,
    });
    try {
      const bodies = new Map(
        BATCH_SIZES.map((size) => [size, batchBodies(size === 100 ? 200 : 20, size)]),
      );
      const load = (size: number, durationSec: number): Promise<LoadResult> =>
        runLoad({
          url: ingest.url,
          path: '/activities',
          bodies: bodies.get(size as (typeof BATCH_SIZES)[number]) ?? [],
          connections: config.batchConnections,
          durationSec,
          targetPid: ingest.process.pid,
        });
      const produce = async (): Promise<ProducerRun> => {
        const producer = new BenchProcess(
          'plain-producer',
          [distScript('baselines/plain-producer.js')],
          {
            KAFKA_BROKERS: context.kafkaBrokers,
            TOPIC: producerTopic,
            DURATION_SEC: String(config.httpDurationSec),
          },
          { keepStdout: true },
        );
        await producer.waitExit(config.httpDurationSec * 1000 + 60_000);
        const line = producer.stdout.trim().split('\n').at(-1) ?? '';
        let parsed: { eventsPerSec: number; failed: number; elapsedSec: number; cpuPct: number };
        try {
          parsed = JSON.parse(line) as typeof parsed;
        } catch {
          throw new Error(`plain-producer printed no result${producer.tail()}`);
        }
        // Its own CPU over its producing time, not its start-up and final flush.
        return { eventsPerSec: parsed.eventsPerSec, failed: parsed.failed, cpuPct: parsed.cpuPct };
      };
      log('  warming up ingest for 2 s');
      await load(1000, Math.min(2, config.httpDurationSec));

      const httpRuns = new Map<string, LoadResult[]>([
        ['ingest-batch-100', []],
        ['ingest-batch-1000', []],
      ]);
      const producerRuns: ProducerRun[] = [];
      await alternate<LoadResult | ProducerRun>(
        config.runs,
        [
          { name: 'ingest-batch-1000', run: () => load(1000, config.httpDurationSec) },
          { name: 'plain-producer', run: produce },
          { name: 'ingest-batch-100', run: () => load(100, config.httpDurationSec) },
        ],
        (line) => log(line),
        (value) =>
          'okPerSec' in value
            ? `${describeLoad(value)} (${value.okPerSec.toFixed(0)} requests/s)`
            : `${num(value.eventsPerSec)} events/s, producer cpu ${num(value.cpuPct)} %`,
      ).then((results) => {
        for (const [name, values] of results) {
          for (const value of values) {
            if ('okPerSec' in value) httpRuns.get(name)?.push(value);
            else producerRuns.push(value);
          }
        }
      });
      const producer: Contender = {
        name: 'plain-producer',
        role: 'baseline',
        throughput: figure(
          producerRuns.map((run) => run.eventsPerSec),
          'events/s',
        ),
        targetCpuPct: figure(
          producerRuns.map((run) => run.cpuPct),
          '% of a core',
        ),
        extra: {
          failedDeliveries: producerRuns.reduce((sum, run) => sum + run.failed, 0),
          note: 'generator and target are the same process',
        },
      };
      const perSize = (name: string): LoadResult[] => httpRuns.get(name) ?? [];
      const result100 = loadScenarioResult({
        scenario: 'ingest-batch',
        method: '',
        startedAt,
        servers: [{ name: 'ingest-batch-100', role: 'target' }],
        results: new Map([['ingest-batch-100', perSize('ingest-batch-100')]]),
        unit: 'events/s',
        scale: 100,
        ratios: () => [],
      });
      const result = loadScenarioResult({
        scenario: 'ingest-batch',
        method: `autocannon, ${config.batchConnections} keep-alive connections, ${config.httpDurationSec} s per run, POST /activities with JSON arrays of 100 (200 distinct bodies) or 1,000 (20 distinct bodies) events; events/s = 2xx answers × batch size. Baseline: a plain librdkafka producer (same library and settings as ingest: idempotent, acks=all, lz4, ingest's PRODUCER_LINGER_SEC and PRODUCER_BATCH_BYTES, at most 50,000 in flight) producing for the same time in its own process; ${config.runs} runs alternating`,
        startedAt,
        servers: [{ name: 'ingest-batch-1000', role: 'target' }],
        results: new Map([['ingest-batch-1000', perSize('ingest-batch-1000')]]),
        unit: 'events/s',
        scale: 1000,
        extraContenders: [...result100.contenders, producer],
        ratios: (median) => [
          atLeast(
            'ingest-batch (1,000/request) vs plain producer',
            'ingest events/s ÷ plain producer events/s',
            median('ingest-batch-1000') / median('plain-producer'),
            0.6,
          ),
        ],
      });
      result.warnings.push(...result100.warnings);
      return result;
    } finally {
      await ingest.process.stop();
    }
  },
};
