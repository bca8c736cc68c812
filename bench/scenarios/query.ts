/**
 * query: what the query service's answers cost beside the same SQL run bare.
 *
 * A database holding a history of one site (UTC): hour and day rows with sealed sketches
 * (rollup-history.ts) and minute rows for the last day and a bit, written by SQL. The aggregator
 * runs against it with events flowing into another site (ingest, a modest steady rate), so that
 * flushes commit and NOTIFY as in production; two query service processes read it, each with
 * `sseClients` clients on `/v1/stream` of the flowing site. Measured, alternating, `runs` times:
 *
 * - `GET /v1/summary` over `summaryDays` whole days and `GET /v1/timeseries` over 24 hours by
 *   minute, with autocannon: the identical request every time on the service with its default
 *   cache (`cached`: one computation per flush interval), and a request shifted by one day or
 *   minute each time, cycling through `SHIFTS` ranges, on a service started with
 *   `QUERY_CACHE_TTL_MS=0` (`uncached`: every request computed; in-flight sharing stays, and the
 *   cycle is longer than the connections, so concurrent requests seldom share one);
 * - the baseline: the same SQL the service issues for those requests (the same read-model
 *   functions, on `pg` clients in this process), the same shifted ranges, with as many
 *   concurrent clients as autocannon has connections.
 *
 * And the stream's delivery latency: per event received, receipt − its id (the flush
 * transaction's timestamp, `updated_at` in microseconds: commit time plus the flush's own
 * duration, so an upper bound of commit → receipt).
 */
import http from 'node:http';
import autocannon from 'autocannon';
import pg from 'pg';
import { migrate } from '../../aggregator/migrations.js';
import { sealSketchesBefore } from '../../aggregator/rollups.js';
import { readTotals, readWindows } from '../../query/read-model.js';
import { sleep } from '../../shared/lifecycle.js';
import { uniqueUsersOverRange } from '../../shared/range-uniques.js';
import { atMost, type Contender, type Ratio, type ScenarioResult } from '../bench-result.js';
import { BENCH_PARTITIONS } from '../bench-topics.js';
import { batchBodies } from '../event-generator.js';
import { startCpuMeter } from '../process-sampler.js';
import { writeHistory } from '../rollup-history.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import {
  type RunningService,
  readMetric,
  readMetricsText,
  startAggregatorProcess,
  startIngestProcess,
  startQueryProcess,
} from '../service-processes.js';
import { figure, median, quantile } from '../statistics.js';

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
const HISTORY_SITE = 'history';
/** The site events flow into (ingest's default site without write keys). */
const LIVE_SITE = 'default';
/** The issue's target: the service's p99 within 1.5 × the bare SQL's. */
const P99_TARGET = 1.5;
/** The stream's promise: each window update within a second of its commit. */
const SSE_TARGET_SEC = 1;
/** Stream latencies kept, at most (later ones are counted, not kept). */
const MAX_SSE_SAMPLES = 1_000_000;
/** Events per batch and batches per second of the steady flow. */
const FLOW_BATCH = 20;
const FLOW_BATCHES_PER_SEC = 10;

interface Settings {
  summaryDays: number;
  /** Distinct ranges the uncached requests and the baseline cycle through. */
  shifts: number;
  usersPerDay: number;
  sseClients: number;
  connections: number;
}

function settings(context: BenchContext): Settings {
  const smoke = context.config.profile === 'smoke';
  return {
    summaryDays: smoke ? 2 : 30,
    shifts: 16,
    usersPerDay: smoke ? 2_000 : 100_000,
    sseClients: smoke ? 20 : 200,
    connections: 8,
  };
}

interface LoadRun {
  perSec: number;
  p50Ms: number;
  p99Ms: number;
  failures: number;
  targetCpuPct: number;
  generatorCpuPct: number;
}

type QueryName = 'summary' | 'timeseries';

