import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigReader } from '../../shared/config-reader.js';
import { PipelineError } from '../../shared/errors.js';
import { isAlive } from './child-process.js';
import { freePort, isPortFree } from './free-port.js';
import { KafkaBroker } from './kafka-broker.js';
import { PostgresCluster } from './postgres-cluster.js';

/** The repository root: the nearest directory above this module holding package.json. */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

/**
 * `dev`: `make up`; data in .local/dev, kept across runs, stable ports when free.
 * `test`: `make test`; fresh data in .local/test/run-<pid> for each run (so that concurrent runs
 *   never share a broker or a data directory), free ports, removed when the run stops.
 */
export type StackMode = 'dev' | 'test';

/** What the services and tests need to reach the broker and the database. */
export interface LocalStack {
  kafkaBrokers: string;
  databaseUrl: string;
  /** Set when this stack started the broker. */
  kafkaVersion?: string;
  /** Set when this stack started Postgres. */
  postgresPort?: number;
  /** Where the broker and Postgres logs are written. */
  logDir: string;
  /**
   * Stops what this stack started, broker and Postgres in parallel, each with its own deadline.
   * `force` skips the graceful steps (a second Ctrl-C). Safe to call more than once.
   */
  stop(options?: { force?: boolean }): Promise<void>;
}

export interface StackOptions {
  mode: StackMode;
  /** Receives one human-readable progress line at a time. */
  log: (line: string) => void;
  env?: NodeJS.ProcessEnv;
}

/** The local stack's environment, read and validated once. */
interface StackConfig {
  /** External broker: start none. */
  kafkaBrokers: string | undefined;
  /** External database: start none. */
  databaseUrl: string | undefined;
  /** 0 = choose (dev: 9092 if free). */
  kafkaPort: number;
  /** 0 = choose (dev: 55432 if free). */
  postgresPort: number;
  kafkaHeap: string;
}

const DEV_KAFKA_PORT = 9092;
const DEV_POSTGRES_PORT = 55432;

function readStackConfig(env: NodeJS.ProcessEnv): StackConfig {
  const reader = new ConfigReader(env);
  const config: StackConfig = {
    kafkaBrokers: reader.optionalString('KAFKA_BROKERS'),
    databaseUrl: reader.optionalString('DATABASE_URL'),
    kafkaPort: reader.int('LOCAL_KAFKA_PORT', 0, { min: 0, max: 65535 }),
    postgresPort: reader.int('LOCAL_PG_PORT', 0, { min: 0, max: 65535 }),
    kafkaHeap: reader.string('KAFKA_HEAP', '768m'),
  };
  if (!/^\d+[mMgG]$/.test(config.kafkaHeap)) {
    reader.problem(
      `KAFKA_HEAP=${JSON.stringify(config.kafkaHeap)}: expected a size like 768m or 1g`,
    );
  }
  reader.finish();
  return config;
}

/**
 * Starts a Kafka broker and a Postgres cluster for local use, in parallel, unless KAFKA_BROKERS or
 * DATABASE_URL point at ones that already run. On failure everything started is stopped again.
 */
