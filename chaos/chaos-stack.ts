/**
 * The broker and PostgreSQL of a chaos run: private to it (never the shared ones of `make test`
 * or `make up`, since the scenarios stop, kill and freeze them), on ports fixed for the whole run
 * so that a restarted server comes back on the same address with the same data.
 */
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from '../deploy/local/free-port.js';
import { KafkaBroker } from '../deploy/local/kafka-broker.js';
import { PostgresCluster } from '../deploy/local/postgres-cluster.js';
import { REPO_ROOT } from '../deploy/local/stack.js';
import type { StackAddresses } from '../shared/testing.js';

export class ChaosStack implements StackAddresses {
  private broker: KafkaBroker | undefined;
  private cluster: PostgresCluster | undefined;
  private brokerStarts = 0;
  private frozen: { broker: boolean } = { broker: false };
  kafkaBrokers = '';
  databaseUrl = '';

  private constructor(
    readonly dir: string,
    private readonly kafkaPort: number,
    private readonly controllerPort: number,
    private readonly postgresPort: number,
  ) {}

  /** Starts a fresh broker and PostgreSQL under `.local/<name>`. */
  static async start(name: string): Promise<ChaosStack> {
    const dir = join(REPO_ROOT, '.local', name);
    await rm(dir, { recursive: true, force: true });
    const kafkaPort = await freePort();
    let controllerPort = await freePort();
    while (controllerPort === kafkaPort) controllerPort = await freePort();
    let postgresPort = await freePort();
    while (postgresPort === kafkaPort || postgresPort === controllerPort) {
      postgresPort = await freePort();
    }
    const stack = new ChaosStack(dir, kafkaPort, controllerPort, postgresPort);
    try {
      await Promise.all([stack.startBroker(), stack.startPostgres()]);
    } catch (err) {
      await stack.stop();
      throw err;
    }
    return stack;
  }

  /** Starts the broker (again) on the same port and data. */
  async startBroker(): Promise<void> {
    this.brokerStarts++;
    const broker = new KafkaBroker({
      dataDir: join(this.dir, 'kafka'),
      logFile: join(this.dir, `kafka-${this.brokerStarts}.log`),
      libsDir: join(REPO_ROOT, '.local', 'kafka', 'libs'),
      log4jConfig: join(REPO_ROOT, 'deploy', 'kafka', 'log4j2.yaml'),
      port: this.kafkaPort,
      controllerPort: this.controllerPort,
      heap: '512m',
      readyTimeoutMs: 90_000,
    });
    this.broker = broker;
    this.kafkaBrokers = (await broker.start()).brokers;
  }

  /** Starts PostgreSQL (again) on the same port and data; a new object each time (stop() runs once). */
  async startPostgres(): Promise<void> {
    const cluster = new PostgresCluster({
      dataDir: join(this.dir, 'pg'),
      logFile: join(this.dir, 'postgres.log'),
      port: this.postgresPort,
      readyTimeoutMs: 60_000,
    });
    this.cluster = cluster;
    this.databaseUrl = (await cluster.start()).databaseUrl;
  }

  /** SIGKILL of the broker JVM. */
  async killBroker(): Promise<void> {
    this.freezeBroker(false);
    await this.broker?.kill();
  }

  /** SIGSTOP / SIGCONT of the broker JVM: it holds its connections and answers nothing. */
  freezeBroker(frozen: boolean): void {
    const pid = this.pidFrom(join(this.dir, 'kafka', 'broker.pid'));
    if (pid === undefined || this.frozen.broker === frozen) return;
    process.kill(pid, frozen ? 'SIGSTOP' : 'SIGCONT');
    this.frozen.broker = frozen;
  }

  /** PostgreSQL's immediate shutdown (SIGQUIT to the postmaster): a crash, recovered on start. */
  async crashPostgres(): Promise<void> {
    await this.cluster?.kill();
  }

  /**
   * Resumes a frozen broker: a stopped process keeps any signal that would end it (SIGTERM when
   * the run exits at once on a second Ctrl-C) pending until then.
   */
  thaw(): void {
    try {
      this.freezeBroker(false);
    } catch {
      // Already gone.
    }
  }

  /** Stops both, whatever state they are in. */
  async stop(): Promise<void> {
    this.thaw();
    await Promise.allSettled([this.broker?.kill(), this.cluster?.stop()]);
  }

  /** Removes the data (the logs of a failed run are worth keeping: call only on success). */
  async remove(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }

  private pidFrom(file: string): number | undefined {
    try {
      const pid = Number.parseInt(readFileSync(file, 'utf8'), 10);
      return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }
}
