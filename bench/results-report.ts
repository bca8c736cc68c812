/**
 * Writes a scenario's figures to `<dir>/<scenario>.json` and rebuilds the human table
 * `<dir>/../RESULTS.md` (or `<dir>/RESULTS.md` for other directories) from every JSON file there.
 */
import { spawnSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { SCENARIO_NAMES } from './bench-config.js';
import type { MachineInfo, ScenarioResult } from './bench-result.js';
import type { Figure } from './statistics.js';

export interface ResultFile {
  machine: MachineInfo;
  result: ScenarioResult;
}

export async function writeScenarioResult(dir: string, file: ResultFile): Promise<string> {
  const path = join(dir, `${file.result.scenario}.json`);
  await writeFile(path, `${JSON.stringify(file, null, 2)}\n`);
  // In the repository's own format, so that committed results pass `make lint` as written.
  spawnSync(join(REPO_ROOT, 'node_modules', '.bin', 'biome'), ['format', '--write', path], {
    stdio: 'ignore',
  });
  return path;
}

export async function readResults(dir: string): Promise<ResultFile[]> {
  const names = (await readdir(dir)).filter((name) => name.endsWith('.json'));
  const files = await Promise.all(
    names.map(async (name) => JSON.parse(await readFile(join(dir, name), 'utf8')) as ResultFile),
  );
  const order = (file: ResultFile): number =>
    (SCENARIO_NAMES as readonly string[]).indexOf(file.result.scenario);
  return files.sort((a, b) => order(a) - order(b));
}

const fmt = (n: number): string => {
  if (!Number.isFinite(n)) return 'n/a';
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString('en-US');
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
};

const fig = (f: Figure | undefined): string =>
  f === undefined ? '' : `${fmt(f.median)} (${fmt(f.min)}–${fmt(f.max)})`;

/** Every run's figure, or how many there were when they are too many to list. */
const runsText = (f: Figure): string =>
  f.runs.length <= MAX_RUNS_LISTED ? f.runs.map(fmt).join(', ') : `${f.runs.length} runs`;
const MAX_RUNS_LISTED = 5;

/**
 * The results of the previous commit, measured in the same session with the same harness, kept
 * in `<dir>/before/` (none when it is missing).
 */
export async function readBeforeResults(dir: string): Promise<ResultFile[]> {
  try {
    return await readResults(join(dir, 'before'));
  } catch {
    return [];
  }
}

export function renderMarkdown(
  files: readonly ResultFile[],
  before: readonly ResultFile[] = [],
): string {
  const lines: string[] = ['# Benchmark results', ''];
  lines.push(
    'Written by `make bench` (`bench/run-bench.ts`); every figure below was measured in the run named in its section, next to its baselines, on the machine described there. Figures are medians over the runs, with the lowest and highest run in brackets. **The machine has 2 cores shared by everything at once**: the Kafka broker (a JVM), PostgreSQL, the service under test, its baselines when they run, and the load generator. Nothing here is a dedicated-hardware figure; the ratios are what carries over.',
    '',
  );
  if (files.length === 0) return `${lines.join('\n')}No results yet.\n`;
  const beforeRatio = (scenario: string, name: string): string => {
    const file = before.find((b) => b.result.scenario === scenario);
    const ratio = file?.result.ratios.find((r) => r.name === name);
    return ratio === undefined ? '' : `${fmt(ratio.value)} (${file?.machine.gitCommit})`;
  };
  lines.push(
    '## Targets',
    '',
    'Before: the same ratio of the previous commit, measured in the same session with the same harness ([before](#before)), where there is one.',
    '',
    '| scenario | ratio | value | before | target | verdict |',
    '|---|---|---|---|---|---|',
  );
  for (const { result } of files) {
    for (const ratio of result.ratios) {
      lines.push(
        `| ${result.scenario} | ${ratio.name} (${ratio.of}) | ${fmt(ratio.value)} | ${beforeRatio(result.scenario, ratio.name)} | ${ratio.target} | ${ratio.met ? 'met' : '**missed**'} |`,
      );
    }
  }
  lines.push('');
  const machines = new Map<string, MachineInfo>();
  for (const { machine } of files)
    machines.set(`${machine.date.slice(0, 16)}|${machine.gitCommit}`, machine);
  lines.push('## Machine and versions', '');
  for (const machine of machines.values()) {
    lines.push(
      `- run of ${machine.date} (profile \`${machine.profile}\`, commit ${machine.gitCommit}): ${machine.cores} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, ${machine.os}; Node ${machine.node}, Kafka ${machine.kafka}, PostgreSQL ${machine.postgres}; ${Object.entries(
        machine.packages,
      )
        .map(([name, version]) => `${name} ${version}`)
        .join(', ')}${
        (machine.uncommittedServiceFiles ?? []).length > 0
          ? `; built with uncommitted changes to ${machine.uncommittedServiceFiles?.join(', ')}`
          : ''
      }`,
    );
  }
  lines.push('');
  for (const { machine, result } of files) {
    lines.push(`## ${result.scenario}`, '');
    lines.push(
      `Measured ${result.startedAt} (${fmt(result.durationSec)} s, commit ${machine.gitCommit}). ${result.method}`,
      '',
    );
    lines.push(
      '| contender | role | throughput | unit | runs | spread | process CPU % | generator CPU % |',
      '|---|---|---|---|---|---|---|---|',
    );
    for (const c of result.contenders) {
      lines.push(
        `| ${c.name} | ${c.role} | ${fig(c.throughput)} | ${c.throughput.unit} | ${runsText(c.throughput)} | ${fmt(c.throughput.spreadPct)} % | ${fig(c.targetCpuPct)} | ${fig(c.generatorCpuPct)} |`,
      );
    }
    lines.push('');
    const extras = result.contenders.filter((c) => c.extra !== undefined);
    if (extras.length > 0) {
      lines.push('| contender | more figures |', '|---|---|');
      for (const c of extras) {
        const parts = Object.entries(c.extra ?? {}).map(([key, value]) =>
          typeof value === 'object'
            ? `${key} ${fig(value)} ${value.unit}`
            : `${key} ${typeof value === 'number' ? fmt(value) : value}`,
        );
        lines.push(`| ${c.name} | ${parts.join('; ')} |`);
      }
      lines.push('');
    }
    for (const ratio of result.ratios) {
      lines.push(
        `- ${ratio.name}: ${ratio.of} = **${fmt(ratio.value)}** (target ${ratio.target}: ${ratio.met ? 'met' : 'missed'})`,
      );
    }
    for (const note of result.notes ?? []) lines.push(`- note: ${note}`);
    for (const warning of result.warnings) lines.push(`- validity: ${warning}`);
    if (result.warnings.length === 0)
      lines.push('- validity: no run was generator-bound; no errors');
    lines.push('');
  }
  if (before.length > 0) {
    lines.push(
      '## Before',
      '',
      'The previous commit, measured in the same session as the figures above, by the same harness (its JSON: `results/before/`).',
      '',
      '| scenario | commit | measured | contender | throughput | unit | process CPU % | generator CPU % |',
      '|---|---|---|---|---|---|---|---|',
    );
    for (const { machine, result } of before) {
      for (const c of result.contenders) {
        lines.push(
          `| ${result.scenario} | ${machine.gitCommit} | ${result.startedAt} | ${c.name} | ${fig(c.throughput)} | ${c.throughput.unit} | ${fig(c.targetCpuPct)} | ${fig(c.generatorCpuPct)} |`,
        );
      }
    }
    lines.push('');
    for (const { result } of before) {
      for (const ratio of result.ratios) {
        lines.push(
          `- ${result.scenario}: ${ratio.name}: ${ratio.of} = **${fmt(ratio.value)}** (target ${ratio.target})`,
        );
      }
      for (const note of result.notes ?? []) lines.push(`- ${result.scenario}: note: ${note}`);
      for (const warning of result.warnings)
        lines.push(`- ${result.scenario}: validity: ${warning}`);
    }
    lines.push('');
  }
  return `${lines.join('\n')}`;
}

/**
 * `<dir>/analysis.md`, written by hand after a run: why a missed row misses, with the profile
 * behind it, and what would close it. Appended to RESULTS.md as it is; empty when missing.
 */
async function readAnalysis(dir: string): Promise<string> {
  try {
    return await readFile(join(dir, 'analysis.md'), 'utf8');
  } catch {
    return '';
  }
}

export async function writeMarkdown(resultsDir: string, markdownPath: string): Promise<void> {
  const analysis = await readAnalysis(resultsDir);
  await writeFile(
    markdownPath,
    renderMarkdown(await readResults(resultsDir), await readBeforeResults(resultsDir)) +
      (analysis === '' ? '' : `\n${analysis}`),
  );
}
