/**
 * HTTP load from this process with autocannon: keep-alive connections cycling through
 * pre-generated bodies. The bench process does nothing else while it runs, so its own CPU is the
 * generator's CPU; it is reported with every run.
 */
import autocannon from 'autocannon';
import { startCpuMeter } from './process-sampler.js';

export interface LoadOptions {
  url: string;
  path: string;
  bodies: readonly string[];
  connections: number;
  durationSec: number;
  /** Fixed arrival rate in requests/s over all connections (`-R`); unset: as fast as answered. */
  overallRate?: number;
  /** Pid of the server under load, whose CPU is reported. */
  targetPid: number;
  /**
   * autocannon worker threads (connections divided among them); unset: one, in this thread.
   * `overallRate` applies per worker.
   */
  workers?: number;
}

export interface LoadResult {
  /** 2xx answers per second. */
  okPerSec: number;
  ok: number;
  non2xx: number;
  errors: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  targetCpuPct: number;
  generatorCpuPct: number;
  /** The generator's busiest thread: at GENERATOR_BOUND_PCT or more, the run is generator-bound. */
  generatorThreadCpuPct: number;
  machineCpuPct: number;
  durationSec: number;
}

/**
 * A generator thread's CPU above this (percent of one core; each autocannon thread is
 * single-threaded) makes a run suspect.
 */
export const GENERATOR_BOUND_PCT = 90;

export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const meter = startCpuMeter([options.targetPid]);
  const result = await autocannon({
    url: options.url,
    connections: options.connections,
    pipelining: 1,
    duration: options.durationSec,
    timeout: 30,
    ...(options.overallRate === undefined ? {} : { overallRate: options.overallRate }),
    ...(options.workers === undefined ? {} : { workers: options.workers }),
    requests: options.bodies.map((body) => ({
      method: 'POST',
      path: options.path,
      headers: { 'content-type': 'application/json' },
      body,
    })),
  });
  const cpu = meter.stop();
  const ok = result['2xx'];
  return {
    okPerSec: ok / result.duration,
    ok,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    latencyP50Ms: result.latency.p50,
    latencyP99Ms: result.latency.p99,
    targetCpuPct: cpu.byPid.get(options.targetPid) ?? 0,
    generatorCpuPct: cpu.self,
    generatorThreadCpuPct: cpu.selfBusiestThread,
    machineCpuPct: cpu.machine,
    durationSec: result.duration,
  };
}
