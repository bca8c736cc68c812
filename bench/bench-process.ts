/**
 * A process the bench measures (ingest, the aggregator, a baseline server or client), run apart
 * from the load generator so that their CPU never mixes. Tied to the bench (`setpriv
 * --pdeathsig`), so an interrupted bench leaves nothing running.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { serviceAllocatorEnv, spawnTied, stopChild } from '../deploy/local/child-process.js';
import { sleep } from '../shared/lifecycle.js';

/** Lines of output kept for failure messages. */
const TAIL_LINES = 40;

/** A compiled script under dist/, from a path relative to dist/bench/. */
export function distScript(relativeToBench: string): string {
  return fileURLToPath(new URL(relativeToBench, import.meta.url));
}

export class BenchProcess {
  private readonly child: ChildProcess;
  private readonly tailLines: string[] = [];
  private stdoutText = '';
  private exited = false;

  constructor(
    readonly name: string,
    args: readonly string[],
    env: Record<string, string>,
    options: { command?: string; keepStdout?: boolean; discardStdout?: boolean } = {},
  ) {
    // Every Node contender, service or baseline, runs on the allocator the services ship with.
    const allocator = options.command === undefined ? serviceAllocatorEnv() : {};
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...allocator, ...env };
    delete childEnv.NODE_TEST_CONTEXT;
    this.child = spawnTied(options.command ?? process.execPath, args, {
      env: childEnv,
      stdio: ['ignore', options.discardStdout === true ? 'ignore' : 'pipe', 'pipe'],
      deathSignal: 'SIGKILL',
    });
    const keep = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim() === '') continue;
        this.tailLines.push(line.slice(0, 400));
        if (this.tailLines.length > TAIL_LINES) this.tailLines.shift();
      }
    };
    this.child.stdout?.on('data', (chunk: Buffer) => {
      if (options.keepStdout === true) this.stdoutText += chunk.toString('utf8');
      else keep(chunk);
    });
    this.child.stderr?.on('data', keep);
    this.child.once('exit', () => {
      this.exited = true;
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Everything written to stdout, when `keepStdout` was set. */
  get stdout(): string {
    return this.stdoutText;
  }

  tail(): string {
    return this.tailLines.length === 0
      ? ''
      : `\n${this.name} output:\n${this.tailLines.join('\n')}`;
  }

  /** Polls `url` until it answers 200. */
  async waitHttpOk(url: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) throw new Error(`${this.name} exited while starting${this.tail()}`);
      try {
        const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
        await response.arrayBuffer();
        if (response.status === 200) return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) {
        throw new Error(
          `${this.name} was not ready at ${url} within ${timeoutMs} ms${this.tail()}`,
        );
      }
      await sleep(100);
    }
  }

  /** Waits for the process to end by itself. */
  async waitExit(timeoutMs: number): Promise<number | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.running && Date.now() < deadline) await sleep(50);
    if (this.running) {
      await this.stop();
      throw new Error(`${this.name} did not finish within ${timeoutMs} ms${this.tail()}`);
    }
    return this.child.exitCode;
  }

  /** SIGTERM, then SIGKILL after a grace period. */
  async stop(graceMs = 15_000): Promise<void> {
    if (!this.running) return;
    await stopChild(this.child, [
      { signal: 'SIGTERM', waitMs: graceMs },
      { signal: 'SIGKILL', waitMs: 5_000 },
    ]);
  }
}
