import { type ChildProcess, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, writeSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PipelineError } from '../../shared/errors.js';
import { sleep } from '../../shared/lifecycle.js';
import {
  commandLine,
  isAlive,
  lastLines,
  type StopStep,
  spawnTied,
  stopChild,
  stopPid,
} from './child-process.js';
import { freePort, LOOPBACK } from './free-port.js';

const execFileAsync = promisify(execFile);

export interface KafkaBrokerOptions {
  /** Broker state: server.properties, the log directory, the pid file. Kept between runs. */
  dataDir: string;
  /** The broker's stdout and stderr; overwritten on each start. */
  logFile: string;
  /** The jars resolved by deploy/local/install.sh (.local/kafka/libs). */
  libsDir: string;
  /** deploy/kafka/log4j2.yaml. */
  log4jConfig: string;
  /** Client listener port; a free port when omitted. */
  port?: number;
  /** KRaft controller listener port; a free port when omitted. */
  controllerPort?: number;
  /** Maximum Java heap, e.g. "768m". */
  heap?: string;
  /** Java executable; `java` from PATH when omitted. */
  javaBin?: string;
  readyTimeoutMs?: number;
  onProgress?: (line: string) => void;
}

export interface KafkaBrokerInfo {
  /** Bootstrap servers for clients, e.g. `127.0.0.1:9092`. */
  brokers: string;
  /** The version the broker printed at start, e.g. `4.1.1`. */
  version: string;
}

const INSTALL_HINT = 'run `make install` (or bash deploy/local/install.sh)';
const STARTED_LINE = 'Kafka Server started';
const VERSION_LINE = /Kafka version: (\S+)/;
const GRACEFUL_STOP: readonly StopStep[] = [{ signal: 'SIGTERM', waitMs: 20_000 }];

/**
 * A single-node Apache Kafka broker in KRaft combined mode (broker and controller in one JVM), run
 * from the jars in .local/kafka/libs. Storage is formatted once and kept; the JVM is a child of
 * this process, tied to it (see child-process.ts) so that it cannot outlive it.
 */
