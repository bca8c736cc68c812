/**
 * aggregate-catchup: a topic pre-filled with N events; each contender reads it from the
 * beginning until caught up. Contenders: the aggregator with WORKERS=2 (its default here), 1 and
 * 0 (inline), raw `kcat -C -e` to /dev/null, and a KafkaJS `eachMessage` consumer doing the same
 * aggregation on its main thread.
 */

import { type AggregatorRun, aggregatorCatchup } from '../aggregator-run.js';
import { type ConsumeRun, kcatAvailable, kcatConsume } from '../baselines/kcat-consumer.js';
import { BenchProcess, distScript } from '../bench-process.js';
import { atLeast, type Contender, type ScenarioResult } from '../bench-result.js';
import { producedEvents } from '../event-generator.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import { type Figure, figure } from '../statistics.js';

export const aggregateCatchup: Scenario = {
  name: 'aggregate-catchup',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config, log } = context;
    const startedAt = new Date();
    const records = config.catchupEvents;
    const topic = context.topics.name('catchup');
    await context.topics.create(topic);
    log(`  filling ${topic} with ${num(records)} events`);
    const fillStarted = Date.now();
    await context.topics.fill(
      topic,
      producedEvents({ count: records, endMs: Date.now(), spanMs: 10 * 60_000 }),
      (done) => {
        if (done % 500_000 === 0 || done === records) log(`  filled ${num(done)}`);
      },
    );
    const inTopic = await context.topics.totalRecords(topic);
    log(
      `  topic holds ${num(inTopic)} records (${((Date.now() - fillStarted) / 1000).toFixed(0)} s to fill)`,
    );

    const contenders: Array<{
      name: string;
      role: 'target' | 'baseline';
      run: () => Promise<CatchupRun>;
    }> = [];
    const aggregator = (workers: number) => () =>
      aggregatorCatchup(context, {
        topic,
        records: inTopic,
        workers,
        capSec: config.catchupCapSec * 2,
      });
    contenders.push({ name: 'aggregator-workers-2', role: 'target', run: aggregator(2) });
    const kcat = kcatAvailable();
    if (kcat) {
      contenders.push({
        name: 'kcat',
        role: 'baseline',
        run: () =>
          kcatConsume({
            brokers: context.kafkaBrokers,
            topic,
            records: inTopic,
            timeoutMs: 300_000,
          }),
      });
    }
    contenders.push({ name: 'aggregator-workers-1', role: 'target', run: aggregator(1) });
    contenders.push({
      name: 'kafkajs-eachMessage',
      role: 'baseline',
      run: () =>
        baselineConsume(
          context,
          'kafkajs-eachMessage',
          'kafkajs-consumer.js',
          topic,
          inTopic,
          config.catchupCapSec,
        ),
    });
    contenders.push({
      name: 'client-consume',
      role: 'baseline',
      run: () =>
        baselineConsume(
          context,
          'client-consume',
          'client-consumer.js',
          topic,
          inTopic,
          config.catchupCapSec,
        ),
    });
    contenders.push({ name: 'aggregator-workers-0', role: 'target', run: aggregator(0) });

    const results = await alternate(
      config.runs,
      contenders,
      log,
      (run) =>
        `${num(run.eventsPerSec)} events/s over ${run.elapsedSec.toFixed(1)} s${run.capped ? ` (cut at the cap after ${num(run.consumed)})` : ''}, cpu ${num(run.cpuPct)} %`,
    );
    const warnings: string[] = [];
    if (!kcat)
      warnings.push(
        'kcat is not installed: the raw-consume baseline was skipped (apt-get install -y kcat)',
      );
    const out: Contender[] = contenders.map(({ name, role }) => {
      const runs = results.get(name) ?? [];
      for (const [i, run] of runs.entries()) {
        if (run.capped) {
          warnings.push(
            `${name} run ${i + 1} was cut after ${run.elapsedSec.toFixed(0)} s having consumed ${num(run.consumed)} of ${num(inTopic)}: its rate is over that time`,
          );
        }
      }
      return {
        name,
        role,
        throughput: figure(
          runs.map((run) => run.eventsPerSec),
          'events/s',
        ),
        targetCpuPct: figure(
          runs.map((run) => run.cpuPct),
          '% of a core',
        ),
        extra: {
          elapsedSec: figure(
            runs.map((run) => run.elapsedSec),
            's',
          ),
          ...stackCpu(runs),
        },
      };
    });
    const median = (name: string): number =>
      out.find((c) => c.name === name)?.throughput.median ?? Number.NaN;
    // The targets of issue 23: the worker pool pays for itself, the aggregator comes close to
    // its own client's ceiling, and beats a KafkaJS consumer doing the same work.
    const ratios = [
      atLeast(
        'aggregate-catchup: the worker pool',
        'aggregator WORKERS=2 events/s ÷ WORKERS=0 events/s',
        median('aggregator-workers-2') / median('aggregator-workers-0'),
        1.2,
      ),
      atLeast(
        "aggregate-catchup vs the client's ceiling",
        'aggregator (WORKERS=2) events/s ÷ client-consume events/s',
        median('aggregator-workers-2') / median('client-consume'),
        0.9,
      ),
      atLeast(
        'aggregate-catchup vs KafkaJS eachMessage',
        'aggregator (WORKERS=2) events/s ÷ KafkaJS eachMessage events/s',
        median('aggregator-workers-2') / median('kafkajs-eachMessage'),
        1,
      ),
    ];
    return {
      scenario: 'aggregate-catchup',
      method: `a topic of ${BENCH_PARTITIONS_TEXT} pre-filled with ${num(inTopic)} events (as ingest writes them — keyed by user, JSON, content-type header — but uncompressed, since KafkaJS has no LZ4 codec; 200,000 users, event times over 10 minutes, 60 s windows); each run reads it from the beginning (a fresh schema and consumer group per aggregator run, so positions start at 0); events/s from the first record seen to caught up, polled every 100 ms on the aggregator's own counter; the aggregator also flushes to PostgreSQL every ${config.flushIntervalSec} s and 20,000 records as in production; KafkaJS does the same parse/validate/window-set work without any write; client-consume is the aggregator's client (@confluentinc/kafka-javascript, native consume(n) with the aggregator's batch and fetch settings) reading each value's length and nothing more; ${config.runs} runs alternating`,
      startedAt: startedAt.toISOString(),
      durationSec: (Date.now() - startedAt.getTime()) / 1000,
      contenders: out,
      ratios,
      warnings,
      notes: [
        `the worker pool: WORKERS=1 ÷ WORKERS=0 = ${(median('aggregator-workers-1') / median('aggregator-workers-0')).toFixed(2)}`,
        `the client's own ceiling (client-consume: native consume(n), nothing done per record): KafkaJS eachMessage reaches ${(median('kafkajs-eachMessage') / median('client-consume')).toFixed(2)} × it`,
        ...(kcat
          ? [
              `raw consume in C (kcat, no JavaScript): the aggregator (WORKERS=2) reaches ${(median('aggregator-workers-2') / median('kcat')).toFixed(2)} × it, client-consume ${(median('client-consume') / median('kcat')).toFixed(2)} ×`,
            ]
          : []),
      ],
    };
  },
};

