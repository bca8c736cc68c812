import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { aggregateBatch, type BatchInput, type BatchResult } from './batch-aggregator.js';

/**
 * Runs batch aggregation on a Piscina pool of `workers` threads, or inline on the main thread
 * when `workers` is 0. The record buffers are transferred, not copied, to the worker.
 * The pool's queue is bounded: the consumer hands it at most one batch per partition at a time.
 */
export class WorkerPool {
  private readonly pool: Piscina | undefined;

  constructor(readonly workers: number) {
    this.pool =
      workers === 0
        ? undefined
        : new Piscina({
            filename: fileURLToPath(new URL('./parse-worker.js', import.meta.url)),
            minThreads: workers,
            maxThreads: workers,
            // One task per thread at a time: the consumer already bounds what is in flight.
            concurrentTasksPerWorker: 1,
            idleTimeout: 60_000,
          });
  }

  /** The default: one worker per core. */
  static defaultSize(): number {
    return availableParallelism();
  }

  /** Tasks waiting for a thread. */
  get queued(): number {
    return this.pool?.queueSize ?? 0;
  }

  async run(input: BatchInput): Promise<BatchResult> {
    if (this.pool === undefined) return aggregateBatch(input);
    const transfer = [
      input.values.buffer,
      input.valueEnds.buffer,
      input.keys.buffer,
      input.keyEnds.buffer,
      input.offsets.buffer,
      input.timestamps.buffer,
    ];
    return (await this.pool.run(input, { transferList: transfer as ArrayBuffer[] })) as BatchResult;
  }

  async close(): Promise<void> {
    await this.pool?.close();
  }
}
