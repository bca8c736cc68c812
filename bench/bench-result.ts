import type { Figure } from './statistics.js';

/** A target's figure divided by a baseline's, both medians of the same run, with its goal. */
export interface Ratio {
  name: string;
  /** What is divided by what, in words. */
  of: string;
  value: number;
  /** The target, e.g. `>= 0.6`. */
  target: string;
  met: boolean;
}

/** One measured participant of a scenario (the target itself or a baseline). */
export interface Contender {
  name: string;
  role: 'target' | 'baseline';
  /** The headline figure (requests/s, events/s, ...). */
  throughput: Figure;
  /** CPU of the process under test, in percent of one core (2 cores: at most 200). */
  targetCpuPct?: Figure;
  /** CPU of the load generator (the bench process, or the baseline's own process). */
  generatorCpuPct?: Figure;
  /** Anything else measured for it: latency percentiles, errors, RSS, ... */
  extra?: Record<string, Figure | string | number>;
}

/** What one scenario writes to `bench/results/<name>.json`. */
export interface ScenarioResult {
  scenario: string;
  /** One line: what was measured and how. */
  method: string;
  startedAt: string;
  durationSec: number;
  contenders: Contender[];
  ratios: Ratio[];
  /** Validity findings: generator-bound runs, errors, capped runs. Empty when clean. */
  warnings: string[];
  notes?: string[];
}

/** The machine and software every scenario of a run shares. */
export interface MachineInfo {
  date: string;
  host: string;
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  os: string;
  node: string;
  kafka: string;
  postgres: string;
  packages: Record<string, string>;
  gitCommit: string;
  /** Files of ingest/, aggregator/ or shared/ that differed from the commit when the bench built. */
  uncommittedServiceFiles?: string[];
  profile: string;
}

export function atLeast(name: string, of: string, value: number, goal: number): Ratio {
  return { name, of, value, target: `>= ${goal}`, met: value >= goal };
}

export function atMost(name: string, of: string, value: number, goal: number): Ratio {
  return { name, of, value, target: `<= ${goal}`, met: value <= goal };
}