export const query: Scenario = {
  name: 'query',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config, log } = context;
    const startedAt = new Date();
    const s = settings(context);
    const schema = context.topics.name('query');
    const topic = schema;
    const admin = new pg.Client({
      connectionString: context.databaseUrl,
      options: `-c search_path=${schema},public`,
    });
    await admin.connect();
    const services: RunningService[] = [];
    const streams: SseClient[] = [];
    let flowing = false;
    let flow: Promise<void> = Promise.resolve();
    try {
      // The history: whole UTC days ending at today's midnight, every day sealed (ended days are).
      await migrate(admin, schema);
      const endMs = Math.floor(Date.now() / DAY_MS) * DAY_MS;
      const days = s.summaryDays + s.shifts - 1;
      log(`  writing ${days} days × ${num(s.usersPerDay)} users and minute rows into ${schema}`);
      const history = await writeHistory(
        admin,
        {
          site: HISTORY_SITE,
          endMs,
          days,
          usersPerDay: s.usersPerDay,
          population: Math.round(s.usersPerDay * 7.5),
          membershipDays: Math.min(days, 7),
          partitions: BENCH_PARTITIONS,
        },
        log,
      );
      await sealSketchesBefore(admin, endMs);
      const minuteEndMs = Math.floor(Date.now() / MINUTE_MS) * MINUTE_MS;
      const minuteRows = await writeMinuteRows(admin, minuteEndMs, DAY_MS + s.shifts * MINUTE_MS);
      await admin.query('VACUUM ANALYZE period_metrics');
      await admin.query('VACUUM ANALYZE user_activity_metrics');

      // The live side: ingest → topic → aggregator (into this schema, NOTIFY on every flush).
      await context.topics.create(topic);
      const aggregator = await startAggregatorProcess({
        kafkaBrokers: context.kafkaBrokers,
        databaseUrl: context.databaseUrl,
        topic,
        schema,
        group: topic,
        workers: 2,
        env: { FLUSH_INTERVAL_SEC: String(config.flushIntervalSec) },
      });
      services.push(aggregator);
      const ingest = await startIngestProcess({ kafkaBrokers: context.kafkaBrokers, topic });
      services.push(ingest);
      // The rate limit is per client address and every bench request comes from one: off.
      const queryEnv = {
        FLUSH_INTERVAL_SEC: String(config.flushIntervalSec),
        QUERY_RATE_LIMIT_PER_SEC: '0',
      };
      const cachedService = await startQueryProcess({
        databaseUrl: context.databaseUrl,
        schema,
        name: 'query(cache default)',
        env: queryEnv,
      });
      services.push(cachedService);
      const uncachedService = await startQueryProcess({
        databaseUrl: context.databaseUrl,
        schema,
        name: 'query(QUERY_CACHE_TTL_MS=0)',
        env: { ...queryEnv, QUERY_CACHE_TTL_MS: '0' },
      });
      services.push(uncachedService);

      const bodies = batchBodies(200, FLOW_BATCH);
      flowing = true;
      let flowFailures = 0;
      flow = (async () => {
        let i = 0;
        while (flowing) {
          const body = bodies[i++ % bodies.length] as string;
          try {
            const response = await fetch(`${ingest.url}/activities`, {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body,
            });
            await response.arrayBuffer();
            if (response.status >= 300) flowFailures++;
          } catch {
            flowFailures++;
          }
          await sleep(1000 / FLOW_BATCHES_PER_SEC);
        }
      })();
      const sse = new SseLatencies();
      for (const service of [cachedService, uncachedService]) {
        for (let i = 0; i < s.sseClients; i++) {
          streams.push(await SseClient.open(`${service.url}/v1/stream?site=${LIVE_SITE}`, sse));
        }
      }
      // Wait for the first flush to reach the streams: the aggregator is assigned and writing.
      const firstDeadline = Date.now() + 60_000;
      while (sse.count === 0) {
        if (Date.now() > firstDeadline)
          throw new Error(`no stream event within 60 s${aggregator.process.tail()}`);
        await sleep(200);
      }
      log(`  ${streams.length} stream clients connected, events flowing; measuring`);
      sse.reset();
      // The stream alone first: events flowing, no query load.
      sse.phase = 'events only, no query load';
      await sleep(config.httpDurationSec * 1000);

      const iso = (ms: number) => new Date(ms).toISOString();
      const day = (ms: number) => iso(ms).slice(0, 10);
      const summaryRange = (k: number) => {
        const toMs = endMs - k * DAY_MS;
        return { fromMs: toMs - s.summaryDays * DAY_MS, toMs };
      };
      const minuteRange = (k: number) => {
        const toMs = minuteEndMs - k * MINUTE_MS;
        return { fromMs: toMs - DAY_MS, toMs };
      };
      const paths: Record<QueryName, (k: number) => string> = {
        summary: (k) => {
          const r = summaryRange(k);
          return `/v1/summary?site=${HISTORY_SITE}&from=${day(r.fromMs)}&to=${day(r.toMs)}`;
        },
        timeseries: (k) => {
          const r = minuteRange(k);
          return `/v1/timeseries?site=${HISTORY_SITE}&metric=unique_users&interval=minute&from=${iso(r.fromMs)}&to=${iso(r.toMs)}`;
        },
      };
      const sqlOf: Record<QueryName, (client: pg.Client, k: number) => Promise<unknown>> = {
        // What Answers.summary issues for one range: the union, then the totals.
        summary: async (client, k) => {
          const r = summaryRange(k);
          await uniqueUsersOverRange(client, { site: HISTORY_SITE, period: 'day', ...r });
          await readTotals(client, HISTORY_SITE, 'day', r.fromMs, r.toMs, '');
        },
        // What Answers.timeseries issues by minute.
        timeseries: (client, k) => {
          const r = minuteRange(k);
          return readWindows(client, HISTORY_SITE, r.fromMs, r.toMs, 60);
        },
      };
      // Every answer checked once before timing: a refusal would time an error path.
      for (const name of ['summary', 'timeseries'] as const) {
        const response = await fetch(`${uncachedService.url}${paths[name](0)}`);
        const text = await response.text();
        if (response.status !== 200)
          throw new Error(`${paths[name](0)}: ${response.status} ${text}`);
      }

      const pgClients: pg.Client[] = [];
      for (let i = 0; i < s.connections; i++) {
        const client = new pg.Client({
          connectionString: context.databaseUrl,
          options: `-c search_path=${schema},public`,
        });
        await client.connect();
        pgClients.push(client);
      }
      const contenders: Contender[] = [];
      const ratios: Ratio[] = [];
      const warnings: string[] = [];
      const cacheCounts: string[] = [];
      try {
        for (const name of ['summary', 'timeseries'] as const) {
          const hitsBefore = await cacheFigures(uncachedService.url);
          const results = await alternate(
            config.runs,
            [
              {
                name: `${name}: service, cached`,
                run: () => {
                  sse.phase = `${name}: service, cached`;
                  return httpLoad(
                    cachedService,
                    () => paths[name](0),
                    s.connections,
                    config.httpDurationSec,
                  );
                },
              },
              {
                name: `${name}: service, uncached`,
                run: () => {
                  sse.phase = `${name}: service, uncached`;
                  let k = 0;
                  return httpLoad(
                    uncachedService,
                    () => paths[name](k++ % s.shifts),
                    s.connections,
                    config.httpDurationSec,
                  );
                },
              },
              {
                name: `${name}: bare SQL`,
                run: () => {
                  sse.phase = `${name}: bare SQL`;
                  return sqlLoad(pgClients, sqlOf[name], s.shifts, config.httpDurationSec);
                },
              },
            ],
            log,
            (run) =>
              `${num(run.perSec)} req/s, p50 ${run.p50Ms.toFixed(1)} ms, p99 ${run.p99Ms.toFixed(1)} ms, ${run.failures} failures, target cpu ${num(run.targetCpuPct)} %, generator ${num(run.generatorCpuPct)} %`,
          );
          const hitsAfter = await cacheFigures(uncachedService.url);
          cacheCounts.push(
            `${name}, uncached service: ${num(hitsAfter.hits - hitsBefore.hits)} cache hits (in-flight sharing) and ${num(hitsAfter.misses - hitsBefore.misses)} computations`,
          );
          const p99 = new Map<string, number>();
          for (const [contender, runs] of results) {
            const role = contender.endsWith('bare SQL') ? 'baseline' : 'target';
            p99.set(contender, median(runs.map((run) => run.p99Ms)));
            for (const [i, run] of runs.entries()) {
              if (run.failures > 0)
                warnings.push(`${contender} run ${i + 1}: ${run.failures} failed requests`);
              if (run.generatorCpuPct >= 90)
                warnings.push(
                  `${contender} run ${i + 1}: the generator used ${num(run.generatorCpuPct)} % of a core`,
                );
            }
            contenders.push({
              name: contender,
              role,
              throughput: figure(
                runs.map((run) => run.perSec),
                'requests/s',
              ),
              targetCpuPct: figure(
                runs.map((run) => run.targetCpuPct),
                role === 'target' ? '% of a core (query service)' : '% of a core (bench process)',
              ),
              generatorCpuPct: figure(
                runs.map((run) => run.generatorCpuPct),
                '% of a core',
              ),
              extra: {
                p50Ms: figure(
                  runs.map((run) => run.p50Ms),
                  'ms',
                ),
                p99Ms: figure(
                  runs.map((run) => run.p99Ms),
                  'ms',
                ),
              },
            });
          }
          const bare = p99.get(`${name}: bare SQL`) as number;
          for (const variant of ['uncached', 'cached'] as const) {
            ratios.push(
              atMost(
                `query: ${name} p99, ${variant}`,
                `service p99 (${variant}) ÷ bare SQL p99, ${name === 'summary' ? `${s.summaryDays} days` : '24 hours by minute'}`,
                (p99.get(`${name}: service, ${variant}`) as number) / bare,
                P99_TARGET,
              ),
            );
          }
        }
      } finally {
        await Promise.all(pgClients.map((client) => client.end().catch(() => {})));
      }
      const sseSamples = sse.samples;
      const sseP50 = quantile(sseSamples, 0.5) / 1000;
      const sseP99 = quantile(sseSamples, 0.99) / 1000;
      ratios.push(
        atMost(
          'query: stream delivery p99',
          `s from the flush transaction's timestamp to receipt, p99 over ${num(sse.count)} events at ${streams.length} clients`,
          sseP99,
          SSE_TARGET_SEC,
        ),
      );
      contenders.push({
        name: 'stream delivery',
        role: 'target',
        throughput: figure([sse.count / sse.elapsedSec()], 'events/s received (all clients)'),
        extra: {
          p50Sec: sseP50,
          p99Sec: sseP99,
          maxSec: quantile(sseSamples, 1) / 1000,
          events: sse.count,
          clients: streams.length,
        },
      });
      const closed = streams.filter((stream) => stream.closed).length;
      if (closed > 0) warnings.push(`${closed} stream clients were disconnected during the run`);
      if (flowFailures > 0) warnings.push(`${flowFailures} event batches were refused by ingest`);
      sse.phase = 'after the load';
      const flushes = await readMetric(aggregator.url, 'aggregator_flushes_total');
      const flushSec = await readMetric(aggregator.url, 'aggregator_flush_duration_seconds_sum');
      const flushText = (await readMetricsText(aggregator.url)) ?? '';
      const flushCount = (le: string): number =>
        flushText
          .split('\n')
          .filter(
            (line) =>
              line.startsWith('aggregator_flush_duration_seconds_bucket{') &&
              line.includes(`le="${le}"`),
          )
          .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
      const slowFlushes = flushCount('+Inf') - flushCount('0.5');
      const phaseNotes = [...sse.byPhase].map(
        ([phase, values]) =>
          `stream delivery while ${phase === '' ? 'starting' : phase}: p50 ${(quantile(values, 0.5) / 1000).toFixed(2)} s, p99 ${(quantile(values, 0.99) / 1000).toFixed(2)} s, max ${(quantile(values, 1) / 1000).toFixed(2)} s over ${num(values.length)} events`,
      );
      return {
        scenario: 'query',
        method: `A history of ${days} days × ${num(history.usersPerDay)} users a day (${num(history.dailyUsers.min)}–${num(history.dailyUsers.max)}) of one UTC site written by SQL (rollup-history.ts, every day sealed as ended days are) and ${num(minuteRows)} minute rows (${BENCH_PARTITIONS} partitions × the last 24 hours and ${s.shifts} minutes); the aggregator (WORKERS=2, FLUSH_INTERVAL_SEC=${config.flushIntervalSec}) on the same schema with ${FLOW_BATCH * FLOW_BATCHES_PER_SEC} events/s flowing through ingest into another site, and ${s.sseClients} clients on /v1/stream of that site at each of two query service processes (QUERY_RATE_LIMIT_PER_SEC=0: every request comes from one address). GET /v1/summary from/to ${s.summaryDays} whole days and GET /v1/timeseries 24 hours by minute, autocannon with ${s.connections} connections for ${config.httpDurationSec} s: "cached" = the identical request every time on the service with its default cache (dropped on every flush); "uncached" = the range shifted by one day or minute per request, cycling through ${s.shifts}, on a service with QUERY_CACHE_TTL_MS=0. Baseline "bare SQL" = the same SQL the service issues (its read-model functions: uniqueUsersOverRange then readTotals; readWindows) on ${s.connections} pg clients in the bench process, each looping, over the same ${s.shifts} ranges, timed around each call. ${config.runs} ${config.runs === 1 ? 'run' : 'runs'} each, alternating; p50/p99 medians of runs. Stream delivery: receipt time − the event id (the flush transaction's timestamp, microseconds) for every event every client received during the measurement`,
        startedAt: startedAt.toISOString(),
        durationSec: (Date.now() - startedAt.getTime()) / 1000,
        contenders,
        ratios,
        warnings,
        notes: [
          ...cacheCounts,
          ...phaseNotes,
          `flush transactions (both workers): mean ${(((flushSec ?? Number.NaN) / (flushCount('+Inf') || 1)) * 1000).toFixed(0)} ms, ${num(slowFlushes)} of ${num(flushCount('+Inf'))} took over 0.5 s`,
          `the aggregator flushed ${num(flushes ?? Number.NaN)} times; stream events received ${num(sse.count)} (${num(sse.count / Math.max(1, streams.length))} per client)`,
          `history: ${num(history.rows.periodMetrics)} period_metrics rows, ${num(history.rows.periodUsers)} period_users rows`,
        ],
      };
    } finally {
      flowing = false;
      await flow;
      for (const stream of streams) stream.close();
      await Promise.all(services.map((service) => service.process.stop()));
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
      await admin.end().catch(() => {});
    }
  },
};

