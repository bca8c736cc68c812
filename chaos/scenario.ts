/**
 * What a chaos scenario is, and the loop that runs one: a pipeline under a steady load, the fault
 * injected and cleared `cycles` times, the recovery after each (fault cleared → lag back under
 * 5 s and ingest acknowledging again), then the load stopped, the run settled and the view judged
 * against the ledger of every answer ingest gave.
 */
import { SeededRandom } from '../e2e/activity-oracle.js';
import { sleep } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { ChaosStack } from './chaos-stack.js';
import { ChaosPipeline, type PipelineOptions } from './pipeline.js';

/** Recovery target of the issue: fault cleared → lag back under 5 s. */
export const RECOVERY_TARGET_MS = 30_000;
/** Memory a service may hold at most before the run counts as unbounded. */
export const RSS_LIMIT_BYTES = { ingest: 1024 * 1024 * 1024, aggregator: 1536 * 1024 * 1024 };

export interface ChaosContext {
  pipeline: ChaosPipeline;
  stack: ChaosStack;
  random: SeededRandom;
  /** Problems found while injecting (a wrong answer, an unclean exit): each fails the run. */
  problem(line: string): void;
  /** Counts one occurrence of `what` (reported as notes: how many kills hit the COPY gap…). */
  count(what: string): void;
}

export interface Scenario {
  name: string;
  /** The fault, as the table names it. */
  fault: string;
  defaultCycles: number;
  /** Aggregators started before the load. */
  aggregators: number;
  pipeline?: PipelineOptions;
  /** Injects the fault once and clears it; returns when it was cleared. */
  cycle(context: ChaosContext, index: number): Promise<number>;
  /** Checks once the run has settled; returns problems. */
  finish?(context: ChaosContext): Promise<string[]>;
}

export interface ScenarioResult {
  name: string;
  fault: string;
  seed: number;
  cycles: number;
  sent: number;
  acknowledged: number;
  rejected: number;
  unknown: number;
  lost: number;
  doubleCounted: number;
  unknownCounted: number;
  /** Per completed cycle; undefined when it did not recover within the probe's limit. */
  recoveriesMs: Array<number | undefined>;
  peakRssBytes: Record<string, number>;
  counts: Record<string, number>;
  answers: Record<string, number>;
  problems: string[];
  durationMs: number;
}

export async function runScenario(options: {
  stack: ChaosStack;
  scenario: Scenario;
  cycles: number;
  seed: number;
  logger: Logger;
  log: (line: string) => void;
}): Promise<ScenarioResult> {
  const { stack, scenario, cycles, seed, log } = options;
  const startedAt = Date.now();
  const pipeline = new ChaosPipeline(
    stack,
    scenario.name,
    seed,
    scenario.pipeline ?? {},
    options.logger,
  );
  const problems: string[] = [];
  const counts: Record<string, number> = {};
  const context: ChaosContext = {
    pipeline,
    stack,
    random: new SeededRandom(seed ^ 0x5eed),
    problem: (line) => {
      problems.push(line);
      log(`  ! ${line}`);
    },
    count: (what) => {
      counts[what] = (counts[what] ?? 0) + 1;
    },
  };
  const recoveriesMs: Array<number | undefined> = [];
  let verdict = { lost: 0, doubleCounted: 0, unknownCounted: 0, problems: [] as string[] };
  try {
    await pipeline.start(scenario.aggregators);
    pipeline.load.start();
    const warm = await pipeline.waitRecovered(Date.now(), 60_000);
    if (warm === undefined)
      throw new Error('the pipeline did not reach a lag under 5 s before any fault');
    for (let i = 0; i < cycles; i++) {
      const clearedAt = await scenario.cycle(context, i);
      const recovery = await pipeline.waitRecovered(clearedAt);
      recoveriesMs.push(recovery);
      const shown = recovery === undefined ? 'not recovered' : `${(recovery / 1000).toFixed(1)} s`;
      log(
        `  ${scenario.name} cycle ${i + 1}/${cycles}: recovered in ${shown}; acknowledged ${pipeline.ledger.totals.acknowledged}, unknown ${pipeline.ledger.totals.unknown}`,
      );
      if (recovery === undefined) {
        context.problem(`cycle ${i + 1}: lag not back under 5 s within 90 s`);
        break;
      }
      if (recovery > RECOVERY_TARGET_MS) {
        context.problem(`cycle ${i + 1}: recovery took ${(recovery / 1000).toFixed(1)} s`);
      }
      await sleep(500 + context.random.int(1500));
    }
    log(`  ${scenario.name}: settling`);
    verdict = await pipeline.settle();
    for (const line of verdict.problems.slice(0, 10)) context.problem(`after settling: ${line}`);
    const rollups = await pipeline.checkRollups();
    for (const line of rollups.problems.slice(0, 10)) context.problem(`rollups: ${line}`);
    if (rollups.checked === 0)
      context.problem('rollups: no hour or day had all its windows closed');
    counts['hour and day rows equal to their windows'] = rollups.checked - rollups.problems.length;
    for (const line of (await scenario.finish?.(context)) ?? []) context.problem(line);
  } catch (err) {
    context.problem(`scenario aborted: ${(err as Error).stack ?? String(err)}${pipeline.tails()}`);
    // Judge what there is: a loss is worth reporting even from an aborted run.
    verdict = await pipeline.settle(20_000).catch(() => verdict);
  } finally {
    await pipeline.close();
  }
  for (const line of pipeline.problems.slice(0, 10)) context.problem(line);
  const { stalled, unread } = pipeline.consumerReplacements;
  if (stalled > 0) counts['stalled consumer replaced'] = stalled;
  if (unread > 0) counts['consumer outside the group replaced'] = unread;
  if (pipeline.producerReplacements > 0) {
    counts['stopped producer replaced'] = pipeline.producerReplacements;
  }
  if (pipeline.leaderlessUpdates > 0) {
    counts['partitions left leaderless in the producer (librdkafka #5430)'] =
      pipeline.leaderlessUpdates;
  }
  if ((pipeline.load?.withoutRetryAfter ?? 0) > 0) {
    context.problem(`${pipeline.load.withoutRetryAfter} answers 503/429 without Retry-After`);
  }
  const peakRssBytes = Object.fromEntries(pipeline.peakRss);
  for (const [service, limit] of Object.entries(RSS_LIMIT_BYTES)) {
    const peak = peakRssBytes[service] ?? 0;
    if (peak > limit) context.problem(`${service} peaked at ${mib(peak)} MiB resident`);
  }
  const totals = pipeline.ledger.totals;
  return {
    name: scenario.name,
    fault: scenario.fault,
    seed,
    cycles: recoveriesMs.length,
    sent: totals.sent,
    acknowledged: totals.acknowledged,
    rejected: totals.rejected,
    unknown: totals.unknown + totals.pending,
    lost: verdict.lost,
    doubleCounted: verdict.doubleCounted,
    unknownCounted: verdict.unknownCounted,
    recoveriesMs,
    peakRssBytes,
    counts,
    answers: Object.fromEntries(pipeline.load?.answers ?? []),
    problems,
    durationMs: Date.now() - startedAt,
  };
}

export const mib = (bytes: number): number => Math.round(bytes / 1024 / 1024);
