/**
 * The short version of `make chaos`, for `make test`: a few cycles of the aggregator SIGKILL
 * (including between COPY and COMMIT), the aggregator stall with takeover, the broker stall and
 * SIGKILL, and the three PostgreSQL faults, on a broker and PostgreSQL of its own (the run's
 * shared ones must stay up for the other tests). Every acknowledged event must be counted exactly
 * once, no unknown one more than once, and every fault must clear within 30 s.
 *
 * A failing run prints its seed; `CHAOS_SEED=<seed> make chaos SCENARIO=<name>` replays a scenario.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { testSeed } from '../e2e/activity-oracle.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { ChaosStack } from './chaos-stack.js';
import { resultsTable } from './results-table.js';
import { runScenario, type Scenario } from './scenario.js';
import { aggregatorKill, aggregatorStall } from './scenarios/aggregator-faults.js';
import {
  brokerKill,
  brokerStall,
  postgresCrash,
  postgresHang,
  postgresTerminate,
} from './scenarios/infrastructure-faults.js';

const logger = createLogger('test', 'error');
let stack: ChaosStack;
/** Scenarios that passed; unless all did, the stack's folder (with the services' logs) is kept. */
let passed = 0;

before(async () => {
  stack = await ChaosStack.start(`test/chaos-${process.pid}`);
});

after(async () => {
  await withDeadline(stack.stop(), 40_000, 'stopping the chaos stack');
  if (passed < SHORT.length) console.log(`chaos: the services' logs are kept in ${stack.dir}`);
  else await stack.remove();
});

const SHORT: Array<[Scenario, number]> = [
  [aggregatorKill, 2],
  [aggregatorStall, 2],
  [brokerStall(10_000), 1],
  [brokerKill, 1],
  [postgresTerminate, 2],
  [postgresCrash, 1],
  [postgresHang, 1],
];

for (const [index, [scenario, cycles]] of SHORT.entries()) {
  test(`chaos ${scenario.name}: nothing acknowledged lost, nothing counted twice`, {
    timeout: 150_000,
  }, async (t) => {
    const seed = testSeed() + index;
    t.diagnostic(`seed ${seed}`);
    const result = await runScenario({
      stack,
      scenario,
      cycles,
      seed,
      logger,
      log: (line) => t.diagnostic(line),
    });
    t.diagnostic(resultsTable([result]).split('\n').slice(-1)[0] ?? '');
    assert.deepEqual(result.problems, []);
    assert.equal(result.cycles, cycles);
    assert.ok(result.acknowledged > 0, 'ingest acknowledged no event');
    assert.equal(result.lost, 0);
    assert.equal(result.doubleCounted, 0);
    passed++;
  });
}