/**
 * Minute rows of the history site ending at `endMs` (exclusive), `spanMs` long, one per
 * partition, final, as flushes leave them; offsets -1 so that the aggregator's positions (read
 * from these rows) stay at the start of its own topic.
 */
async function writeMinuteRows(client: pg.Client, endMs: number, spanMs: number): Promise<number> {
  const result = await client.query(
    `INSERT INTO user_activity_metrics
       ("timestamp", window_seconds, source_partition, site, time_zone, unique_users,
        page_view_count, event_count, first_offset, through_offset, is_final)
     SELECT t, 60, p, $1, 'UTC', u, u + u / 2, 2 * u, -1, -1, true
       FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute',
                            interval '1 minute') t
      CROSS JOIN generate_series(0, $4::int - 1) p
      CROSS JOIN LATERAL (SELECT 20 + (hashint8extended(extract(epoch FROM t)::bigint, p)
                                       & 1023)::int % 80 AS u) v`,
    [
      HISTORY_SITE,
      new Date(endMs - spanMs).toISOString(),
      new Date(endMs).toISOString(),
      BENCH_PARTITIONS,
    ],
  );
  return result.rowCount ?? 0;
}

async function cacheFigures(url: string): Promise<{ hits: number; misses: number }> {
  return {
    hits: (await readMetric(url, 'query_cache_hits_total')) ?? Number.NaN,
    misses: (await readMetric(url, 'query_cache_misses_total')) ?? Number.NaN,
  };
}

