/**
 * ingest-single: autocannon POSTs single events to ingest, and with the same flags to a bare
 * uWebSockets.js server (the HTTP ceiling) and to Fastify + KafkaJS (the typical alternative).
 */
import { freeTcpPort } from '../../shared/testing.js';
import { BenchProcess, distScript } from '../bench-process.js';
import { atLeast, type Contender, type ScenarioResult } from '../bench-result.js';
import { singleEventBodies } from '../event-generator.js';
import { GENERATOR_BOUND_PCT, type LoadResult, runLoad } from '../http-load.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import { startIngestProcess } from '../service-processes.js';
import { figure } from '../statistics.js';

interface Server {
  name: string;
  role: 'target' | 'baseline';
  process: BenchProcess;
  url: string;
}

export const ingestSingle: Scenario = {
  name: 'ingest-single',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config, log } = context;
    const startedAt = new Date();
    const bodies = singleEventBodies(1000);
    const servers: Server[] = [];
    try {
      const ingestTopic = context.topics.name('single_ingest');
      const fastifyTopic = context.topics.name('single_fastify');
      await context.topics.create(ingestTopic);
      await context.topics.create(fastifyTopic);
      const ingest = await startIngestProcess({
        kafkaBrokers: context.kafkaBrokers,
        topic: ingestTopic,
        cpuProfileDir: config.ingestCpuProfileDir,
      });
      servers.push({ name: 'ingest', role: 'target', process: ingest.process, url: ingest.url });
      const barePort = await freeTcpPort();
      const bare = new BenchProcess('bare-uws', [distScript('baselines/bare-uws-server.js')], {
        PORT: String(barePort),
      });
      await bare.waitHttpOk(`http://127.0.0.1:${barePort}/healthz`);
      servers.push({
        name: 'bare-uws',
        role: 'baseline',
        process: bare,
        url: `http://127.0.0.1:${barePort}`,
      });
      const fastifyPort = await freeTcpPort();
      const fastify = new BenchProcess(
        'fastify-kafkajs',
        [distScript('baselines/fastify-kafkajs-server.js')],
        { PORT: String(fastifyPort), KAFKA_BROKERS: context.kafkaBrokers, TOPIC: fastifyTopic },
      );
      await fastify.waitHttpOk(`http://127.0.0.1:${fastifyPort}/healthz`);
      servers.push({
        name: 'fastify-kafkajs',
        role: 'baseline',
        process: fastify,
        url: `http://127.0.0.1:${fastifyPort}`,
      });

      const load = (server: Server, durationSec: number): Promise<LoadResult> =>
        runLoad({
          url: server.url,
          path: '/activity',
          bodies,
          connections: config.httpConnections,
          durationSec,
          targetPid: server.process.pid,
          workers: config.httpGenerators,
        });
      log(`  warming up each server for ${Math.min(2, config.httpDurationSec)} s`);
      for (const server of servers) await load(server, Math.min(2, config.httpDurationSec));

      const results = await alternate(
        config.runs,
        servers.map((server) => ({
          name: server.name,
          run: () => load(server, config.httpDurationSec),
        })),
        log,
        describeLoad,
      );
      return loadScenarioResult({
        scenario: 'ingest-single',
        method: `autocannon in ${config.httpGenerators} worker threads, ${config.httpConnections} keep-alive connections among them, pipelining 1, ${config.httpDurationSec} s per run, POST /activity with 1,000 distinct pre-generated bodies (100,000 users, 55 % page_view); the same generator for every server; CPU efficiency = requests per CPU-second of the server's process (its /proc CPU over the run), ingest's ÷ bare uWS's, medians of the per-run figures; ${config.runs} runs alternating`,
        startedAt,
        servers,
        results,
        unit: 'requests/s',
        ratios: (median, perCpuSecond) => [
          atLeast(
            'ingest-single vs Fastify + KafkaJS',
            'ingest req/s ÷ Fastify+KafkaJS req/s',
            median('ingest') / median('fastify-kafkajs'),
            3,
          ),
          atLeast(
            'ingest-single CPU efficiency vs bare uWebSockets.js',
            'ingest requests per CPU-second ÷ bare uWS requests per CPU-second',
            perCpuSecond('ingest') / perCpuSecond('bare-uws'),
            0.4,
          ),
        ],
        notes: (median) => [
          `ingest req/s ÷ bare uWS req/s = ${(median('ingest') / median('bare-uws')).toFixed(2)} (not a target: ingest answers after the broker's acknowledgement, so its rate is connections ÷ acknowledgement latency, while bare uWS answers at once; what it costs per request is the CPU efficiency row)`,
        ],
        onMedians: (median) => {
          context.ingestPeakPerSec = median('ingest');
        },
      });
    } finally {
      await Promise.all(servers.map((server) => server.process.stop()));
    }
  },
};

