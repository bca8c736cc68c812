/**
 * rollups: what the hour and day figures give and cost.
 *
 * Give: unique users over the last N days, one day and one hour of a site with a history of N
 * days at `usersPerDay` users (rollup-history.ts), answered by `uniqueUsersOverRange` from
 * PostgreSQL: the time of each call, beside the exact answer the generator knows. Measured twice:
 * with the last day and hour still open (no sketch yet: their users are hashed at query time),
 * as during the day, and after they were sealed.
 *
 * Cost: catch-up of a topic of recent events from several sites in several time zones by the
 * aggregator with ROLLUPS=on and ROLLUPS=off, alternating, until PostgreSQL holds the whole topic.
 */
import pg from 'pg';
import { migrate } from '../../aggregator/migrations.js';
import { sealSketchesBefore } from '../../aggregator/rollups.js';
import { HLL_RELATIVE_ERROR_BOUND } from '../../shared/hll.js';
import type { RangeQuery } from '../../shared/range-uniques.js';
import { type AggregatorRun, aggregatorCatchup } from '../aggregator-run.js';
import { atLeast, atMost, type Contender, type ScenarioResult } from '../bench-result.js';
import { BENCH_PARTITIONS } from '../bench-topics.js';
import { type BenchSite, producedEvents } from '../event-generator.js';
import { type RangeTiming, timeRangeQuery } from '../range-query-timing.js';
import { type History, trueUniqueUsers, writeHistory } from '../rollup-history.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import { figure, median, quantile } from '../statistics.js';

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** The issue's targets: the 30-day range under 200 ms; catch-up with rollups ≥ 0.8 × without. */
const RANGE_TARGET_MS = 200;
const ON_OFF_TARGET = 0.8;
const HISTORY_SITE = 'history';
/** The catch-up topic's sites: UTC, a zone west of it, and two off by half an hour. */
const CATCHUP_SITES: readonly BenchSite[] = [
  { site: 'default', timeZone: 'UTC', share: 0.4 },
  { site: 'shop', timeZone: 'America/New_York', share: 0.3 },
  { site: 'news', timeZone: 'Asia/Kolkata', share: 0.2 },
  { site: 'blog', timeZone: 'Australia/Adelaide', share: 0.1 },
];
const CATCHUP_SPAN_MS = 2 * HOUR_MS;
const CATCHUP_WORKERS = 2;

interface RangeCase {
  name: string;
  query: RangeQuery;
  truth: number;
}

interface RangeMeasurement {
  contenders: Contender[];
  /** p50 of the N-day range with the last day open, and sealed. */
  headline: { open: number; sealed: number };
  history: History;
  sealed: { rows: number; sec: number };
  warnings: string[];
}

