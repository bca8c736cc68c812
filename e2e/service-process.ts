/**
 * A service of the pipeline as a child process (`node dist/<service>/main.js`), for tests that
 * signal it for real: SIGKILL at any moment, SIGTERM for a clean stop, SIGSTOP/SIGCONT for a
 * stall. The child is tied to the test process (`setpriv --pdeathsig`), so a crashed test leaves
 * no service behind.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { serviceAllocatorEnv, spawnTied, waitForExit } from '../deploy/local/child-process.js';
import { sleep } from '../shared/lifecycle.js';
import { scrapeMetric } from '../shared/testing.js';

/** Lines of the child's output kept for the failure message. */
const LOG_LINES = 60;

export class ServiceProcess {
  private child: ChildProcess | undefined;
  private readonly output: string[] = [];
  private readonly listeners = new Set<(line: string) => void>();
  /** How often the process was started. */
  starts = 0;

  /**
   * `main` is the compiled entry point; `env` the service's whole configuration, which must
   * include `portVariable` (the port of its /readyz and /metrics).
   */
  constructor(
    readonly name: string,
    private readonly main: string,
    private readonly env: Record<string, string>,
    private readonly portVariable: string,
  ) {}

  get port(): number {
    return Number(this.env[this.portVariable]);
  }

  /** The pid of the current run, undefined when it is not running. */
  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
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
    if (this.running) throw new Error(`${this.name} is already running`);
    const env: NodeJS.ProcessEnv = { ...process.env, ...serviceAllocatorEnv(), ...this.env };
    // The child is a plain service, not a test file.
    delete env.NODE_TEST_CONTEXT;
    const child = spawnTied(process.execPath, [this.main], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      deathSignal: 'SIGKILL',
    });
    const keep = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim() === '') continue;
        for (const listener of this.listeners) listener(line);
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
        `${this.name} did not exit within ${timeoutMs} ms of ${signal}${this.tail()}`,
      );
    }
  }

  /** SIGSTOP / SIGCONT: the process stalls (no heartbeats, no flushes) and wakes up again. */
  freeze(frozen: boolean): void {
    this.child?.kill(frozen ? 'SIGSTOP' : 'SIGCONT');
  }

  /**
   * Calls `listener` with every line the child writes from now on (every run), until the returned
   * function is called.
   */
  onOutput(listener: (line: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resident memory of the current run in bytes (VmRSS), undefined when not running. */
  rssBytes(): number | undefined {
    const pid = this.pid;
    if (pid === undefined) return undefined;
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const kib = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
      return kib === undefined ? undefined : Number(kib) * 1024;
    } catch {
      return undefined;
    }
  }

  /** Polls `/readyz` until it answers 200; fails at once when the process exits. */
  async waitReady(timeoutMs = 20_000): Promise<void> {
    await this.poll('ready', timeoutMs, async () => {
      const response = await this.get('/readyz');
      await response?.arrayBuffer().catch(() => undefined);
      return response?.status === 200;
    });
  }

  /**
   * The sum of a metric's samples (those carrying all of `labels`), or undefined when the process
   * does not answer.
   */
  metric(name: string, labels: Readonly<Record<string, string>> = {}): Promise<number | undefined> {
    return scrapeMetric(this.port, name, labels);
  }

  /** The child's last output lines, for failure messages. */
  tail(): string {
    return this.output.length === 0 ? '' : `\n${this.name} output:\n${this.output.join('\n')}`;
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

  protected async poll(
    what: string,
    timeoutMs: number,
    probe: () => Promise<boolean>,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) {
        throw new Error(
          `${this.name} exited (code ${this.exitCode}) while waiting for ${what}${this.tail()}`,
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
