/**
 * The aggregator as a child process (`node dist/aggregator/main.js`), for tests that kill it for
 * real: SIGKILL at any moment, SIGTERM for a clean stop, SIGSTOP/SIGCONT for a stall (see
 * `ServiceProcess`), plus waiting for its partitions.
 */
import { fileURLToPath } from 'node:url';
import { ServiceProcess } from './service-process.js';

const MAIN = fileURLToPath(new URL('../aggregator/main.js', import.meta.url));

export class AggregatorProcess extends ServiceProcess {
  /** `env` is the aggregator's whole configuration; it must include AGGREGATOR_PORT. */
  constructor(env: Record<string, string>) {
    super('aggregator', MAIN, env, 'AGGREGATOR_PORT');
  }

  /** Waits until the process owns at least `min` partitions (the `aggregator_assigned_partitions` gauge). */
  async waitAssigned(min: number, timeoutMs = 30_000): Promise<number> {
    let assigned = 0;
    await this.poll(`${min} partition(s) assigned`, timeoutMs, async () => {
      assigned = (await this.metric('aggregator_assigned_partitions')) ?? 0;
      return assigned >= min;
    });
    return assigned;
  }
}
