/** What every scenario gets and gives: the shared context of a bench run, and its result. */
import type { BenchConfig } from './bench-config.js';
import type { ScenarioResult } from './bench-result.js';
import type { BenchTopics } from './bench-topics.js';

export interface BenchContext {
  config: BenchConfig;
  kafkaBrokers: string;
  databaseUrl: string;
  topics: BenchTopics;
  /** One progress line on the terminal. */
  log: (line: string) => void;
  /** Ingest's median single-event peak (requests/s), once ingest-single ran in this bench run. */
  ingestPeakPerSec?: number;
}

export interface Scenario {
  name: string;
  run(context: BenchContext): Promise<ScenarioResult>;
}

/**
 * Runs every contender `runs` times, alternating: round i starts with a different contender, so
 * that a drift of the machine (page cache, broker log segments, thermal) favours none of them.
 */
export async function alternate<T>(
  runs: number,
  contenders: ReadonlyArray<{ name: string; run: (round: number) => Promise<T> }>,
  log: (line: string) => void,
  describe: (value: T) => string,
): Promise<Map<string, T[]>> {
  const results = new Map<string, T[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < runs; round++) {
    for (let k = 0; k < contenders.length; k++) {
      const contender = contenders[(round + k) % contenders.length] as (typeof contenders)[number];
      const value = await contender.run(round);
      results.get(contender.name)?.push(value);
      log(`  run ${round + 1}/${runs} ${contender.name}: ${describe(value)}`);
    }
  }
  return results;
}

/** `n` with thousands separators, no decimals. */
export function num(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}
