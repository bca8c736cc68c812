/**
 * One aggregator process reading a pre-filled topic from its beginning: the consumption rate
 * until it has consumed the whole topic, from the aggregator's own counter
 * (`aggregator_records_consumed_total`), and its CPU over the same interval.
 */
import { sleep } from '../shared/lifecycle.js';
import type { ConsumeRun } from './baselines/kcat-consumer.js';
import { startCpuMeter } from './process-sampler.js';
import type { BenchContext } from './scenario.js';
import { type RunningService, readMetric, startAggregatorProcess } from './service-processes.js';

const POLL_MS = 100;

export async function aggregatorCatchup(
  context: BenchContext,
  options: {
    topic: string;
    records: number;
    workers: number;
    capSec: number;
    env?: Record<string, string>;
    /** Called once caught up, before the process is stopped (the memory scenario reads RSS here). */
    whenCaughtUp?: (service: RunningService) => Promise<void>;
    /** Called once assigned, before the first record (the memory scenario's idle RSS). */
    whenStarted?: (service: RunningService) => Promise<void>;
  },
): Promise<ConsumeRun> {
  const run = context.topics.name(`agg_w${options.workers}`);
  const service = await startAggregatorProcess({
    kafkaBrokers: context.kafkaBrokers,
    databaseUrl: context.databaseUrl,
    topic: options.topic,
    schema: run,
    group: run,
    workers: options.workers,
    ...(options.env === undefined ? {} : { env: options.env }),
  });
  try {
    await options.whenStarted?.(service);
    const startDeadline = Date.now() + 60_000;
    let consumed = 0;
    // The clock starts at the last poll that saw nothing consumed: the group join and the
    // checkpoint reads before it are start-up, not consumption. (Starting at the first poll that
    // saw records would lose the records of that first interval, all of them in a small topic.)
    let startedAt = performance.now();
    let meter = startCpuMeter([service.process.pid]);
    while (consumed === 0) {
      if (!service.process.running || Date.now() > startDeadline) {
        throw new Error(`the aggregator consumed nothing within 60 s${service.process.tail()}`);
      }
      startedAt = performance.now();
      meter.stop();
      meter = startCpuMeter([service.process.pid]);
      await sleep(POLL_MS / 2);
      consumed = (await readMetric(service.url, 'aggregator_records_consumed_total')) ?? 0;
    }
    const capMs = options.capSec * 1000;
    while (consumed < options.records && performance.now() - startedAt < capMs) {
      if (!service.process.running)
        throw new Error(`the aggregator exited${service.process.tail()}`);
      await sleep(POLL_MS);
      consumed = (await readMetric(service.url, 'aggregator_records_consumed_total')) ?? consumed;
    }
    const elapsedSec = (performance.now() - startedAt) / 1000;
    const cpu = meter.stop();
    await options.whenCaughtUp?.(service);
    return {
      consumed,
      elapsedSec,
      eventsPerSec: consumed / elapsedSec,
      cpuPct: cpu.byPid.get(service.process.pid) ?? 0,
      capped: consumed < options.records,
    };
  } finally {
    await service.process.stop();
  }
}
