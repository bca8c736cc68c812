/**
 * CPU and memory of processes, read from /proc: the bench reports the CPU of the process under
 * test and of the load generator for every run, so a run where the generator (not the target)
 * was the bottleneck is visible.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of /proc's utime/stime (USER_HZ: 100 on every Linux we run on). */
const TICKS_PER_SEC = 100;

/** User + system CPU seconds of `pid`, all threads included; undefined once it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  const stat = readStat(`/proc/${pid}/stat`);
  return stat === undefined ? undefined : stat.cpuSeconds;
}

/** User + system CPU seconds of each thread of this process, by thread id. */
function threadCpuSeconds(): Map<number, number> {
  const threads = new Map<number, number>();
  for (const tid of entriesOf('/proc/self/task')) {
    // A thread that ended between the listing and the read is left out.
    const stat = readStat(`/proc/self/task/${tid}/stat`);
    if (stat !== undefined) threads.set(Number(tid), stat.cpuSeconds);
  }
  return threads;
}

/**
 * User + system CPU seconds of every process whose command name (`comm`) is one of `names`, by
 * pid: the broker's JVM (`java`) and PostgreSQL's processes (`postgres`), whatever their pids.
 */
function commandCpuSeconds(names: ReadonlySet<string>): Map<number, [string, number]> {
  const found = new Map<number, [string, number]>();
  for (const entry of entriesOf('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const stat = readStat(`/proc/${pid}/stat`);
    if (stat !== undefined && names.has(stat.name)) found.set(pid, [stat.name, stat.cpuSeconds]);
  }
  return found;
}

/** A process's or thread's command name and CPU seconds, from its stat file; undefined if gone. */
function readStat(path: string): { name: string; cpuSeconds: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  const close = stat.lastIndexOf(')');
  const fields = stat.slice(close + 2).split(' ');
  // Fields 14 and 15 of stat(5) (utime, stime), counted from the state field (3) here.
  return {
    name: stat.slice(stat.indexOf('(') + 1, close),
    cpuSeconds: (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SEC,
  };
}

/** The names in a /proc directory; none once it is gone. */
function entriesOf(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Resident set size of `pid` in bytes (VmRSS), undefined once it is gone. */
export function rssBytes(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}

/** Busy and total jiffies of the whole machine (all cores), from /proc/stat. */
function machineTicks(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.reduce((sum, v) => sum + v, 0);
  // idle + iowait are not busy.
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { busy: total - idle, total };
}

/** CPU use over an interval, as percent of one core (a 2-core machine tops out at 200). */
export interface CpuUse {
  /** Per watched pid. */
  byPid: Map<number, number>;
  /** This process (the bench harness, which is the load generator when autocannon runs). */
  self: number;
  /**
   * Its busiest thread: a generator thread (autocannon's, or one of its workers) near 100 % is
   * the limit of the run, whatever the process total.
   */
  selfBusiestThread: number;
  /** Every process on the machine: broker, Postgres, services, generator. */
  machine: number;
  /** The processes of each command name asked for (`commands`), all together. */
  byCommand: Map<string, number>;
}

/** How often processes are looked up by command name (a walk of /proc; pids are cheaper). */
const COMMAND_SAMPLE_MS = 500;

/**
 * Starts measuring; `stop()` returns the CPU used since, in percent of one core. `commands`:
 * command names whose processes are measured together (a process started meanwhile counts from
 * its start; one that ended counts up to its last sample).
 */
export function startCpuMeter(
  pids: readonly number[],
  commands: readonly string[] = [],
): { stop(): CpuUse } {
  const startedAt = performance.now();
  const names = new Set(commands);
  const commandsBefore = names.size === 0 ? new Map() : commandCpuSeconds(names);
  const commandsLatest = new Map(commandsBefore);
  const sampleCommands = (): void => {
    for (const [pid, sample] of commandCpuSeconds(names)) commandsLatest.set(pid, sample);
  };
  const commandTimer =
    names.size === 0 ? undefined : setInterval(sampleCommands, COMMAND_SAMPLE_MS);
  commandTimer?.unref();
  const before = new Map(pids.map((pid) => [pid, cpuSeconds(pid) ?? 0]));
  const selfBefore = process.cpuUsage();
  const threadsBefore = threadCpuSeconds();
  // Worker threads end with the run: their last sample is what they used.
  const threadsLatest = new Map(threadsBefore);
  const machineBefore = machineTicks();
  const cores = navigatorCores();
  // A process that exits before stop() takes its /proc entry with it: keep the last sample.
  const latest = new Map(before);
  const sample = (): void => {
    for (const pid of pids) {
      const now = cpuSeconds(pid);
      if (now !== undefined) latest.set(pid, now);
    }
    for (const [tid, seconds] of threadCpuSeconds()) threadsLatest.set(tid, seconds);
  };
  const timer = setInterval(sample, 100);
  timer.unref();
  return {
    stop(): CpuUse {
      clearInterval(timer);
      sample();
      if (commandTimer !== undefined) {
        clearInterval(commandTimer);
        sampleCommands();
      }
      const wallSec = (performance.now() - startedAt) / 1000;
      const byPid = new Map<number, number>();
      for (const pid of pids) {
        const used = (latest.get(pid) ?? 0) - (before.get(pid) ?? 0);
        byPid.set(pid, (used / wallSec) * 100);
      }
      const self = process.cpuUsage(selfBefore);
      let busiest = 0;
      for (const [tid, seconds] of threadsLatest) {
        busiest = Math.max(busiest, seconds - (threadsBefore.get(tid) ?? 0));
      }
      const byCommand = new Map<string, number>(commands.map((name) => [name, 0]));
      for (const [pid, [name, seconds]] of commandsLatest) {
        const used = seconds - (commandsBefore.get(pid)?.[1] ?? 0);
        byCommand.set(name, (byCommand.get(name) ?? 0) + (used / wallSec) * 100);
      }
      const machineAfter = machineTicks();
      const totalTicks = machineAfter.total - machineBefore.total;
      return {
        byPid,
        self: ((self.user + self.system) / 1e6 / wallSec) * 100,
        selfBusiestThread: (busiest / wallSec) * 100,
        machine:
          totalTicks === 0
            ? 0
            : ((machineAfter.busy - machineBefore.busy) / totalTicks) * 100 * cores,
        byCommand,
      };
    },
  };
}

function navigatorCores(): number {
  const cpus = readFileSync('/proc/stat', 'utf8').match(/^cpu\d+ /gm);
  return cpus?.length ?? 1;
}