export const rollups: Scenario = {
  name: 'rollups',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config } = context;
    const startedAt = new Date();
    const ranges = await measureRanges(context);
    const catchup = await measureCatchup(context);
    const { history } = ranges;
    const days = history.days;
    const on = catchup.medians['rollups-on'];
    const off = catchup.medians['rollups-off'];
    return {
      scenario: 'rollups',
      method: `Ranges: a history of ${days} days of one site (UTC) written straight into a migrated schema by SQL, as the aggregator leaves its hour and day rows (${BENCH_PARTITIONS} source partitions, users split by a hash; activity type '' only; sealed sketches built with shared/hll.ts's hll_add_agg over generate_series user ids), because the aggregator takes no event older than MAX_EVENT_AGE_SEC (7 days) and so cannot be fed history: ${num(history.usersPerDay)} users a day on average (${num(history.dailyUsers.min)}–${num(history.dailyUsers.max)}) from a population of ${num(history.population)} with a skew (${(history.returningShare * 100).toFixed(0)} % of the last day's users were there the day before), 1–3 hours each; the users of the last ${history.membershipDays} days in period_users; the last day and its last hour left unsealed, as the aggregator holds the current ones. Each range is asked through uniqueUsersOverRange, timed in the bench process around the call: the first call on a new connection reported apart, then ${config.rangeQueryCalls} calls (p50; p99 by nearest rank, i.e. the slowest of ${config.rangeQueryCalls}); SQL time = planning + execution from EXPLAIN (ANALYZE, TIMING OFF), median of 5; each answer beside the exact distinct count of the generated users. Measured with the last day open, then again after sealSketchesBefore() sealed it. Catch-up: a topic of ${BENCH_PARTITIONS} partitions pre-filled with ${num(catchup.records)} events as ingest writes them (site and time_zone stamped, keyed site/user_id; ${CATCHUP_SITES.map((s) => `${s.site} ${s.timeZone} ${s.share * 100} %`).join(', ')}; 200,000 users per site, event times over the last 2 hours, 5 activity types), read from the beginning by the aggregator (WORKERS=${CATCHUP_WORKERS}, fresh schema and group per run) with ROLLUPS=on and ROLLUPS=off, ${config.runs} ${config.runs === 1 ? 'run' : 'runs'} each, alternating; events/s from the first record until every partition's through_offset in PostgreSQL reached its last record (polled every 100 ms; consumption alone does not wait for flushes, so it would hide their cost), the consumption rate beside it`,
      startedAt: startedAt.toISOString(),
      durationSec: (Date.now() - startedAt.getTime()) / 1000,
      contenders: [...ranges.contenders, ...catchup.contenders],
      ratios: [
        atMost(
          `rollups: ${days}-day range, last day open`,
          `uniqueUsersOverRange p50 in ms, the last ${days} days by day, the last day not sealed yet`,
          ranges.headline.open,
          RANGE_TARGET_MS,
        ),
        atMost(
          `rollups: ${days}-day range, sealed`,
          `uniqueUsersOverRange p50 in ms, the last ${days} days by day, every day sealed`,
          ranges.headline.sealed,
          RANGE_TARGET_MS,
        ),
        atLeast(
          'rollups: catch-up with rollups on vs off',
          'ROLLUPS=on events/s ÷ ROLLUPS=off events/s, until PostgreSQL held the topic',
          on.stored / off.stored,
          ON_OFF_TARGET,
        ),
      ],
      warnings: [...ranges.warnings, ...catchup.warnings],
      notes: [
        `history: ${num(history.rows.periodMetrics)} period_metrics rows, ${num(history.rows.periodUsers)} period_users rows; generated in ${num(history.seconds.users + history.seconds.periods + history.seconds.periodUsers + history.seconds.vacuum)} s (users ${num(history.seconds.users)} s, hour and day rows with sketches ${num(history.seconds.periods)} s, period_users ${num(history.seconds.periodUsers)} s, VACUUM ANALYZE ${num(history.seconds.vacuum)} s)`,
        `sealing the last day and hour (sealSketchesBefore, what a flush or retention does once they end): ${ranges.sealed.rows} rows in ${ranges.sealed.sec.toFixed(2)} s`,
        `catch-up consumption alone (the aggregator's counter): ROLLUPS=on ${num(on.consumed)} events/s, off ${num(off.consumed)}, ratio ${(on.consumed / off.consumed).toFixed(2)}; mean flush ${on.flushMs.toFixed(0)} ms with rollups, ${off.flushMs.toFixed(0)} ms without`,
      ],
    };
  },
};

