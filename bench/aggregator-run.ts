/**
 * One aggregator process reading a pre-filled topic from its beginning: the consumption rate
 * until it has consumed the whole topic, from the aggregator's own counter
 * (`aggregator_records_consumed_total`), and its CPU over the same interval. Optionally also the
 * time until PostgreSQL holds the whole topic (every partition's `through_offset` at its last
 * record): the rate that counts a slower flush, which consumption does not wait for.
 */
import pg from 'pg';
import { sleep } from '../shared/lifecycle.js';
import type { ConsumeRun } from './baselines/kcat-consumer.js';
import { startCpuMeter } from './process-sampler.js';
import type { BenchContext } from './scenario.js';
import {
  cpuProfileArgs,
  type RunningService,
  readMetric,
  startAggregatorProcess,
} from './service-processes.js';

const POLL_MS = 100;

/** A catch-up run, with what the aggregator's own metrics said once it had consumed the topic. */
export interface AggregatorRun extends ConsumeRun {
  /** With `endOffsets`: from the first record until PostgreSQL held the whole topic. */
  stored?: { elapsedSec: number; eventsPerSec: number; capped: boolean };
  /** Flushes that committed or failed, and their total time (`aggregator_flush_duration_seconds`). */
  flushes: number;
  flushSec: number;
  /** Events the flushes added to the hour and day figures (`aggregator_rollup_events_total`). */
  rolledUp: number;
  /**
   * Where the machine's CPU went over the consumption, in percent of a core: every process, the
   * broker's JVM, PostgreSQL's processes (the aggregator's own is `cpuPct`).
   */
  machineCpuPct: number;
  brokerCpuPct: number;
  postgresCpuPct: number;
}

/** The command names of the broker's and PostgreSQL's processes. */
const STACK_COMMANDS = ['java', 'postgres'];

export async function aggregatorCatchup(
  context: BenchContext,
  options: {
    topic: string;
    records: number;
    workers: number;
    capSec: number;
    env?: Record<string, string>;
    /**
     * The topic's end offsets: after consuming, wait (up to `capSec` more) until PostgreSQL holds
     * every partition through its last record.
     */
    endOffsets?: ReadonlyMap<number, number>;
    /** Called once caught up, before the process is stopped (the memory scenario reads RSS here). */
    whenCaughtUp?: (service: RunningService) => Promise<void>;
    /** Called once assigned, before the first record (the memory scenario's idle RSS). */
    whenStarted?: (service: RunningService) => Promise<void>;
  },
): Promise<AggregatorRun> {
  const run = context.topics.name(`agg_w${options.workers}`);
  await settleDatabase(context.databaseUrl);
  const service = await startAggregatorProcess({
    kafkaBrokers: context.kafkaBrokers,
    databaseUrl: context.databaseUrl,
    topic: options.topic,
    schema: run,
    group: run,
    workers: options.workers,
    ...(options.env === undefined ? {} : { env: options.env }),
    nodeArgs: cpuProfileArgs(context.config.aggregatorCpuProfileDir),
  });
  try {
    await options.whenStarted?.(service);
    const startDeadline = Date.now() + 60_000;
    let consumed = 0;
    // The clock starts at the last poll that saw nothing consumed: the group join and the
    // checkpoint reads before it are start-up, not consumption. (Starting at the first poll that
    // saw records would lose the records of that first interval, all of them in a small topic.)
    let startedAt = performance.now();
    let meter = startCpuMeter([service.process.pid], STACK_COMMANDS);
    while (consumed === 0) {
      if (!service.process.running || Date.now() > startDeadline) {
        throw new Error(`the aggregator consumed nothing within 60 s${service.process.tail()}`);
      }
      startedAt = performance.now();
      meter.stop();
      meter = startCpuMeter([service.process.pid], STACK_COMMANDS);
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
    const stored =
      options.endOffsets === undefined
        ? undefined
        : await waitStored(context.databaseUrl, run, options.endOffsets, capMs, () => {
            if (!service.process.running)
              throw new Error(`the aggregator exited${service.process.tail()}`);
          });
    const metric = async (name: string): Promise<number> =>
      (await readMetric(service.url, name)) ?? Number.NaN;
    const result: AggregatorRun = {
      consumed,
      elapsedSec,
      eventsPerSec: consumed / elapsedSec,
      cpuPct: cpu.byPid.get(service.process.pid) ?? 0,
      capped: consumed < options.records,
      flushes: await metric('aggregator_flushes_total'),
      flushSec: await metric('aggregator_flush_duration_seconds_sum'),
      rolledUp: await metric('aggregator_rollup_events_total'),
      machineCpuPct: cpu.machine,
      brokerCpuPct: cpu.byCommand.get('java') ?? 0,
      postgresCpuPct: cpu.byCommand.get('postgres') ?? 0,
    };
    if (stored !== undefined) {
      const storedSec = (stored.atMs - startedAt) / 1000;
      result.stored = {
        elapsedSec: storedSec,
        eventsPerSec: stored.records / storedSec,
        capped: stored.capped,
      };
    }
    await options.whenCaughtUp?.(service);
    return result;
  } finally {
    await service.process.stop();
    // A PostgreSQL that cannot be reached fails the next run anyway; keep this run's error.
    await dropRunSchema(context.databaseUrl, run).catch(() => {});
  }
}

/**
 * Drops a finished run's schema, then checkpoints (`settleDatabase`): otherwise autovacuum works
 * through every earlier run's membership tables while the next run is measured.
 */
export async function dropRunSchema(databaseUrl: string, schema: string): Promise<void> {
  await settleDatabase(databaseUrl, `DROP SCHEMA IF EXISTS ${schema} CASCADE`);
}

/**
 * Runs `statement` (if any) and takes a checkpoint, so that a run does not pay for the pages
 * that what came before it (an earlier run, a scenario's history, a dropped schema) left dirty.
 */
async function settleDatabase(databaseUrl: string, statement?: string): Promise<void> {
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    if (statement !== undefined) await db.query(statement);
    // CHECKPOINT needs a superuser or pg_checkpoint; without either, runs share the checkpointer.
    await db.query('CHECKPOINT').catch(() => {});
  } finally {
    await db.end().catch(() => {});
  }
}

/**
 * Polls the run's schema every 100 ms until every partition's highest `through_offset` is its
 * last record's offset, or `capMs` passed: when (a `performance.now()` time), and how many
 * records PostgreSQL held by then (all of them unless capped).
 */
async function waitStored(
  databaseUrl: string,
  schema: string,
  endOffsets: ReadonlyMap<number, number>,
  capMs: number,
  check: () => void,
): Promise<{ atMs: number; records: number; capped: boolean }> {
  const db = new pg.Client({ connectionString: databaseUrl, query_timeout: 10_000 });
  await db.connect();
  try {
    const deadline = performance.now() + capMs;
    for (;;) {
      check();
      const result = await db.query<{ p: number; through: string }>(
        `SELECT source_partition AS p, max(through_offset)::text AS through
           FROM ${schema}.user_activity_metrics GROUP BY source_partition`,
      );
      const atMs = performance.now();
      const through = new Map(result.rows.map((row) => [row.p, Number(row.through)]));
      let records = 0;
      let complete = true;
      for (const [partition, end] of endOffsets) {
        const last = through.get(partition) ?? -1;
        records += Math.min(end, last + 1);
        if (last < end - 1) complete = false;
      }
      if (complete || atMs > deadline) return { atMs, records, capped: !complete };
      await sleep(POLL_MS);
    }
  } finally {
    await db.end().catch(() => {});
  }
}
