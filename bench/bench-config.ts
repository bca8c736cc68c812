import { ConfigReader } from '../shared/config-reader.js';

/** The scenarios of `make bench`, in the order a full run takes them. */
export const SCENARIO_NAMES = [
  'ingest-single',
  'ingest-batch',
  'aggregate-catchup',
  'end-to-end',
  'memory',
  'rollups',
  'query',
] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];

/**
 * How long and how hard each scenario runs. `full` is `make bench` (about 32 minutes on 2 cores);
 * `smoke` is the seconds-long run `make test` does so that the harness cannot rot.
 */
export interface BenchConfig {
  profile: 'full' | 'smoke';
  scenarios: ScenarioName[];
  /** Where `<scenario>.json` and RESULTS.md are written. */
  resultsDir: string;
  /** Runs of every target and baseline, alternating. */
  runs: number;
  /** Length of one HTTP load run. */
  httpDurationSec: number;
  /** autocannon connections (keep-alive) for single events. */
  httpConnections: number;
  /**
   * autocannon worker threads for single events: one thread is the limit before bare uWS is
   * (it used a whole core against it).
   */
  httpGenerators: number;
  /** autocannon connections for batches. */
  batchConnections: number;
  /** Events pre-filled into the catch-up topic. */
  catchupEvents: number;
  /** Longest one consumer run may take before it is cut and its rate taken so far. */
  catchupCapSec: number;
  /** Length of one end-to-end run at a fixed arrival rate. */
  endToEndDurationSec: number;
  /** Share of the measured ingest peak the end-to-end run offers. */
  endToEndLoadShare: number;
  /** Distinct users held in open windows for the memory scenario. */
  memoryUsers: number;
  /** The rollups scenario's synthetic history, written straight into PostgreSQL. */
  rollupHistory: {
    days: number;
    usersPerDay: number;
    /** Everyone who may come back: each day's users are drawn from it with a skew. */
    population: number;
    /** The last days whose users are in `period_users` too. */
    membershipDays: number;
  };
  /** Timed calls of each unique-users range, after the first. */
  rangeQueryCalls: number;
  /** The aggregator's FLUSH_INTERVAL_SEC in every scenario (its default). */
  flushIntervalSec: number;
  /** The commit the measured code was exported from, when the bench runs outside a checkout. */
  sourceCommit: string | undefined;
  /**
   * Where ingest's processes write a V8 CPU profile (`node --cpu-prof`) when they stop; unset:
   * none. For finding where a missed ratio's time goes; it slows the profiled process.
   */
  ingestCpuProfileDir: string | undefined;
  /** The same for the aggregator's catch-up runs (every thread: main and workers). */
  aggregatorCpuProfileDir: string | undefined;
}

/**
 * Reads the bench's environment once: BENCH_PROFILE, BENCH_RESULTS_DIR, the scenario list
 * (arguments or SCENARIO), and for trials BENCH_RUNS, BENCH_CATCHUP_EVENTS, BENCH_MEMORY_USERS,
 * BENCH_ROLLUP_DAYS, BENCH_ROLLUP_USERS_PER_DAY; BENCH_SOURCE_COMMIT names the commit
 * of a tree exported with `git archive` (no .git to ask); BENCH_INGEST_CPU_PROFILE_DIR profiles
 * ingest, BENCH_AGGREGATOR_CPU_PROFILE_DIR the aggregator's catch-up runs.
 */
export function readBenchConfig(
  env: NodeJS.ProcessEnv,
  argv: readonly string[],
  defaultResultsDir: string,
): BenchConfig {
  const r = new ConfigReader(env);
  const profile = r.oneOf('BENCH_PROFILE', 'full', ['full', 'smoke']) as 'full' | 'smoke';
  const resultsDir = r.string('BENCH_RESULTS_DIR', defaultResultsDir);
  const requested = [...argv, ...r.list('SCENARIO', [])].flatMap((arg) => arg.split(','));
  const scenarios: ScenarioName[] = [];
  for (const name of requested.map((arg) => arg.trim()).filter((arg) => arg !== '')) {
    if (scenarios.includes(name as ScenarioName)) continue;
    if ((SCENARIO_NAMES as readonly string[]).includes(name)) scenarios.push(name as ScenarioName);
    else r.problem(`unknown scenario ${JSON.stringify(name)}; known: ${SCENARIO_NAMES.join(', ')}`);
  }
  const smoke = profile === 'smoke';
  const catchupEvents = r.int('BENCH_CATCHUP_EVENTS', smoke ? 5_000 : 2_000_000, {
    min: 1000,
    max: 100_000_000,
  });
  const memoryUsers = r.int('BENCH_MEMORY_USERS', smoke ? 5_000 : 1_000_000, {
    min: 1000,
    max: 100_000_000,
  });
  const rollupDays = r.int('BENCH_ROLLUP_DAYS', smoke ? 3 : 30, { min: 2, max: 400 });
  const usersPerDay = r.int('BENCH_ROLLUP_USERS_PER_DAY', smoke ? 3_000 : 200_000, {
    min: 100,
    max: 10_000_000,
  });
  const sourceCommit = r.optionalString('BENCH_SOURCE_COMMIT');
  const ingestCpuProfileDir = r.optionalString('BENCH_INGEST_CPU_PROFILE_DIR');
  const aggregatorCpuProfileDir = r.optionalString('BENCH_AGGREGATOR_CPU_PROFILE_DIR');
  const runs = r.int('BENCH_RUNS', smoke ? 1 : 3, { min: 1, max: 20 });
  r.finish();
  return {
    profile,
    scenarios: scenarios.length > 0 ? scenarios : [...SCENARIO_NAMES],
    resultsDir,
    runs,
    httpDurationSec: smoke ? 1 : 10,
    httpConnections: smoke ? 10 : 64,
    httpGenerators: 2,
    batchConnections: smoke ? 2 : 8,
    catchupEvents,
    catchupCapSec: smoke ? 15 : 30,
    endToEndDurationSec: smoke ? 3 : 60,
    endToEndLoadShare: 0.7,
    memoryUsers,
    rollupHistory: {
      days: rollupDays,
      usersPerDay,
      population: Math.round(usersPerDay * 7.5),
      membershipDays: Math.min(rollupDays, smoke ? 2 : 7),
    },
    rangeQueryCalls: smoke ? 3 : 20,
    flushIntervalSec: 2,
    sourceCommit,
    ingestCpuProfileDir,
    aggregatorCpuProfileDir,
  };
}