/** Writes the history, times every range open and sealed, and drops the history again. */
async function measureRanges(context: BenchContext): Promise<RangeMeasurement> {
  const { config, log } = context;
  const schema = context.topics.name('rollups_history');
  const client = new pg.Client({
    connectionString: context.databaseUrl,
    options: `-c search_path=${schema},public`,
  });
  await client.connect();
  try {
    await migrate(client, schema);
    const endMs = Math.floor(Date.now() / DAY_MS) * DAY_MS;
    const { days, usersPerDay, population, membershipDays } = config.rollupHistory;
    log(
      `  writing ${days} days × ${num(usersPerDay)} users (population ${num(population)}) into ${schema}`,
    );
    const history = await writeHistory(
      client,
      {
        site: HISTORY_SITE,
        endMs,
        days,
        usersPerDay,
        population,
        membershipDays,
        partitions: BENCH_PARTITIONS,
      },
      log,
    );
    const startMs = history.startMs;
    const ranges: Array<Omit<RangeCase, 'truth'>> = [
      { name: `${days} days by day`, query: range('day', startMs, endMs) },
      { name: `${days * 24} hours by hour`, query: range('hour', startMs, endMs) },
      { name: '1 day (the last)', query: range('day', endMs - DAY_MS, endMs) },
      { name: '1 hour (the last)', query: range('hour', endMs - HOUR_MS, endMs) },
    ];
    const cases: RangeCase[] = [];
    for (const { name, query } of ranges) {
      const truth = await trueUniqueUsers(client, history, query.period, query.fromMs, query.toMs);
      cases.push({ name, query, truth });
    }

    const contenders: Contender[] = [];
    const warnings: string[] = [];
    const measure = async (state: 'open' | 'sealed'): Promise<number> => {
      let headline = Number.NaN;
      for (const rangeCase of cases) {
        const timing = await timeRangeQuery(
          context.databaseUrl,
          schema,
          rangeCase.query,
          config.rangeQueryCalls,
        );
        const contender = rangeContender(`${rangeCase.name}, ${state}`, rangeCase, timing);
        contenders.push(contender);
        if (rangeCase === cases[0]) headline = contender.throughput.median;
        const error = Math.abs(timing.answer.uniqueUsers - rangeCase.truth) / rangeCase.truth;
        if (error > timing.answer.relativeErrorBound) {
          warnings.push(
            `${contender.name}: answered ${num(timing.answer.uniqueUsers)}, the truth is ${num(rangeCase.truth)} (${(error * 100).toFixed(2)} %, beyond the ${timing.answer.exact ? 'exact' : `${HLL_RELATIVE_ERROR_BOUND * 100} %`} answer's bound)`,
          );
        }
        log(
          `  ${contender.name}: p50 ${contender.throughput.median.toFixed(1)} ms, first ${timing.firstMs.toFixed(1)} ms, SQL ${median(timing.sqlMs).toFixed(1)} ms; ${num(timing.answer.uniqueUsers)} users (truth ${num(rangeCase.truth)})`,
        );
      }
      return headline;
    };
    const open = await measure('open');
    const sealStarted = performance.now();
    const sealedRows = await sealSketchesBefore(client, endMs);
    const sealSec = (performance.now() - sealStarted) / 1000;
    await client.query('VACUUM ANALYZE period_metrics');
    const sealed = await measure('sealed');
    return {
      contenders,
      headline: { open, sealed },
      history,
      sealed: { rows: sealedRows, sec: sealSec },
      warnings,
    };
  } finally {
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
    await client.end().catch(() => {});
  }
}

function range(period: 'hour' | 'day', fromMs: number, toMs: number): RangeQuery {
  return { site: HISTORY_SITE, period, fromMs, toMs };
}

function rangeContender(name: string, rangeCase: RangeCase, timing: RangeTiming): Contender {
  const { answer } = timing;
  return {
    name,
    role: 'target',
    throughput: figure(timing.callsMs, 'ms per call'),
    extra: {
      p99Ms: quantile(timing.callsMs, 0.99),
      firstCallMs: timing.firstMs,
      sqlMs: figure(timing.sqlMs, 'ms in PostgreSQL'),
      periods: answer.periods,
      uniqueUsers: answer.uniqueUsers,
      trueUniqueUsers: rangeCase.truth,
      errorPct: (Math.abs(answer.uniqueUsers - rangeCase.truth) / rangeCase.truth) * 100,
      answeredBy:
        answer.periods <= 1 ? 'the exact count' : answer.exact ? 'exact sketch' : 'sketch',
    },
  };
}

type CatchupName = 'rollups-on' | 'rollups-off';

interface CatchupMeasurement {
  contenders: Contender[];
  /** Each contender's medians: events/s until stored, events/s consumed, mean flush time. */
  medians: Record<CatchupName, { stored: number; consumed: number; flushMs: number }>;
  records: number;
  warnings: string[];
}