/** autocannon GETs of `nextPath()` (called per request) against a query service. */
async function httpLoad(
  service: RunningService,
  nextPath: () => string,
  connections: number,
  durationSec: number,
): Promise<LoadRun> {
  const meter = startCpuMeter([service.process.pid]);
  const result = await autocannon({
    url: service.url,
    connections,
    pipelining: 1,
    duration: durationSec,
    timeout: 30,
    requests: [
      {
        method: 'GET',
        setupRequest: (request) => ({ ...request, path: nextPath() }),
      },
    ],
  });
  const cpu = meter.stop();
  return {
    perSec: result['2xx'] / result.duration,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    failures: result.non2xx + result.errors + result.timeouts,
    targetCpuPct: cpu.byPid.get(service.process.pid) ?? 0,
    generatorCpuPct: cpu.selfBusiestThread,
  };
}

/** Each client loops over the shifted ranges for `durationSec`; every call timed. */
async function sqlLoad(
  clients: readonly pg.Client[],
  call: (client: pg.Client, k: number) => Promise<unknown>,
  shifts: number,
  durationSec: number,
): Promise<LoadRun> {
  const meter = startCpuMeter([]);
  const latencies: number[] = [];
  let failures = 0;
  let k = 0;
  const started = performance.now();
  const endAt = started + durationSec * 1000;
  await Promise.all(
    clients.map(async (client) => {
      while (performance.now() < endAt) {
        const began = performance.now();
        try {
          await call(client, k++ % shifts);
          latencies.push(performance.now() - began);
        } catch {
          failures++;
        }
      }
    }),
  );
  const elapsedSec = (performance.now() - started) / 1000;
  const cpu = meter.stop();
  return {
    perSec: latencies.length / elapsedSec,
    p50Ms: quantile(latencies, 0.5),
    p99Ms: quantile(latencies, 0.99),
    failures,
    targetCpuPct: cpu.self,
    generatorCpuPct: cpu.selfBusiestThread,
  };
}