const BENCH_PARTITIONS_TEXT = '6 partitions';

/** A contender's run; the aggregator's also says where the rest of the machine's CPU went. */
type CatchupRun = ConsumeRun &
  Partial<Pick<AggregatorRun, 'machineCpuPct' | 'brokerCpuPct' | 'postgresCpuPct'>>;

/** The machine's, the broker's and PostgreSQL's CPU over the runs that measured them. */
function stackCpu(runs: readonly CatchupRun[]): Record<string, Figure> {
  const measured = runs.filter((run) => run.machineCpuPct !== undefined);
  if (measured.length === 0) return {};
  const of = (pick: (run: CatchupRun) => number | undefined) =>
    figure(
      measured.map((run) => pick(run) ?? 0),
      '% of a core',
    );
  return {
    machineCpuPct: of((run) => run.machineCpuPct),
    brokerCpuPct: of((run) => run.brokerCpuPct),
    postgresCpuPct: of((run) => run.postgresCpuPct),
  };
}

/** A consumer baseline in its own process (`bench/baselines/<script>`), reading `topic` once. */
async function baselineConsume(
  context: BenchContext,
  name: string,
  script: string,
  topic: string,
  records: number,
  capSec: number,
): Promise<ConsumeRun> {
  const consumer = new BenchProcess(
    name,
    [distScript(`baselines/${script}`)],
    {
      KAFKA_BROKERS: context.kafkaBrokers,
      TOPIC: topic,
      GROUP: context.topics.name(name),
      EXPECTED: String(records),
      CAP_SEC: String(capSec),
    },
    { keepStdout: true },
  );
  await consumer.waitExit(capSec * 1000 + 90_000);
  const line = consumer.stdout.trim().split('\n').at(-1) ?? '';
  try {
    const parsed = JSON.parse(line) as {
      consumed: number;
      elapsedSec: number;
      eventsPerSec: number;
      cpuPct: number;
      cappedAtSec: number | null;
    };
    return { ...parsed, capped: parsed.cappedAtSec !== null };
  } catch {
    throw new Error(`${name} printed no result${consumer.tail()}`);
  }
}