export function describeLoad(result: LoadResult): string {
  return `${num(result.okPerSec)} ok/s, p99 ${result.latencyP99Ms} ms, target cpu ${num(result.targetCpuPct)} %, generator cpu ${num(result.generatorCpuPct)} % (busiest thread ${num(result.generatorThreadCpuPct)} %), machine ${num(result.machineCpuPct)} %${result.non2xx + result.errors > 0 ? `, ${result.non2xx} non-2xx, ${result.errors} errors` : ''}`;
}

/** Turns alternating HTTP load runs into a scenario result, with the validity warnings. */
export function loadScenarioResult(options: {
  scenario: string;
  method: string;
  startedAt: Date;
  servers: ReadonlyArray<{ name: string; role: 'target' | 'baseline' }>;
  results: Map<string, LoadResult[]>;
  unit: string;
  /** Multiplies requests/s into the unit (events per request). */
  scale?: number;
  /**
   * `median`: a contender's median throughput; `perCpuSecond`: the median over its runs of
   * requests per CPU-second of its process (NaN without a process CPU).
   */
  ratios: (
    median: (name: string) => number,
    perCpuSecond: (name: string) => number,
  ) => ScenarioResult['ratios'];
  notes?: (median: (name: string) => number) => string[];
  onMedians?: (median: (name: string) => number) => void;
  extraContenders?: Contender[];
}): ScenarioResult {
  const scale = options.scale ?? 1;
  const warnings: string[] = [];
  const contenders: Contender[] = options.servers.map((server) => {
    const runs = options.results.get(server.name) ?? [];
    for (const [i, run] of runs.entries()) {
      if (run.generatorThreadCpuPct >= GENERATOR_BOUND_PCT) {
        warnings.push(
          `${server.name} run ${i + 1}: a generator thread used ${num(run.generatorThreadCpuPct)} % of a core — the generator, not the server, was the limit`,
        );
      }
      if (run.non2xx + run.errors > 0) {
        warnings.push(
          `${server.name} run ${i + 1}: ${run.non2xx} non-2xx answers and ${run.errors} errors/timeouts (not counted as throughput)`,
        );
      }
    }
    return {
      name: server.name,
      role: server.role,
      throughput: figure(
        runs.map((run) => run.okPerSec * scale),
        options.unit,
      ),
      targetCpuPct: figure(
        runs.map((run) => run.targetCpuPct),
        '% of a core',
      ),
      generatorCpuPct: figure(
        runs.map((run) => run.generatorCpuPct),
        '% of a core',
      ),
      extra: {
        requestsPerCpuSec: figure(
          runs.map((run) => requestsPerCpuSecond(run)),
          'requests per CPU-second of the process',
        ),
        generatorThreadCpuPct: figure(
          runs.map((run) => run.generatorThreadCpuPct),
          '% of a core (busiest generator thread)',
        ),
        latencyP50Ms: figure(
          runs.map((run) => run.latencyP50Ms),
          'ms',
        ),
        latencyP99Ms: figure(
          runs.map((run) => run.latencyP99Ms),
          'ms',
        ),
        machineCpuPct: figure(
          runs.map((run) => run.machineCpuPct),
          '% of a core (all processes)',
        ),
        non2xx: runs.reduce((sum, run) => sum + run.non2xx, 0),
        errors: runs.reduce((sum, run) => sum + run.errors, 0),
      },
    };
  });
  const all = [...contenders, ...(options.extraContenders ?? [])];
  const median = (name: string): number =>
    all.find((c) => c.name === name)?.throughput.median ?? Number.NaN;
  const perCpuSecond = (name: string): number => {
    const runs = options.results.get(name);
    return runs === undefined || runs.length === 0
      ? Number.NaN
      : figure(runs.map(requestsPerCpuSecond), 'requests per CPU-second').median;
  };
  options.onMedians?.(median);
  return {
    scenario: options.scenario,
    method: options.method,
    startedAt: options.startedAt.toISOString(),
    durationSec: (Date.now() - options.startedAt.getTime()) / 1000,
    contenders: all,
    ratios: options.ratios(median, perCpuSecond),
    warnings,
    ...(options.notes === undefined ? {} : { notes: options.notes(median) }),
  };
}

/** Requests answered 2xx per second of the server's CPU (its process, every thread). */
function requestsPerCpuSecond(run: LoadResult): number {
  return run.targetCpuPct > 0 ? run.okPerSec / (run.targetCpuPct / 100) : Number.NaN;
}