/** Receipt − event id (microseconds) of every stream event, in ms, by what ran meanwhile. */
class SseLatencies {
  samples: number[] = [];
  count = 0;
  /** What is running now: the contender under load, or none. */
  phase = '';
  readonly byPhase = new Map<string, number[]>();
  private since = performance.now();

  add(latencyMs: number): void {
    this.count++;
    if (this.samples.length >= MAX_SSE_SAMPLES) return;
    this.samples.push(latencyMs);
    let phase = this.byPhase.get(this.phase);
    if (phase === undefined) {
      phase = [];
      this.byPhase.set(this.phase, phase);
    }
    phase.push(latencyMs);
  }

  reset(): void {
    this.samples = [];
    this.count = 0;
    this.byPhase.clear();
    this.since = performance.now();
  }

  elapsedSec(): number {
    return (performance.now() - this.since) / 1000;
  }
}

/** One `/v1/stream` connection of its own socket, reading the `id:` of every event. */
class SseClient {
  closed = false;
  private constructor(private readonly request: http.ClientRequest) {}

  static open(url: string, latencies: SseLatencies): Promise<SseClient> {
    return new Promise((resolve, reject) => {
      const request = http.get(url, { agent: false }, (response) => {
        if (response.statusCode !== 200) {
          reject(new Error(`${url}: ${response.statusCode}`));
          response.resume();
          return;
        }
        const client = new SseClient(request);
        let buffered = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          const receivedMs = Date.now();
          buffered += chunk;
          let end = buffered.indexOf('\n\n');
          while (end >= 0) {
            const block = buffered.slice(0, end);
            buffered = buffered.slice(end + 2);
            const id = /^id: (\d+)$/m.exec(block);
            if (id !== null) latencies.add(receivedMs - Number(id[1]) / 1000);
            end = buffered.indexOf('\n\n');
          }
        });
        response.on('close', () => {
          client.closed = true;
        });
        resolve(client);
      });
      request.on('error', reject);
    });
  }

  close(): void {
    this.closed = true;
    this.request.destroy();
  }
}