export class KafkaBroker {
  private child: ChildProcess | undefined;
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: KafkaBrokerOptions) {}

  /** Directory holding the partitions and meta.properties. */
  get logDir(): string {
    return join(this.options.dataDir, 'log');
  }

  private get pidFile(): string {
    return join(this.options.dataDir, 'broker.pid');
  }

  /** Formats storage if needed, starts the JVM and resolves once clients can connect. */
  async start(): Promise<KafkaBrokerInfo> {
    const { dataDir, logFile } = this.options;
    // A broker stopped and started again is a new process: its stop must run again too.
    this.stopping = undefined;
    this.checkInstalled();
    await mkdir(dataDir, { recursive: true });
    await KafkaBroker.stopLeftover(dataDir, (line) => this.progress(line));

    const port = this.options.port ?? (await freePort());
    let controllerPort = this.options.controllerPort ?? (await freePort());
    while (controllerPort === port) controllerPort = await freePort();
    const propertiesFile = join(dataDir, 'server.properties');
    await writeFile(propertiesFile, serverProperties(this.logDir, port, controllerPort));

    const logFd = openSync(logFile, 'w');
    try {
      if (!existsSync(join(this.logDir, 'meta.properties'))) {
        this.progress(`formatting new storage in ${this.logDir}`);
        await this.format(propertiesFile, logFd);
      }
      this.child = spawnTied(this.java(), [...this.jvmArgs(), 'kafka.Kafka', propertiesFile], {
        cwd: dataDir,
        stdio: ['ignore', logFd, logFd],
        detached: true,
        deathSignal: 'SIGTERM',
      });
    } finally {
      closeSync(logFd);
    }
    const child = this.child;
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    if (child.pid !== undefined) await writeFile(this.pidFile, `${child.pid}\n`);

    try {
      const version = await this.waitUntilReady(child, port, spawnError);
      return { brokers: `${LOOPBACK}:${port}`, version };
    } catch (err) {
      await this.kill();
      throw err;
    }
  }

  /** Stops the broker: SIGTERM (controlled shutdown), up to 20 s, then SIGKILL. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.stopWith(GRACEFUL_STOP);
    return this.stopping;
  }

  /** Kills the broker now (SIGKILL); for a second Ctrl-C or a failed start. */
  kill(): Promise<void> {
    return this.stopWith([]);
  }

  /**
   * Stops a broker left running on `dataDir` by a launcher that was killed before it could stop
   * it, so that its ports and files are free. Checks the command line so that a reused pid is
   * never signalled.
   */
  static async stopLeftover(dataDir: string, say?: (line: string) => void): Promise<void> {
    const pidFile = join(dataDir, 'broker.pid');
    let pid: number;
    try {
      pid = Number.parseInt(await readFile(pidFile, 'utf8'), 10);
    } catch {
      return;
    }
    const cmd = Number.isSafeInteger(pid) && isAlive(pid) ? commandLine(pid) : null;
    if (cmd?.includes('kafka.Kafka') && cmd.includes(dataDir)) {
      say?.(`stopping broker pid ${pid}, left running on ${dataDir} by an earlier run`);
      await stopPid(pid, GRACEFUL_STOP);
    }
    await rm(pidFile, { force: true });
  }

  private async stopWith(steps: readonly StopStep[]): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    const gone = await stopChild(child, steps);
    if (gone) await rm(this.pidFile, { force: true });
    else this.progress(`kafka broker pid ${child.pid} did not exit even after SIGKILL`);
  }

  private checkInstalled(): void {
    const { libsDir, log4jConfig } = this.options;
    const jars = existsSync(libsDir) ? readdirSync(libsDir) : [];
    if (!jars.some((name) => /^kafka_2\.\d+-.*\.jar$/.test(name))) {
      throw new PipelineError(
        'broker_unavailable',
        `the Kafka broker jars are missing from ${libsDir}: ${INSTALL_HINT}`,
      );
    }
    if (!existsSync(log4jConfig)) {
      throw new PipelineError('broker_unavailable', `${log4jConfig} is missing`);
    }
  }

  private java(): string {
    return this.options.javaBin ?? 'java';
  }

  private classPathArgs(): string[] {
    return [
      '-cp',
      `${this.options.libsDir}/*`,
      `-Dlog4j2.configurationFile=${this.options.log4jConfig}`,
      '-Djava.awt.headless=true',
    ];
  }

  /** JVM flags sized for a small shared machine (2 cores): a modest heap, few GC/JIT threads. */
  private jvmArgs(): string[] {
    const heap = this.options.heap ?? '768m';
    const initial = heapMegabytes(heap) < 256 ? heap : '256m';
    return [
      `-Xms${initial}`,
      `-Xmx${heap}`,
      '-XX:+UseG1GC',
      '-XX:MaxGCPauseMillis=20',
      '-XX:ParallelGCThreads=2',
      '-XX:ConcGCThreads=1',
      '-XX:CICompilerCount=2',
      ...this.classPathArgs(),
    ];
  }

  private async format(propertiesFile: string, logFd: number): Promise<void> {
    const args = [
      '-Xmx256m',
      '-XX:+UseSerialGC',
      '-XX:TieredStopAtLevel=1',
      ...this.classPathArgs(),
      'kafka.tools.StorageTool',
      'format',
      '--ignore-formatted',
      // One argument with `=`: a base64url id can start with '-', which the tool's parser would
      // take for an option (1 start in 64 failed with "argument --cluster-id: expected one").
      `--cluster-id=${newClusterId()}`,
      '-c',
      propertiesFile,
    ];
    try {
      const { stdout, stderr } = await execFileAsync(this.java(), args, {
        cwd: this.options.dataDir,
        timeout: 90_000,
      });
      appendToFd(logFd, stdout + stderr);
    } catch (err) {
      const detail = err as { stdout?: string; stderr?: string; code?: unknown };
      const output = `${detail.stdout ?? ''}${detail.stderr ?? ''}`;
      appendToFd(logFd, output);
      const hint = detail.code === 'ENOENT' ? `: java was not found; ${INSTALL_HINT}` : '';
      throw new PipelineError(
        'broker_unavailable',
        `formatting Kafka storage in ${this.logDir} failed${hint}\n${lastLines(output, 20).join('\n')}`,
        { cause: err },
      );
    }
  }

  private async waitUntilReady(
    child: ChildProcess,
    port: number,
    spawnError: Promise<Error>,
  ): Promise<string> {
    const { logFile } = this.options;
    const timeoutMs = this.options.readyTimeoutMs ?? 90_000;
    const deadline = Date.now() + timeoutMs;
    let failure: Error | undefined;
    void spawnError.then((err) => {
      failure = err;
    });
    while (Date.now() < deadline) {
      await sleep(250);
      const log = await readFile(logFile, 'utf8').catch(() => '');
      if (failure !== undefined) {
        const hint =
          (failure as NodeJS.ErrnoException).code === 'ENOENT' ? `; ${INSTALL_HINT}` : '';
        throw new PipelineError(
          'broker_unavailable',
          `could not start java: ${failure.message}${hint}`,
          { cause: failure },
        );
      }
      if (child.exitCode !== null || child.signalCode !== null) {
        const how = child.exitCode !== null ? `code ${child.exitCode}` : `${child.signalCode}`;
        throw new PipelineError(
          'broker_unavailable',
          `the Kafka broker exited with ${how} while starting. Last lines of ${logFile}:\n${lastLines(log, 20).join('\n')}`,
        );
      }
      if (log.includes(STARTED_LINE) && (await canConnect(port))) {
        return VERSION_LINE.exec(log)?.[1] ?? 'unknown';
      }
    }
    throw new PipelineError(
      'broker_timeout',
      `the Kafka broker was not ready within ${timeoutMs / 1000} s; see ${logFile}`,
    );
  }

  private progress(line: string): void {
    this.options.onProgress?.(line);
  }
}

