/**
 * The aggregator as a child process (`node dist/aggregator/main.js`), for tests that kill it for
 * real: SIGKILL at any moment, SIGTERM for a clean stop, SIGSTOP/SIGCONT for a stall. The child
 * is tied to the test process (`setpriv --pdeathsig`), so a crashed test leaves no aggregator
 * behind.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { spawnTied, waitForExit } from '../deploy/local/child-process.js';
import { sleep } from '../shared/lifecycle.js';

const MAIN = fileURLToPath(new URL('../aggregator/main.js', import.meta.url));
/** Lines of the child's output kept for the failure message. */
const LOG_LINES = 60;

export class AggregatorProcess {
  private child: ChildProcess | undefined;
  private readonly output: string[] = [];
  /** How often the process was started. */
  starts = 0;

  /** `env` is the aggregator's whole configuration; it must include AGGREGATOR_PORT. */
  constructor(private readonly env: Record<string, string>) {}

  get port(): number {
    return Number(this.env.AGGREGATOR_PORT);
  }

  get running(): boolean {
    return (
      this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null
    );
  }

  /** The exit code of the last run, null while running or when a signal ended it. */
  get exitCode(): number | null {
    return this.child?.exitCode ?? null;
  }

  start(): void {
    if (this.running) throw new Error('the aggregator is already running');
    const env: NodeJS.ProcessEnv = { ...process.env, ...this.env };
    // The child is a plain service, not a test file.
    delete env.NODE_TEST_CONTEXT;
    const child = spawnTied(process.execPath, [MAIN], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      deathSignal: 'SIGKILL',
    });
    const keep = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim() === '') continue;
        this.output.push(line.slice(0, 600));
        if (this.output.length > LOG_LINES) this.output.shift();
      }
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.child = child;
    this.starts++;
  }

  /** Sends `signal` and waits for the exit (SIGKILL: immediate; SIGTERM: the graceful stop). */
  async signal(signal: 'SIGKILL' | 'SIGTERM', timeoutMs = 10_000): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return;
    child.kill(signal);
    if (!(await waitForExit(child, timeoutMs))) {
      child.kill('SIGKILL');
      await waitForExit(child, 5_000);
      throw new Error(
        `the aggregator did not exit within ${timeoutMs} ms of ${signal}${this.tail()}`,
      );
    }
  }

  /** SIGSTOP / SIGCONT: the process stalls (no heartbeats, no flushes) and wakes up again. */
  freeze(frozen: boolean): void {
    this.child?.kill(frozen ? 'SIGSTOP' : 'SIGCONT');
  }

  /** Polls `/readyz` until it answers 200; fails at once when the process exits. */
  async waitReady(timeoutMs = 20_000): Promise<void> {
    await this.poll('ready', timeoutMs, async () => {
      const response = await this.get('/readyz');
      return response?.status === 200;
    });
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

  /** The sum of a metric's samples, or undefined when the process does not answer. */
  async metric(name: string): Promise<number | undefined> {
    const response = await this.get('/metrics');
    if (response === undefined || response.status !== 200) return undefined;
    let total = 0;
    for (const line of (await response.text()).split('\n')) {
      if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) {
        total += Number(line.slice(line.lastIndexOf(' ') + 1));
      }
    }
    return total;
  }

  /** The child's last output lines, for failure messages. */
  tail(): string {
    return this.output.length === 0 ? '' : `\naggregator output:\n${this.output.join('\n')}`;
  }

  private async get(path: string): Promise<Response | undefined> {
    try {
      return await fetch(`http://127.0.0.1:${this.port}${path}`, {
        signal: AbortSignal.timeout(2_000),
      });
    } catch {
      return undefined;
    }
  }

  private async poll(
    what: string,
    timeoutMs: number,
    probe: () => Promise<boolean>,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) {
        throw new Error(
          `the aggregator exited (code ${this.exitCode}) while waiting for ${what}${this.tail()}`,
        );
      }
      if (await probe()) return;
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${this.tail()}`);
      }
      await sleep(50);
    }
  }
}
