/**
 * Where a V8 CPU profile's time went (`node --cpu-prof`, e.g. from BENCH_INGEST_CPU_PROFILE_DIR or
 * BENCH_AGGREGATOR_CPU_PROFILE_DIR):
 * the functions with the most self time, and the share of garbage collection, native code and
 * idle. Prints Markdown.
 *
 *   node dist/bench/cpu-profile-summary.js <file.cpuprofile> [top=20]
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Self time per function (name and file), in microseconds, and the total sampled. */
export function selfTimes(profile: CpuProfile): { byFunction: Map<string, number>; total: number } {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const byFunction = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = nodes.get(profile.samples[i] as number);
    const delta = profile.timeDeltas[i] ?? 0;
    if (node === undefined) continue;
    total += delta;
    const { functionName, url, lineNumber } = node.callFrame;
    const file =
      url === '' ? '' : ` ${url.replace(/^.*\/(node_modules|dist)\//, '$1/')}:${lineNumber + 1}`;
    const name = `${functionName === '' ? '(anonymous)' : functionName}${file}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + delta);
  }
  return { byFunction, total };
}

function main(): void {
  const [path, topText] = process.argv.slice(2);
  if (path === undefined) {
    process.stderr.write('usage: cpu-profile-summary.js <file.cpuprofile> [top]\n');
    process.exit(2);
  }
  const top = Number(topText ?? 20);
  const { byFunction, total } = selfTimes(JSON.parse(readFileSync(path, 'utf8')) as CpuProfile);
  const idle = byFunction.get('(idle)') ?? 0;
  const busy = total - idle;
  const pct = (us: number): string => `${((us / busy) * 100).toFixed(1)} %`;
  process.stdout.write(
    `${path}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy (shares below are of busy time)\n\n| self time | function |\n|---|---|\n`,
  );
  const sorted = [...byFunction].filter(([name]) => name !== '(idle)').sort((a, b) => b[1] - a[1]);
  for (const [name, us] of sorted.slice(0, top)) {
    process.stdout.write(`| ${pct(us)} | \`${name}\` |\n`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) main();