function serverProperties(logDir: string, port: number, controllerPort: number): string {
  const settings: Record<string, string | number | boolean> = {
    'process.roles': 'broker,controller',
    'node.id': 1,
    'controller.quorum.voters': `1@${LOOPBACK}:${controllerPort}`,
    listeners: `PLAINTEXT://${LOOPBACK}:${port},CONTROLLER://${LOOPBACK}:${controllerPort}`,
    'advertised.listeners': `PLAINTEXT://${LOOPBACK}:${port}`,
    'controller.listener.names': 'CONTROLLER',
    'listener.security.protocol.map': 'CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
    'inter.broker.listener.name': 'PLAINTEXT',
    'log.dirs': logDir,
    'num.partitions': 3,
    'auto.create.topics.enable': true,
    'offsets.topic.replication.factor': 1,
    'offsets.topic.num.partitions': 3,
    'transaction.state.log.replication.factor': 1,
    'transaction.state.log.min.isr': 1,
    'transaction.state.log.num.partitions': 1,
    // A single member joins at once; the default 3 s delay would slow every test's consumer.
    'group.initial.rebalance.delay.ms': 0,
    // broker.session.timeout.ms stays at its 9-s default. A longer lease keeps a frozen broker
    // (its controller is the same process) from fencing itself on resumption, but a broker
    // restarted after a SIGKILL cannot register until its old lease runs out: with 120 s, the
    // restarted broker gave up after 60 s (docs/RELIABILITY.md).
  };
  const lines = Object.entries(settings).map(([key, value]) => `${key}=${value}`);
  return `# Written by deploy/local/kafka-broker.ts on each start; edits are overwritten.\n${lines.join('\n')}\n`;
}

/** A random KRaft cluster id: 16 bytes, base64url without padding (22 characters). */
function newClusterId(): string {
  return randomBytes(16).toString('base64url');
}

function heapMegabytes(heap: string): number {
  const match = /^(\d+)([mMgG])$/.exec(heap);
  if (match === null) return Number.NaN;
  const amount = Number(match[1]);
  return match[2]?.toLowerCase() === 'g' ? amount * 1024 : amount;
}

function appendToFd(fd: number, text: string): void {
  if (text.length > 0) writeSync(fd, text);
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: LOOPBACK });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
