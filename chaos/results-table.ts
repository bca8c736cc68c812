/** The table `make chaos` prints and docs/RELIABILITY.md keeps: one row per scenario. */
import { mib, RECOVERY_TARGET_MS, type ScenarioResult } from './scenario.js';

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

/** A Markdown table of `results`; a recovery over the target is marked. */
export function resultsTable(results: readonly ScenarioResult[]): string {
  const lines = [
    '| fault | scenario | cycles | acknowledged | lost | double-counted | unknown | unknown-and-counted | recovery median / max | peak RSS ingest / aggregator | verdict |',
    '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|',
  ];
  for (const r of results) {
    const done = r.recoveriesMs
      .filter((ms): ms is number => ms !== undefined)
      .sort((a, b) => a - b);
    const median = done[Math.floor((done.length - 1) / 2)];
    const max = done[done.length - 1];
    const recovery =
      median === undefined || max === undefined
        ? 'n/a'
        : `${seconds(median)} / ${seconds(max)}${max > RECOVERY_TARGET_MS ? ' (over 30 s)' : ''}`;
    const failed = done.length < r.recoveriesMs.length;
    const verdict = r.problems.length === 0 ? 'pass' : `FAIL (${r.problems.length})`;
    lines.push(
      `| ${r.fault} | \`${r.name}\` | ${r.cycles} | ${r.acknowledged} | ${r.lost} | ${r.doubleCounted} | ${r.unknown} | ${r.unknownCounted} | ${recovery}${failed ? ', one not recovered' : ''} | ${mib(r.peakRssBytes.ingest ?? 0)} / ${mib(r.peakRssBytes.aggregator ?? 0)} MiB | ${verdict} |`,
    );
  }
  return lines.join('\n');
}

/** What each scenario counted and answered, one line each: the evidence behind the table. */
export function resultsNotes(results: readonly ScenarioResult[]): string {
  return results
    .map((r) => {
      const counts = Object.entries(r.counts)
        .map(([what, n]) => `${what}: ${n}`)
        .join('; ');
      const answers = Object.entries(r.answers)
        .map(([status, n]) => `${status} ×${n}`)
        .join(', ');
      return `- \`${r.name}\` (seed ${r.seed}, ${seconds(r.durationMs)}): ${counts}. Answers: ${answers}.`;
    })
    .join('\n');
}
