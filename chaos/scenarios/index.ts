/** Every chaos scenario, in the order `make chaos` runs them. */
import type { Scenario } from '../scenario.js';
import { aggregatorKill, aggregatorStall, rebalanceStorm } from './aggregator-faults.js';
import {
  brokerKill,
  brokerStall,
  ingestKill,
  postgresCrash,
  postgresHang,
  postgresTerminate,
} from './infrastructure-faults.js';
import { clockSkew, soak } from './load-faults.js';

/** `stallMs`: how long the broker is frozen (30 s in `make chaos`; less in the short test). */
export function allScenarios(options: { brokerStallMs?: number } = {}): Scenario[] {
  return [
    aggregatorKill,
    aggregatorStall,
    brokerStall(options.brokerStallMs ?? 30_000),
    brokerKill,
    postgresTerminate,
    postgresCrash,
    postgresHang,
    ingestKill,
    rebalanceStorm,
    clockSkew,
    soak,
  ];
}
