/**
 * end-to-end: single events at a fixed arrival rate (autocannon `-R`), 70 % of ingest's measured
 * peak, through ingest, the broker and the aggregator into PostgreSQL. Reports whether the lag
 * stays flat and the freshness (event received → visible in PostgreSQL) p50/p99.
 */
import { sleep } from '../../shared/lifecycle.js';
import { dropRunSchema } from '../aggregator-run.js';
import { kcatAvailable } from '../baselines/kcat-consumer.js';
import { atLeast, atMost, type ScenarioResult } from '../bench-result.js';
import { singleEventBodies } from '../event-generator.js';
import { FreshnessTracker } from '../freshness-tracker.js';
import { runLoad } from '../http-load.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import { readMetric, startAggregatorProcess, startIngestProcess } from '../service-processes.js';
import { figure, median, quantile, slope } from '../statistics.js';

interface EndToEndRun {
  offeredPerSec: number;
  acceptedPerSec: number;
  non2xx: number;
  /** Records not yet in PostgreSQL, sampled every second during the load. */
  lagSamples: Array<{ x: number; y: number }>;
  /** Lag growth over the run from a least-squares fit, in records. */
  lagGrowth: number;
  maxLag: number;
  freshnessP50Ms: number;
  freshnessP99Ms: number;
  freshnessMaxMs: number;
  unseen: number;
  ingestCpuPct: number;
  generatorCpuPct: number;
  machineCpuPct: number;
}