export async function startLocalStack(options: StackOptions): Promise<LocalStack> {
  const { mode, log } = options;
  const config = readStackConfig(options.env ?? process.env);
  if (mode === 'test') await removeAbandonedTestRuns(log);
  const baseDir =
    mode === 'test'
      ? join(REPO_ROOT, '.local', 'test', `run-${process.pid}`)
      : join(REPO_ROOT, '.local', mode);
  const kafkaDir = join(baseDir, 'kafka');
  const pgDir = join(baseDir, 'pg');
  const kafkaLog = join(baseDir, 'kafka.log');
  const pgLog = join(baseDir, 'postgres.log');
  const say = (line: string): void => log(`[stack] ${line}`);
  const shown = (path: string): string => relative(process.cwd(), path) || path;

  await mkdir(baseDir, { recursive: true });
  // A launcher killed before it could stop its broker or postmaster may have left them running on
  // these directories (see child-process.ts for when that can happen): stop them first, so that
  // their ports count as free again and test mode can wipe the directories.
  await Promise.all([
    config.kafkaBrokers === undefined
      ? KafkaBroker.stopLeftover(kafkaDir, (line) => say(`kafka: ${line}`))
      : undefined,
    config.databaseUrl === undefined
      ? PostgresCluster.stopLeftover(pgDir, (line) => say(`postgres: ${line}`))
      : undefined,
  ]);
  if (mode === 'test') {
    await Promise.all([
      rm(kafkaDir, { recursive: true, force: true }),
      rm(pgDir, { recursive: true, force: true }),
    ]);
  }

  let broker: KafkaBroker | undefined;
  let cluster: PostgresCluster | undefined;
  let kafkaVersion: string | undefined;
  let postgresPort: number | undefined;

  const startKafka = async (): Promise<string> => {
    if (config.kafkaBrokers !== undefined) {
      say(`kafka: using KAFKA_BROKERS=${config.kafkaBrokers} (no local broker started)`);
      return config.kafkaBrokers;
    }
    const port = await choosePort(mode, 'LOCAL_KAFKA_PORT', config.kafkaPort, DEV_KAFKA_PORT, say);
    const started = Date.now();
    say(`kafka: starting broker (log: ${shown(kafkaLog)})`);
    broker = new KafkaBroker({
      dataDir: kafkaDir,
      logFile: kafkaLog,
      libsDir: join(REPO_ROOT, '.local', 'kafka', 'libs'),
      log4jConfig: join(REPO_ROOT, 'deploy', 'kafka', 'log4j2.yaml'),
      port,
      heap: config.kafkaHeap,
      onProgress: (line) => say(`kafka: ${line}`),
    });
    const info = await broker.start();
    kafkaVersion = info.version;
    say(`kafka ${info.version} ready on ${info.brokers} (${seconds(started)})`);
    return info.brokers;
  };

  const startPostgres = async (): Promise<string> => {
    if (config.databaseUrl !== undefined) {
      say('postgres: using DATABASE_URL (no local Postgres started)');
      return config.databaseUrl;
    }
    const port = await choosePort(
      mode,
      'LOCAL_PG_PORT',
      config.postgresPort,
      DEV_POSTGRES_PORT,
      say,
    );
    const started = Date.now();
    say(`postgres: starting (log: ${shown(pgLog)})`);
    cluster = new PostgresCluster({
      dataDir: pgDir,
      logFile: pgLog,
      port,
      onProgress: (line) => say(`postgres: ${line}`),
    });
    const info = await cluster.start();
    postgresPort = info.port;
    say(`postgres ${info.version} ready on port ${info.port} (${seconds(started)})`);
    return info.databaseUrl;
  };

  const stop = async (stopOptions: { force?: boolean } = {}): Promise<void> => {
    const force = stopOptions.force === true;
    await Promise.allSettled([
      broker === undefined ? undefined : force ? broker.kill() : broker.stop(),
      cluster === undefined ? undefined : force ? cluster.kill() : cluster.stop(),
    ]);
    // Test data goes; the logs stay for a look after a failure, until the next run removes them.
    if (mode === 'test') {
      await Promise.all([
        rm(kafkaDir, { recursive: true, force: true }),
        rm(pgDir, { recursive: true, force: true }),
      ]);
    }
  };

  const [kafka, postgres] = await Promise.allSettled([startKafka(), startPostgres()]);
  if (kafka.status === 'rejected' || postgres.status === 'rejected') {
    await stop();
    const failures = [kafka, postgres]
      .filter((result) => result.status === 'rejected')
      .map((result) => (result.reason instanceof Error ? result.reason.message : result.reason));
    throw new PipelineError(
      kafka.status === 'rejected' ? 'broker_unavailable' : 'database_unavailable',
      `the local stack did not start:\n${failures.join('\n')}`,
      { cause: kafka.status === 'rejected' ? kafka.reason : undefined },
    );
  }

  return {
    kafkaBrokers: kafka.value,
    databaseUrl: postgres.value,
    ...(kafkaVersion === undefined ? {} : { kafkaVersion }),
    ...(postgresPort === undefined ? {} : { postgresPort }),
    logDir: baseDir,
    stop,
  };
}

/**
 * Stops and removes the stacks of test runs whose launcher is gone (killed before it could clean
 * up). Runs of live launchers are left alone: they may be running right now.
 */
async function removeAbandonedTestRuns(log: (line: string) => void): Promise<void> {
  const testDir = join(REPO_ROOT, '.local', 'test');
  const entries = await readdir(testDir).catch(() => [] as string[]);
  for (const entry of entries) {
    const pid = Number(/^run-(\d+)$/.exec(entry)?.[1]);
    if (!Number.isSafeInteger(pid) || isAlive(pid)) continue;
    const dir = join(testDir, entry);
    log(`[stack] removing the abandoned test run ${entry}`);
    await KafkaBroker.stopLeftover(join(dir, 'kafka'), log);
    await PostgresCluster.stopLeftover(join(dir, 'pg'), log);
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The port a local server listens on: the one configured (which must be free), in dev mode the
 * conventional port when free (so that bookmarks and psql history keep working), else any.
 */
async function choosePort(
  mode: StackMode,
  envName: string,
  configured: number,
  devDefault: number,
  say: (line: string) => void,
): Promise<number> {
  if (configured !== 0) {
    if (!(await isPortFree(configured))) {
      throw new PipelineError(
        'config_invalid',
        `${envName}=${configured}, but that port is taken; choose another or unset ${envName}`,
      );
    }
    return configured;
  }
  if (mode === 'dev') {
    if (await isPortFree(devDefault)) return devDefault;
    const port = await freePort();
    say(`port ${devDefault} is taken; using ${port} (set ${envName} to choose)`);
    return port;
  }
  return freePort();
}

function seconds(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(1)} s`;
}

function findRepoRoot(from: string): string {
  for (let dir = resolve(from); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) return resolve(from, '..', '..');
  }
}
