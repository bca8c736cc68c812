/**
 * `make chaos`: starts a private broker and PostgreSQL, runs every fault scenario (or those
 * SCENARIO names) for CYCLES cycles each (default: each scenario's own), prints progress and the
 * table, writes it to .local/chaos/results.md, and exits 1 on any loss, double count or other
 * problem.
 *
 *   node dist/chaos/run-chaos.js            SCENARIO=aggregator-kill,broker CYCLES=5 CHAOS_SEED=1
 *
 * SCENARIO matches names by prefix: `postgres` runs the three PostgreSQL scenarios; `name:n`
 * runs that scenario for n cycles whatever CYCLES says.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { ConfigReader, loadConfigOrExit } from '../shared/config-reader.js';
import { createLogger } from '../shared/logger.js';
import { ChaosStack } from './chaos-stack.js';
import { resultsNotes, resultsTable } from './results-table.js';
import { runScenario, type ScenarioResult } from './scenario.js';
import { allScenarios } from './scenarios/index.js';

interface ChaosConfig {
  scenarios: string[];
  /** 0: each scenario's default. */
  cycles: number;
  seed: number;
  brokerStallMs: number;
}

function readChaosConfig(env: NodeJS.ProcessEnv): ChaosConfig {
  const r = new ConfigReader(env);
  const config: ChaosConfig = {
    scenarios: r.list('SCENARIO', []),
    cycles: r.int('CYCLES', 0, { min: 0, max: 10_000 }),
    seed: r.int('CHAOS_SEED', Math.floor(Math.random() * 2 ** 31), { min: 0, max: 2 ** 31 }),
    brokerStallMs: r.secondsAsMs('CHAOS_BROKER_STALL_SEC', 30, { min: 1, max: 600 }),
  };
  r.finish();
  return config;
}

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

async function main(): Promise<number> {
  const config = loadConfigOrExit(() => readChaosConfig(process.env));
  const known = allScenarios({ brokerStallMs: config.brokerStallMs });
  const wanted = config.scenarios.map((entry) => {
    const [name = '', cycles] = entry.split(':');
    return { name, cycles: Number(cycles ?? 0) };
  });
  const cyclesOf = new Map<string, number>();
  const chosen =
    wanted.length === 0
      ? known
      : known.filter((s) => {
          const match = wanted.find((w) => s.name.startsWith(w.name));
          if (match !== undefined && match.cycles > 0) cyclesOf.set(s.name, match.cycles);
          return match !== undefined;
        });
  if (chosen.length === 0) {
    say(
      `[chaos] no scenario matches ${config.scenarios.join(',')}; known: ${known.map((s) => s.name).join(', ')}`,
    );
    return 2;
  }
  say(`[chaos] seed ${config.seed}; scenarios: ${chosen.map((s) => s.name).join(', ')}`);
  say('[chaos] starting a private Kafka broker and PostgreSQL');
  const stack = await ChaosStack.start(`chaos-${process.pid}`);
  let stopping = false;
  const onSignal = (): void => {
    if (stopping) {
      // The broker gets SIGTERM as this process exits, which a frozen one would never act on.
      stack.thaw();
      process.exit(130);
    }
    stopping = true;
    say('[chaos] interrupted: stopping after this scenario (again to quit now)');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const logger = createLogger('chaos', 'error');
  const results: ScenarioResult[] = [];
  try {
    for (const [index, scenario] of chosen.entries()) {
      if (stopping) break;
      const cycles =
        cyclesOf.get(scenario.name) ?? (config.cycles > 0 ? config.cycles : scenario.defaultCycles);
      say(`[chaos] ${scenario.name}: ${scenario.fault}, ${cycles} cycle(s)`);
      const result = await runScenario({
        stack,
        scenario,
        cycles,
        seed: config.seed + index,
        logger,
        log: say,
      });
      results.push(result);
      // After every scenario, so that an interrupted run keeps what it measured.
      await writeResults(results, config.seed);
      say(
        `[chaos] ${scenario.name}: ${result.problems.length === 0 ? 'pass' : 'FAIL'}; acknowledged ${result.acknowledged}, lost ${result.lost}, double-counted ${result.doubleCounted}, unknown ${result.unknown} (${result.unknownCounted} counted)`,
      );
    }
  } finally {
    await stack.stop();
  }
  const problems = await writeResults(results, config.seed);
  say(`\n${resultsTable(results)}\n\n${resultsNotes(results)}`);
  for (const line of problems) say(`[chaos] problem: ${line.slice(0, 2000)}`);
  if (problems.length === 0) await stack.remove();
  else say(`[chaos] broker and PostgreSQL logs kept in ${stack.dir}`);
  return problems.length === 0 ? 0 : 1;
}

/** Writes the table, its notes and the problems to .local/chaos/results.md; returns the problems. */
async function writeResults(results: readonly ScenarioResult[], seed: number): Promise<string[]> {
  const problems = results.flatMap((r) => r.problems.map((p) => `${r.name}: ${p}`));
  const dir = join(REPO_ROOT, '.local', 'chaos');
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'results.md'),
    `${new Date().toISOString()} seed ${seed}\n\n${resultsTable(results)}\n\n${resultsNotes(results)}\n\n${problems.join('\n')}\n`,
  );
  return problems;
}

process.exit(await main());
