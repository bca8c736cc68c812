/**
 * Faults in the load rather than the services: events stamped hours away from the server clock
 * (scenario 7), and a soak of steady load with periodic faults (scenario 8).
 */
import type { AggregatorProcess } from '../../e2e/aggregator-process.js';
import { sleep } from '../../shared/lifecycle.js';
import type { ChaosContext, Scenario } from '../scenario.js';
import { aggregatorKill, COMMIT_PAUSE_MS } from './aggregator-faults.js';
import { ingestKill, postgresTerminate } from './infrastructure-faults.js';

const HOUR_MS = 3_600_000;
/** Skewed events are sent while this is set (the "fault" of a clock-skew cycle). */
let skewing = false;

export const clockSkew: Scenario = {
  name: 'clock-skew',
  fault: 'clock skew: events hours in the past and future',
  defaultCycles: 20,
  aggregators: 1,
  pipeline: {
    // On the default lateness: hours-old events arrive long after their windows closed and are
    // counted through the windows' stored membership, each once, in its own window.
    load: {
      timestamp: (random) => {
        const now = Date.now();
        if (!skewing) return now - random.int(500);
        const roll = random.next();
        // Up to six hours behind (accepted and counted in its own window), a few minutes ahead
        // (within ingest's 5 minutes: accepted), hours ahead (refused by ingest: never counted).
        if (roll < 0.3) return now - HOUR_MS - random.int(5 * HOUR_MS);
        if (roll < 0.45) return now + 60_000 + random.int(180_000);
        if (roll < 0.6) return now + HOUR_MS + random.int(5 * HOUR_MS);
        return now - random.int(500);
      },
    },
  },
  async cycle(context) {
    skewing = true;
    await sleep(3_000 + context.random.int(3_000));
    skewing = false;
    context.count('skewed phases');
    return Date.now();
  },
  async finish(context) {
    skewing = false;
    const refusedFuture = context.pipeline.ledger.totals.rejected;
    return refusedFuture > 0 ? [] : ['no event hours in the future was refused by ingest'];
  },
};

/** Samples of the aggregator's open-window state during the soak. */
const soakSamples: Array<{ openWindows: number; heldUsers: number; rss: number }> = [];

/** One fault per soak cycle, in turn; the rest of the cycle is steady load. */
const SOAK_FAULTS = [aggregatorKill, postgresTerminate, ingestKill];

export const soak: Scenario = {
  name: 'soak',
  fault: 'soak: steady load, one fault every ~35 s',
  // 20 cycles as every scenario, of about 35 s each: over the 10 minutes of steady load with
  // periodic faults the soak must last.
  defaultCycles: 20,
  aggregators: 1,
  pipeline: { aggregatorEnv: { CHAOS_PAUSE_BEFORE_COMMIT_MS: COMMIT_PAUSE_MS } },
  async cycle(context, index) {
    // Most of each cycle is steady load: the state is sampled every 5 s, then one fault.
    const startedAt = Date.now();
    const aggregator = context.pipeline.aggregators[0] as AggregatorProcess;
    while (Date.now() - startedAt < 30_000) {
      await sleep(5_000);
      const openWindows = await aggregator.metric('aggregator_open_windows');
      const heldUsers = await aggregator.metric('aggregator_held_user_ids');
      const rss = aggregator.rssBytes();
      if (openWindows !== undefined && heldUsers !== undefined && rss !== undefined) {
        soakSamples.push({ openWindows, heldUsers, rss });
      }
    }
    const fault = SOAK_FAULTS[index % SOAK_FAULTS.length] as Scenario;
    context.count(`soak: ${fault.name}`);
    return fault.cycle(context, index);
  },
  async finish(context: ChaosContext) {
    const problems: string[] = [];
    const third = Math.floor(soakSamples.length / 3);
    if (third < 2) return ['too few samples of the aggregator state to judge growth'];
    const peak = (samples: typeof soakSamples, key: 'openWindows' | 'heldUsers' | 'rss'): number =>
      Math.max(...samples.map((s) => s[key]));
    const first = soakSamples.slice(0, third);
    const last = soakSamples.slice(-third);
    // Steady load over a fixed lateness: the state must plateau, not climb.
    for (const key of ['openWindows', 'heldUsers', 'rss'] as const) {
      const early = peak(first, key);
      const late = peak(last, key);
      context.count(`soak ${key} peak first third ${early}, last third ${late}`);
      if (late > early * 1.5 + (key === 'rss' ? 64 * 1024 * 1024 : 10)) {
        problems.push(`soak: ${key} grew from ${early} to ${late}`);
      }
    }
    return problems;
  },
};
