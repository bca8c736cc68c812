/**
 * Faults of the aggregator: SIGKILL at random moments and in the gap between COPY and COMMIT
 * (scenario 1), SIGSTOP past the session timeout while another instance takes over (scenario 2),
 * and a rebalance storm of instances joining and leaving (scenario 3).
 */
import type { AggregatorProcess } from '../../e2e/aggregator-process.js';
import { sleep } from '../../shared/lifecycle.js';
import { waitFor } from '../../shared/testing.js';
import { PARTITIONS, SESSION_TIMEOUT_SEC } from '../pipeline.js';
import type { Scenario } from '../scenario.js';

/** The log line of the aggregator's test-only pause (CHAOS_PAUSE_BEFORE_COMMIT_MS). */
export const COMMIT_PAUSE_LINE = 'paused between COPY and COMMIT';
/** Long enough to land a signal in, short enough to keep flushing at the load's pace. */
export const COMMIT_PAUSE_MS = '150';

/** Margin kept below the pause: the signal must land this long before COMMIT at least. */
const GAP_MARGIN_MS = 25;

/**
 * Waits until `aggregator` logs that a flush is paused between COPY and COMMIT and runs `act`
 * from inside the output listener. Resolves `in-gap` when `act` ran within the pause by the log
 * line's own timestamp (so the signal provably landed before COMMIT), `late` when the line
 * reached us too late to prove it, `none` when no flush paused within `timeoutMs`.
 */
export function actInCommitGap(
  aggregator: AggregatorProcess,
  timeoutMs: number,
  act: () => void,
): Promise<'in-gap' | 'late' | 'none'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      stop();
      resolve('none');
    }, timeoutMs);
    const stop = aggregator.onOutput((line) => {
      if (!line.includes(COMMIT_PAUSE_LINE)) return;
      stop();
      clearTimeout(timer);
      act();
      const actedAt = Date.now();
      let pausedAt = Number.NaN;
      try {
        pausedAt = Date.parse((JSON.parse(line) as { time: string }).time);
      } catch {
        // Not a JSON line: the gap cannot be proven.
      }
      resolve(actedAt - pausedAt < Number(COMMIT_PAUSE_MS) - GAP_MARGIN_MS ? 'in-gap' : 'late');
    });
  });
}

export const aggregatorKill: Scenario = {
  name: 'aggregator-kill',
  fault: 'aggregator SIGKILL (random, and between COPY and COMMIT)',
  defaultCycles: 20,
  aggregators: 1,
  pipeline: { aggregatorEnv: { CHAOS_PAUSE_BEFORE_COMMIT_MS: COMMIT_PAUSE_MS } },
  async cycle(context, index) {
    const aggregator = context.pipeline.aggregators[0] as AggregatorProcess;
    if (!aggregator.running) aggregator.start();
    if (index % 2 === 0) {
      // In the gap: the upsert is done, COMMIT not yet sent.
      await aggregator.waitAssigned(1, 60_000);
      const hit = await actInCommitGap(aggregator, 15_000, () => aggregator.freeze(true));
      if (hit === 'in-gap')
        context.count('killed between COPY and COMMIT (proven by the log time)');
      else if (hit === 'late') context.count('killed just after the pause began (gap not proven)');
      else context.problem(`cycle ${index + 1}: no flush paused before COMMIT within 15 s`);
    } else {
      const moment = context.random.pick(['starting', 'replaying', 'running'] as const);
      if (moment !== 'starting') await aggregator.waitAssigned(1, 60_000);
      await sleep(moment === 'replaying' ? context.random.int(200) : context.random.int(3000));
      context.count(`killed while ${moment}`);
    }
    // A frozen process dies of SIGKILL just the same: the freeze only pins the moment.
    await aggregator.signal('SIGKILL');
    aggregator.start();
    return Date.now();
  },
};

/** Waits until every partition has exactly one owner among `owners`, each owning some. */
async function waitShared(owners: AggregatorProcess[], timeoutMs = 60_000): Promise<void> {
  await waitFor(
    async () => {
      const counts = await Promise.all(
        owners.map((p) => p.metric('aggregator_assigned_partitions')),
      );
      const sum = counts.reduce<number>((total, count) => total + (count ?? 0), 0);
      return sum === PARTITIONS && counts.every((count) => (count ?? 0) > 0) ? true : undefined;
    },
    { timeoutMs, what: 'the partitions shared between the instances' },
  );
}

export const aggregatorStall: Scenario = {
  name: 'aggregator-stall',
  fault: 'aggregator SIGSTOP past the session timeout, takeover, SIGCONT',
  defaultCycles: 20,
  aggregators: 2,
  pipeline: { aggregatorEnv: { CHAOS_PAUSE_BEFORE_COMMIT_MS: COMMIT_PAUSE_MS } },
  async cycle(context, index) {
    const [a, b] = context.pipeline.aggregators as [AggregatorProcess, AggregatorProcess];
    await waitShared([a, b]);
    const [stalled, survivor] = index % 2 === 0 ? [a, b] : [b, a];
    // Every other time frozen inside a flush, between the upsert and COMMIT: its transaction
    // stays open, holding the rows' locks, while the survivor takes the partitions over.
    const gap =
      index % 4 < 2 ? await actInCommitGap(stalled, 10_000, () => stalled.freeze(true)) : 'none';
    if (gap !== 'none') {
      context.count(
        gap === 'in-gap'
          ? 'frozen between COPY and COMMIT (proven by the log time)'
          : 'frozen just after the pause began (gap not proven)',
      );
    } else {
      await sleep(context.random.int(1000));
      stalled.freeze(true);
      context.count('frozen at a random moment');
    }
    const frozenAt = Date.now();
    await survivor.waitAssigned(PARTITIONS, (SESSION_TIMEOUT_SEC + 30) * 1000);
    context.count('taken over');
    // The survivor writes figures newer than the stalled one's before it wakes up.
    await sleep(Math.max(0, (SESSION_TIMEOUT_SEC + 2) * 1000 - (Date.now() - frozenAt)) + 1000);
    stalled.freeze(false);
    return Date.now();
  },
};

export const rebalanceStorm: Scenario = {
  name: 'rebalance-storm',
  fault: 'rebalance storm: a 2nd and 3rd aggregator join and leave',
  defaultCycles: 20,
  aggregators: 1,
  async cycle(context) {
    const pipeline = context.pipeline;
    while (pipeline.aggregators.length < 3) await pipeline.addAggregator(false);
    const [, b, c] = pipeline.aggregators as [
      AggregatorProcess,
      AggregatorProcess,
      AggregatorProcess,
    ];
    const pause = (): Promise<void> => sleep(1500 + context.random.int(2500));
    b.start();
    await pause();
    c.start();
    await pause();
    const order = context.random.next() < 0.5 ? [b, c] : [c, b];
    for (const leaving of order) {
      await leaving.signal('SIGTERM', 20_000);
      if (leaving.exitCode !== 0) {
        context.problem(`an instance leaving exited with ${leaving.exitCode}${leaving.tail()}`);
      }
      await pause();
    }
    context.count('joins and leaves');
    return Date.now();
  },
};
