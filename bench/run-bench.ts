/**
 * `make bench`: starts a fresh broker and PostgreSQL (unless KAFKA_BROKERS / DATABASE_URL point
 * at running ones), runs each scenario in turn with its baselines, and writes
 * `bench/results/<scenario>.json` and `bench/RESULTS.md` after every scenario.
 *
 *   node dist/bench/run-bench.js [scenario ...]      (or SCENARIO=name)
 *   BENCH_PROFILE=smoke BENCH_RESULTS_DIR=/tmp/x node dist/bench/run-bench.js ingest-single
 */
import { spawnSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { type LocalStack, REPO_ROOT, startLocalStack } from '../deploy/local/stack.js';
import { loadConfigOrExit } from '../shared/config-reader.js';
import { readBenchConfig, type ScenarioName } from './bench-config.js';
import { BenchTopics } from './bench-topics.js';
import { machineInfo } from './machine-info.js';
import { writeMarkdown, writeScenarioResult } from './results-report.js';
import type { BenchContext, Scenario } from './scenario.js';
import { aggregateCatchup } from './scenarios/aggregate-catchup.js';
import { endToEnd } from './scenarios/end-to-end.js';
import { ingestBatch } from './scenarios/ingest-batch.js';
import { ingestSingle } from './scenarios/ingest-single.js';
import { memory } from './scenarios/memory.js';
import { query } from './scenarios/query.js';
import { rollups } from './scenarios/rollups.js';

const SCENARIOS: Record<ScenarioName, Scenario> = {
  'ingest-single': ingestSingle,
  'ingest-batch': ingestBatch,
  'aggregate-catchup': aggregateCatchup,
  'end-to-end': endToEnd,
  memory,
  rollups,
  query,
};

const defaultResultsDir = join(REPO_ROOT, 'bench', 'results');
const config = loadConfigOrExit(() =>
  readBenchConfig(process.env, process.argv.slice(2), defaultResultsDir),
);
// bench/results/ → bench/RESULTS.md; any other directory holds its own RESULTS.md.
const markdownPath =
  basename(config.resultsDir) === 'results'
    ? join(dirname(config.resultsDir), 'RESULTS.md')
    : join(config.resultsDir, 'RESULTS.md');
const log = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

async function main(): Promise<number> {
  if (spawnSync('kcat', ['-V']).status !== 0) {
    log(
      '[bench] kcat is missing: the raw-consume baseline and the freshness measurement are skipped. Install it with: apt-get install -y kcat',
    );
  }
  await mkdir(config.resultsDir, { recursive: true });
  log(
    `[bench] profile ${config.profile}: ${config.scenarios.join(', ')}; results in ${config.resultsDir}`,
  );
  let stack: LocalStack | undefined;
  let interrupted = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (interrupted) process.exit(130);
      interrupted = true;
      log(`[bench] ${signal}: stopping the broker and PostgreSQL`);
      void (stack?.stop({ force: true }) ?? Promise.resolve()).finally(() => process.exit(130));
    });
  }
  stack = await startLocalStack({ mode: 'test', log });
  let failures = 0;
  try {
    const machine = await machineInfo({
      repoRoot: REPO_ROOT,
      databaseUrl: stack.databaseUrl,
      kafkaVersion: stack.kafkaVersion,
      profile: config.profile,
      sourceCommit: config.sourceCommit,
    });
    const context: BenchContext = {
      config,
      kafkaBrokers: stack.kafkaBrokers,
      databaseUrl: stack.databaseUrl,
      topics: new BenchTopics(stack.kafkaBrokers, `bench_${Date.now().toString(36)}`),
      log,
    };
    for (const name of config.scenarios) {
      const started = Date.now();
      log(`[bench] ${name}: starting`);
      try {
        const result = await SCENARIOS[name].run(context);
        const path = await writeScenarioResult(config.resultsDir, { machine, result });
        await writeMarkdown(config.resultsDir, markdownPath);
        for (const ratio of result.ratios) {
          log(
            `[bench] ${name}: ${ratio.name} = ${ratio.value.toFixed(2)} (target ${ratio.target}: ${ratio.met ? 'met' : 'MISSED'})`,
          );
        }
        for (const warning of result.warnings) log(`[bench] ${name}: validity: ${warning}`);
        log(`[bench] ${name}: done in ${((Date.now() - started) / 1000).toFixed(0)} s → ${path}`);
      } catch (err) {
        failures++;
        log(`[bench] ${name}: FAILED: ${(err as Error).stack ?? String(err)}`);
      }
    }
  } finally {
    log('[bench] stopping the broker and PostgreSQL');
    await stack.stop();
  }
  log(
    `[bench] ${failures === 0 ? 'finished' : `${failures} scenario(s) failed`}; table: ${markdownPath}`,
  );
  return failures === 0 ? 0 : 1;
}

process.exit(await main());
