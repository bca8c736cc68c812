import { type ChildProcess, type SpawnOptions, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { sleep } from '../../shared/lifecycle.js';

/**
 * Child processes of the local stack (broker, Postgres, the services under `make up`), started so
 * that they cannot outlive the launcher, and stopped with a bounded, escalating sequence.
 *
 * How a child is tied to us: it is started through util-linux `setpriv --pdeathsig <signal>`,
 * which sets PR_SET_PDEATHSIG and then execs the real program. When the launcher dies for any
 * reason, SIGKILL included, the kernel sends that signal to the child. Limits: it needs Linux and
 * `setpriv` (util-linux >= 2.33; without it children are spawned plainly and only the launcher's
 * signal handlers stop them), and a child that ignores the signal (a hung JVM ignoring SIGTERM)
 * still has to be reaped by hand. Grandchildren are not covered, which is why the broker and
 * Postgres are run in the foreground instead of through a daemonising wrapper like `pg_ctl`.
 */

let setprivChecked: boolean | undefined;

/** True when `setpriv --pdeathsig` is available (checked once). */
export function canTieToParent(): boolean {
  if (setprivChecked === undefined) {
    const probe = spawnSync('setpriv', ['--help'], { encoding: 'utf8', timeout: 5_000 });
    setprivChecked = probe.status === 0 && probe.stdout.includes('--pdeathsig');
  }
  return setprivChecked;
}

/**
 * Spawns `command` so that it receives `deathSignal` when this process dies. Pass
 * `detached: true` to give it its own session, so that a Ctrl-C in the terminal reaches only the
 * launcher, which then stops its children in order.
 */
export function spawnTied(
  command: string,
  args: readonly string[],
  options: SpawnOptions & { deathSignal: NodeJS.Signals },
): ChildProcess {
  const { deathSignal, ...spawnOptions } = options;
  if (!canTieToParent()) return spawn(command, args, spawnOptions);
  // setpriv sets the death signal after any uid change made by spawn's uid/gid options, so the
  // signal survives (a credential change would otherwise clear it).
  return spawn('setpriv', [`--pdeathsig=${deathSignal}`, '--', command, ...args], spawnOptions);
}

/** True while `pid` names a live (non-zombie) process. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie answers signal 0; in a container without an init reaper it can stay one forever.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** The command line of `pid` with arguments joined by spaces, or null when unreadable. */
export function commandLine(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    return null;
  }
}

/** Resolves true once `child` has exited, or false after `ms`. */
export function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

/** Resolves true once `pid` (not necessarily our child) is gone, or false after `ms`. */
export async function waitForPidExit(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (isAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await sleep(100);
  }
  return true;
}

/** One step of a stop sequence: send `signal`, then wait up to `waitMs` for the exit. */
export interface StopStep {
  signal: NodeJS.Signals;
  waitMs: number;
}

/**
 * Sends each step's signal in turn until `child` exits; SIGKILL is always the implicit last step.
 * Resolves true when the child is gone.
 */
export async function stopChild(child: ChildProcess, steps: readonly StopStep[]): Promise<boolean> {
  for (const step of [...steps, { signal: 'SIGKILL' as const, waitMs: 5_000 }]) {
    if (child.exitCode !== null || child.signalCode !== null) return true;
    try {
      child.kill(step.signal);
    } catch {
      // Already gone between the check and the kill.
    }
    if (await waitForExit(child, step.waitMs)) return true;
  }
  return false;
}

/** The same escalation as `stopChild` for a process known only by pid (a leftover of a killed run). */
export async function stopPid(pid: number, steps: readonly StopStep[]): Promise<boolean> {
  for (const step of [...steps, { signal: 'SIGKILL' as const, waitMs: 5_000 }]) {
    if (!isAlive(pid)) return true;
    try {
      process.kill(pid, step.signal);
    } catch {
      return true;
    }
    if (await waitForPidExit(pid, step.waitMs)) return true;
  }
  return false;
}

/** The last `count` lines of `text`, without trailing blank lines. */
export function lastLines(text: string, count: number): string[] {
  const lines = text.split('\n');
  while (lines.length > 0 && lines[lines.length - 1]?.trim() === '') lines.pop();
  return lines.slice(-count);
}

/** Where Debian's libjemalloc2 and the container image put jemalloc. */
const JEMALLOC_PATHS = [
  '/usr/local/lib/libjemalloc.so.2',
  '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2',
  '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2',
];

/**
 * The environment that runs a Node service on jemalloc, as the container image does (see
 * docs/ARCHITECTURE.md, Performance: memory). glibc's malloc keeps what a catch-up's per-record
 * buffers freed as fragmented heap, 300–400 MiB that never returns to the system; jemalloc hands
 * it back within seconds. Empty when jemalloc is not installed (`make install` installs it) or
 * when the caller chose a preload of its own.
 */
export function serviceAllocatorEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  if (env.LD_PRELOAD !== undefined) return {};
  const library = JEMALLOC_PATHS.find((path) => existsSync(path));
  if (library === undefined) return {};
  // A background thread returns freed pages on time even while the service is idle.
  return { LD_PRELOAD: library, MALLOC_CONF: env.MALLOC_CONF ?? 'background_thread:true' };
}