export const endToEnd: Scenario = {
  name: 'end-to-end',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config, log } = context;
    const startedAt = new Date();
    const bodies = singleEventBodies(1000);
    const warnings: string[] = [];
    const notes: string[] = [];
    let peak = context.ingestPeakPerSec;
    if (peak === undefined) {
      const topic = context.topics.name('e2e_peak');
      const ingest = await startIngestProcess({ kafkaBrokers: context.kafkaBrokers, topic });
      try {
        const probe = await runLoad({
          url: ingest.url,
          path: '/activity',
          bodies,
          connections: config.httpConnections,
          durationSec: Math.min(5, config.httpDurationSec),
          targetPid: ingest.process.pid,
        });
        peak = probe.okPerSec;
        notes.push(
          `ingest-single did not run in this bench run: the peak (${num(peak)} req/s) was measured by a ${Math.min(5, config.httpDurationSec)} s probe`,
        );
      } finally {
        await ingest.process.stop();
      }
    } else {
      notes.push(`peak from ingest-single in the same bench run: ${num(peak)} req/s`);
    }
    const rate = Math.max(1, Math.round(peak * config.endToEndLoadShare));
    log(
      `  arrival rate ${num(rate)} events/s (${config.endToEndLoadShare * 100} % of ${num(peak)})`,
    );
    const kcat = kcatAvailable();
    if (!kcat) warnings.push('kcat is not installed: per-event freshness could not be read back');

    const once = async (): Promise<EndToEndRun> => {
      const name = context.topics.name('e2e');
      const ingest = await startIngestProcess({ kafkaBrokers: context.kafkaBrokers, topic: name });
      const aggregator = await startAggregatorProcess({
        kafkaBrokers: context.kafkaBrokers,
        databaseUrl: context.databaseUrl,
        topic: name,
        schema: name,
        group: name,
        workers: 2,
        env: { FLUSH_INTERVAL_SEC: String(config.flushIntervalSec) },
      });
      const tracker = new FreshnessTracker(context.databaseUrl, name);
      try {
        const assignDeadline = Date.now() + 60_000;
        while (((await readMetric(aggregator.url, 'aggregator_assigned_partitions')) ?? 0) < 6) {
          if (Date.now() > assignDeadline)
            throw new Error(`the aggregator was not assigned${aggregator.process.tail()}`);
          await sleep(200);
        }
        await tracker.start();
        const lagSamples: Array<{ x: number; y: number }> = [];
        const loadStarted = Date.now();
        let sampling = true;
        const sampler = (async () => {
          while (sampling) {
            await sleep(1_000);
            const ends = await context.topics.endOffsets(name).catch(() => undefined);
            if (ends === undefined) continue;
            const visible = tracker.visible();
            let lag = 0;
            for (const [partition, high] of ends)
              lag += Math.max(0, high - ((visible.get(partition) ?? -1) + 1));
            lagSamples.push({ x: (Date.now() - loadStarted) / 1000, y: lag });
          }
        })();
        const load = await runLoad({
          url: ingest.url,
          path: '/activity',
          bodies,
          connections: config.httpConnections,
          durationSec: config.endToEndDurationSec,
          overallRate: rate,
          targetPid: ingest.process.pid,
        });
        sampling = false;
        await sampler;
        // Let the last flushes land before reading freshness back.
        const ends = await context.topics.endOffsets(name);
        const settleDeadline = Date.now() + 30_000;
        for (;;) {
          const visible = tracker.visible();
          const behind = [...ends].some(
            ([p, high]) => high > 0 && (visible.get(p) ?? -1) + 1 < high,
          );
          if (!behind || Date.now() > settleDeadline) break;
          await sleep(200);
        }
        await tracker.stop();
        const fresh = kcat
          ? await tracker.freshnessOf(context.kafkaBrokers, name)
          : { values: [], unseen: 0 };
        // The first seconds ramp up (JIT, first flushes): the fit starts after them.
        const steady = lagSamples.filter((s) => s.x >= Math.min(5, config.endToEndDurationSec / 3));
        const growth = slope(steady) * config.endToEndDurationSec;
        return {
          offeredPerSec: rate,
          acceptedPerSec: load.okPerSec,
          non2xx: load.non2xx + load.errors,
          lagSamples,
          lagGrowth: growth,
          maxLag: Math.max(0, ...lagSamples.map((s) => s.y)),
          freshnessP50Ms: quantile(fresh.values, 0.5),
          freshnessP99Ms: quantile(fresh.values, 0.99),
          freshnessMaxMs: quantile(fresh.values, 1),
          unseen: fresh.unseen,
          ingestCpuPct: load.targetCpuPct,
          generatorCpuPct: load.generatorCpuPct,
          machineCpuPct: load.machineCpuPct,
        };
      } finally {
        await tracker.stop().catch(() => {});
        await Promise.all([ingest.process.stop(), aggregator.process.stop()]);
        await dropRunSchema(context.databaseUrl, name).catch(() => {});
      }
    };
    const results = await alternate(
      config.runs,
      [{ name: 'pipeline', run: once }],
      log,
      (run) =>
        `${num(run.acceptedPerSec)} of ${num(run.offeredPerSec)} events/s accepted, lag growth ${num(run.lagGrowth)} (max ${num(run.maxLag)}), freshness p50 ${num(run.freshnessP50Ms)} ms p99 ${num(run.freshnessP99Ms)} ms, generator cpu ${num(run.generatorCpuPct)} %, machine ${num(run.machineCpuPct)} %`,
    );
    const runs = results.get('pipeline') ?? [];
    for (const [i, run] of runs.entries()) {
      if (run.acceptedPerSec < run.offeredPerSec * 0.95) {
        warnings.push(
          `run ${i + 1}: only ${num(run.acceptedPerSec)} of ${num(run.offeredPerSec)} events/s were accepted`,
        );
      }
      if (run.non2xx > 0) warnings.push(`run ${i + 1}: ${run.non2xx} non-2xx answers or errors`);
      if (run.unseen > 0)
        warnings.push(
          `run ${i + 1}: ${run.unseen} records never became visible in PostgreSQL within 30 s of the load's end`,
        );
      if (run.generatorCpuPct >= 90)
        warnings.push(`run ${i + 1}: the generator used ${num(run.generatorCpuPct)} % of a core`);
    }
    const p99 = figure(
      runs.map((run) => run.freshnessP99Ms / 1000),
      's',
    );
    const lagGrowthShare = figure(
      runs.map((run) => run.lagGrowth / run.offeredPerSec),
      's of arrivals',
    );
    const limitSec = config.flushIntervalSec + 1;
    return {
      scenario: 'end-to-end',
      method: `POST /activity single events at a fixed ${num(rate)} events/s (autocannon -R, ${config.httpConnections} connections) for ${config.endToEndDurationSec} s through ingest → broker → aggregator (WORKERS=2, FLUSH_INTERVAL_SEC=${config.flushIntervalSec}) → PostgreSQL, fresh topic/schema per run; lag = records in the topic not yet reflected by through_offset in PostgreSQL, sampled every second, its growth from a least-squares fit after the first 5 s; freshness per event = first 100 ms poll of PostgreSQL showing its offset − its Kafka timestamp (ingest's receive time), every record read back with kcat; ${config.runs} runs`,
      startedAt: startedAt.toISOString(),
      durationSec: (Date.now() - startedAt.getTime()) / 1000,
      contenders: [
        {
          name: 'pipeline',
          role: 'target',
          throughput: figure(
            runs.map((run) => run.acceptedPerSec),
            'events/s accepted',
          ),
          targetCpuPct: figure(
            runs.map((run) => run.ingestCpuPct),
            '% of a core (ingest)',
          ),
          generatorCpuPct: figure(
            runs.map((run) => run.generatorCpuPct),
            '% of a core',
          ),
          extra: {
            freshnessP50Sec: figure(
              runs.map((run) => run.freshnessP50Ms / 1000),
              's',
            ),
            freshnessP99Sec: p99,
            freshnessMaxSec: figure(
              runs.map((run) => run.freshnessMaxMs / 1000),
              's',
            ),
            lagGrowthRecords: figure(
              runs.map((run) => run.lagGrowth),
              'records over the run',
            ),
            maxLagRecords: figure(
              runs.map((run) => run.maxLag),
              'records',
            ),
            machineCpuPct: figure(
              runs.map((run) => run.machineCpuPct),
              '% of a core (all processes)',
            ),
          },
        },
      ],
      ratios: [
        // Lag can only be flat at 70 % of the peak if the pipeline took 70 % of the peak: a
        // fixed-rate generator whose requests queue behind slow answers sends less than asked.
        atLeast(
          'end-to-end arrival rate taken',
          'accepted ÷ offered events/s',
          median(runs.map((run) => run.acceptedPerSec / run.offeredPerSec)),
          0.95,
        ),
        atMost(
          'end-to-end lag flat',
          'lag growth over the run ÷ one second of arrivals',
          lagGrowthShare.median,
          1,
        ),
        atMost(
          'end-to-end freshness p99',
          `freshness p99 in s (limit: flush interval ${config.flushIntervalSec} s + 1 s)`,
          p99.median,
          limitSec,
        ),
      ],
      warnings,
      notes,
    };
  },
};
