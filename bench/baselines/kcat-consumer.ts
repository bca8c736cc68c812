/**
 * Baseline of aggregate-catchup: the raw consume ceiling. `kcat -C -e` (librdkafka's C consumer,
 * no JavaScript at all) reads the whole topic from the beginning to /dev/null and exits at its
 * end. Its wall time includes connecting and discovering the partitions, which the other
 * contenders' clocks do not: if anything, that flatters the aggregator's ratio by a fraction of
 * a second over tens of seconds.
 */
import { spawnSync } from 'node:child_process';
import { BenchProcess } from '../bench-process.js';
import { startCpuMeter } from '../process-sampler.js';

export function kcatAvailable(): boolean {
  return spawnSync('kcat', ['-V']).status === 0;
}

export interface ConsumeRun {
  consumed: number;
  elapsedSec: number;
  eventsPerSec: number;
  cpuPct: number;
  capped: boolean;
}

export async function kcatConsume(options: {
  brokers: string;
  topic: string;
  records: number;
  timeoutMs: number;
}): Promise<ConsumeRun> {
  const startedAt = performance.now();
  const kcat = new BenchProcess(
    'kcat',
    ['-C', '-b', options.brokers, '-t', options.topic, '-o', 'beginning', '-e', '-q'],
    {},
    { command: 'kcat', discardStdout: true },
  );
  const meter = startCpuMeter([kcat.pid]);
  const code = await kcat.waitExit(options.timeoutMs);
  const elapsedSec = (performance.now() - startedAt) / 1000;
  const cpu = meter.stop();
  if (code !== 0) throw new Error(`kcat exited with code ${code}${kcat.tail()}`);
  return {
    consumed: options.records,
    elapsedSec,
    eventsPerSec: options.records / elapsedSec,
    cpuPct: cpu.byPid.get(kcat.pid) ?? 0,
    capped: false,
  };
}