/** The catch-up topic, read with ROLLUPS=on and off, alternating. */
async function measureCatchup(context: BenchContext): Promise<CatchupMeasurement> {
  const { config, log } = context;
  const topic = context.topics.name('rollups_catchup');
  await context.topics.create(topic);
  log(
    `  filling ${topic} with ${num(config.catchupEvents)} events of ${CATCHUP_SITES.length} sites`,
  );
  await context.topics.fill(
    topic,
    producedEvents({
      count: config.catchupEvents,
      endMs: Date.now(),
      spanMs: CATCHUP_SPAN_MS,
      sites: CATCHUP_SITES,
    }),
    (done) => {
      if (done % 500_000 === 0 || done === config.catchupEvents) log(`  filled ${num(done)}`);
    },
  );
  const endOffsets = await context.topics.endOffsets(topic);
  const records = [...endOffsets.values()].reduce((sum, end) => sum + end, 0);
  const catchup = (rollupsOn: boolean) => () =>
    aggregatorCatchup(context, {
      topic,
      records,
      workers: CATCHUP_WORKERS,
      capSec: config.catchupCapSec * 2,
      env: { ROLLUPS: rollupsOn ? 'on' : 'off' },
      endOffsets,
    });
  const contenders: Array<{ name: CatchupName; run: () => Promise<AggregatorRun> }> = [
    { name: 'rollups-on', run: catchup(true) },
    { name: 'rollups-off', run: catchup(false) },
  ];
  const results = await alternate(
    config.runs,
    contenders,
    log,
    (run: AggregatorRun) =>
      `${num(run.stored?.eventsPerSec ?? Number.NaN)} events/s stored in ${run.stored?.elapsedSec.toFixed(1)} s (consumed at ${num(run.eventsPerSec)}/s), ${num(run.flushes)} flushes, ${num(run.rolledUp)} events rolled up, cpu ${num(run.cpuPct)} %`,
  );
  const warnings: string[] = [];
  const medians = {} as CatchupMeasurement['medians'];
  const out: Contender[] = contenders.map(({ name }) => {
    const runs = results.get(name) ?? [];
    medians[name] = {
      stored: median(runs.map((run) => run.stored?.eventsPerSec ?? Number.NaN)),
      consumed: median(runs.map((run) => run.eventsPerSec)),
      flushMs: median(runs.map((run) => (run.flushSec / run.flushes) * 1000)),
    };
    for (const [i, run] of runs.entries()) {
      if (run.capped || run.stored?.capped === true) {
        warnings.push(
          `${name} run ${i + 1} was cut at the cap: PostgreSQL held ${num((run.stored?.eventsPerSec ?? 0) * (run.stored?.elapsedSec ?? 0))} of ${num(records)} records; its rate is over that time`,
        );
      }
      if ((name === 'rollups-on') !== run.rolledUp > 0) {
        warnings.push(`${name} run ${i + 1} rolled up ${num(run.rolledUp)} events`);
      }
    }
    return {
      name,
      role: 'target',
      throughput: figure(
        runs.map((run) => run.stored?.eventsPerSec ?? Number.NaN),
        'events/s stored',
      ),
      targetCpuPct: figure(
        runs.map((run) => run.cpuPct),
        '% of a core',
      ),
      extra: {
        consumedEventsPerSec: figure(
          runs.map((run) => run.eventsPerSec),
          'events/s consumed',
        ),
        storedSec: figure(
          runs.map((run) => run.stored?.elapsedSec ?? Number.NaN),
          's',
        ),
        flushes: figure(
          runs.map((run) => run.flushes),
          'flushes',
        ),
        meanFlushMs: figure(
          runs.map((run) => (run.flushSec / run.flushes) * 1000),
          'ms',
        ),
        rolledUp: figure(
          runs.map((run) => run.rolledUp),
          'events',
        ),
      },
    };
  });
  return { contenders: out, medians, records, warnings };
}
