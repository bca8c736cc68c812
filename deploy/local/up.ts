/**
 * `make up`: the whole pipeline on one machine. Starts a Kafka broker and Postgres (data kept in
 * .local/dev), then the ingest, aggregator and query services, streams their logs in readable form and
 * stops everything, in order, on Ctrl-C.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { ConfigReader } from '../../shared/config-reader.js';
import { sleep } from '../../shared/lifecycle.js';
import {
  commandLine,
  isAlive,
  serviceAllocatorEnv,
  spawnTied,
  stopChild,
} from './child-process.js';
import { isPortFree } from './free-port.js';
import { formatLogLine } from './log-format.js';
import { type LocalStack, REPO_ROOT, startLocalStack } from './stack.js';

const DEV_DIR = join(REPO_ROOT, '.local', 'dev');
const LOCK_FILE = join(DEV_DIR, 'up.pid');
const READY_TIMEOUT_MS = 90_000;
const PROGRESS_EVERY_MS = 5_000;
/** At least this long for a service to stop after SIGTERM before it is killed. */
const MIN_SERVICE_GRACE_MS = 15_000;
/** Beyond the services' own shutdown deadline, so that their deadline fires first. */
const SERVICE_GRACE_MARGIN_MS = 5_000;
const TAIL_LINES = 20;
const SERVICE_WIDTH = 'aggregator'.length;

const color = process.stdout.isTTY === true;
const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

interface UpConfig {
  ingestPort: number;
  aggregatorPort: number;
  queryPort: number;
  /** How long a service may take to stop after SIGTERM before it is killed. */
  serviceGraceMs: number;
}

function readUpConfig(env: NodeJS.ProcessEnv): UpConfig {
  const reader = new ConfigReader(env);
  const config = {
    ingestPort: reader.port('INGEST_PORT', 8080),
    aggregatorPort: reader.port('AGGREGATOR_PORT', 8081),
    queryPort: reader.port('QUERY_PORT', 8082),
    // The services' own shutdown deadline (same variable, same default as their config.ts).
    serviceGraceMs: Math.max(
      MIN_SERVICE_GRACE_MS,
      reader.secondsAsMs('SHUTDOWN_GRACE_SEC', 25, { min: 1, max: 600 }) + SERVICE_GRACE_MARGIN_MS,
    ),
  };
  const ports = [config.ingestPort, config.aggregatorPort, config.queryPort];
  if (new Set(ports).size !== ports.length) {
    reader.problem(`INGEST_PORT, AGGREGATOR_PORT and QUERY_PORT must differ: ${ports.join(', ')}`);
  }
  reader.finish();
  return config;
}

/** One service process: its logs go to our stdout, formatted; the last lines are kept. */
class ServiceProcess {
  readonly tail: string[] = [];
  private child: ChildProcess | undefined;

  constructor(
    readonly name: string,
    readonly port: number,
    /** Relative to the repository root, e.g. `dist/ingest/main.js`. */
    readonly script: string,
  ) {}

  get readyUrl(): string {
    return `http://127.0.0.1:${this.port}/readyz`;
  }

  start(env: NodeJS.ProcessEnv, onExit: (service: ServiceProcess, how: string) => void): void {
    // Own session: a terminal Ctrl-C reaches only `make up`, which stops the services itself, so
    // a service never sees the double signal that means "force exit" to it.
    const child = spawnTied(process.execPath, [join(REPO_ROOT, this.script)], {
      cwd: REPO_ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      deathSignal: 'SIGTERM',
    });
    this.child = child;
    for (const stream of [child.stdout, child.stderr]) {
      if (stream === null) continue;
      createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) =>
        this.print(line),
      );
    }
    child.once('error', (err) => onExit(this, `could not be started: ${err.message}`));
    // 'close' comes after the output streams end, so the tail is complete.
    child.once('close', (code, signal) =>
      onExit(this, code !== null ? `exited with code ${code}` : `was killed by ${signal}`),
    );
  }

  get running(): boolean {
    return (
      this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null
    );
  }

  /** SIGTERM (the service drains and commits), up to `graceMs`, then SIGKILL. */
  async stop(graceMs: number): Promise<void> {
    if (this.child === undefined) return;
    await stopChild(this.child, [{ signal: 'SIGTERM', waitMs: graceMs }]);
  }

  async kill(): Promise<void> {
    if (this.child === undefined) return;
    await stopChild(this.child, []);
  }

  /** Why /readyz does not answer 200 yet, or null when it does. */
  async notReadyReason(): Promise<string | null> {
    try {
      const response = await fetch(this.readyUrl, { signal: AbortSignal.timeout(2_000) });
      await response.body?.cancel();
      return response.status === 200 ? null : `/readyz answers ${response.status}`;
    } catch {
      return 'not listening yet';
    }
  }

  private print(line: string): void {
    const formatted = formatLogLine(line, {
      service: this.name,
      serviceWidth: SERVICE_WIDTH,
      color,
    });
    this.tail.push(formatted);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
    say(formatted);
  }
}

/**
 * Takes .local/dev/up.pid, or explains who holds it. A lock whose pid is dead, or now belongs to
 * a program that is not `make up`, is stale and replaced.
 */
function acquireLock(): boolean {
  mkdirSync(DEV_DIR, { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(LOCK_FILE, `${process.pid}\n`, { flag: 'wx' });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number.parseInt(readFileSync(LOCK_FILE, 'utf8'), 10);
    const holder = Number.isSafeInteger(pid) && pid > 0 && isAlive(pid) ? commandLine(pid) : null;
    if (holder?.includes('up.js')) {
      say(
        `make up is already running (pid ${pid}). Stop it with Ctrl-C in its terminal, or: kill ${pid}`,
      );
      return false;
    }
    rmSync(LOCK_FILE, { force: true });
  }
  say(`could not take the lock ${LOCK_FILE}; another make up is starting right now`);
  return false;
}

function releaseLock(): void {
  try {
    if (Number.parseInt(readFileSync(LOCK_FILE, 'utf8'), 10) === process.pid) rmSync(LOCK_FILE);
  } catch {
    // Already gone.
  }
}

function banner(stack: LocalStack, config: UpConfig): string {
  const ingest = `http://localhost:${config.ingestPort}`;
  const aggregator = `http://localhost:${config.aggregatorPort}`;
  const query = `http://localhost:${config.queryPort}`;
  const psql = `psql ${stack.databaseUrl}`;
  const logs = relative(process.cwd(), stack.logDir) || stack.logDir;
  const kafka = stack.kafkaVersion === undefined ? '' : ` (Kafka ${stack.kafkaVersion})`;
  const rule = '-'.repeat(72);
  return [
    rule,
    'The activity pipeline is running.',
    `  ingest              ${ingest}  (POST /activity)`,
    `  ingest metrics      ${ingest}/metrics`,
    `  aggregator metrics  ${aggregator}/metrics`,
    `  dashboard, query    ${query}/  (GET /v1/summary?range=today, docs/QUERY-API.md)`,
    `  kafka               ${stack.kafkaBrokers}${kafka}`,
    `  postgres            ${psql}`,
    `  broker/db logs      ${logs}/kafka.log, ${logs}/postgres.log`,
    'Send an event:',
    `  curl -XPOST localhost:${config.ingestPort}/activity -H 'content-type: application/json' -d '{"user_id":"u1","activity_type":"page_view"}'`,
    'See the totals (after the window closes, about 70 s):',
    `  curl '${query}/v1/summary?range=today'`,
    `  ${psql} -c 'SELECT * FROM user_activity_window_totals ORDER BY window_start DESC LIMIT 5;'`,
    'Ctrl-C to stop.',
    rule,
  ].join('\n');
}

async function main(): Promise<void> {
  let config: UpConfig;
  try {
    config = readUpConfig(process.env);
  } catch (err) {
    say((err as Error).message);
    process.exit(1);
  }
  if (!acquireLock()) process.exit(1);

  let stack: LocalStack | undefined;
  let stackStarting = false;
  const services = [
    new ServiceProcess('ingest', config.ingestPort, 'dist/ingest/main.js'),
    new ServiceProcess('aggregator', config.aggregatorPort, 'dist/aggregator/main.js'),
    new ServiceProcess('query', config.queryPort, 'dist/query/main.js'),
  ];
  let stopping: Promise<never> | undefined;
  let forced = false;

  /** Stops everything in order: services first (they drain into Kafka/Postgres), then the stack. */
  const shutdown = (code: number): Promise<never> => {
    stopping ??= (async () => {
      const running = services.filter((service) => service.running);
      if (running.length > 0) {
        const names = running.map((service) => service.name).join(' and ');
        say(`[up] stopping ${names} (up to ${config.serviceGraceMs / 1000} s)`);
        await Promise.all(running.map((service) => service.stop(config.serviceGraceMs)));
      }
      if (stack !== undefined && !forced) {
        say('[up] stopping the broker and Postgres');
        await stack.stop();
      }
      // After a second signal the forced path owns the exit.
      if (forced) return new Promise<never>(() => {});
      releaseLock();
      say('[up] stopped');
      process.exit(code);
    })();
    return stopping;
  };

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      say(`\n[up] ${signal}: shutting down (press Ctrl-C again to kill everything now)`);
      // A half-started broker or Postgres cannot be stopped yet: startup checks `signals` when
      // it is done. Until then a second signal exits, and the tied children follow us.
      if (!stackStarting) void shutdown(0);
      return;
    }
    if (forced) return;
    forced = true;
    say(`[up] ${signal} again: killing everything now`);
    void Promise.all([
      ...services.map((service) => service.kill()),
      stack?.stop({ force: true }),
    ]).finally(() => {
      releaseLock();
      say('[up] killed');
      process.exit(1);
    });
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);

  const missing = services.filter((service) => !existsSync(join(REPO_ROOT, service.script)));
  if (missing.length > 0) {
    const scripts = missing.map((service) => service.script).join(' and ');
    say(`[up] ${scripts} not found: run \`make build\` (make up does it for you)`);
    return shutdown(1);
  }
  for (const service of services) {
    if (!(await isPortFree(service.port))) {
      const envName = `${service.name.toUpperCase()}_PORT`;
      say(
        `[up] port ${service.port} (${envName}, for ${service.name}) is taken by another program. ` +
          `Stop that program, or choose another port: ${envName}=${service.port + 1000} make up`,
      );
      return shutdown(1);
    }
  }

  stackStarting = true;
  try {
    stack = await startLocalStack({ mode: 'dev', log: say });
  } catch (err) {
    say(`[up] ${(err as Error).message}`);
    return shutdown(1);
  } finally {
    stackStarting = false;
  }
  if (signals > 0) return shutdown(0);

  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...serviceAllocatorEnv(),
    // Every service's broker: the query service's too, for the consumer lag of /v1/realtime.
    KAFKA_BROKERS: stack.kafkaBrokers,
    DATABASE_URL: stack.databaseUrl,
    INGEST_PORT: String(config.ingestPort),
    AGGREGATOR_PORT: String(config.aggregatorPort),
    QUERY_PORT: String(config.queryPort),
  };
  const onServiceExit = (service: ServiceProcess, how: string): void => {
    if (stopping !== undefined) return;
    say(`[up] ${service.name} ${how}; its last log lines:`);
    for (const line of service.tail) say(`  ${line}`);
    void shutdown(1);
  };
  for (const service of services) service.start(env, onServiceExit);

  const started = Date.now();
  let lastProgress = started;
  for (;;) {
    const reasons = await Promise.all(services.map((service) => service.notReadyReason()));
    if (stopping !== undefined) return;
    const waiting = services
      .map((service, i) => `${service.name} (${reasons[i]})`)
      .filter((_, i) => reasons[i] !== null);
    if (waiting.length === 0) break;
    if (Date.now() - started > READY_TIMEOUT_MS) {
      say(`[up] not ready within ${READY_TIMEOUT_MS / 1000} s: ${waiting.join(', ')}`);
      return shutdown(1);
    }
    if (Date.now() - lastProgress >= PROGRESS_EVERY_MS) {
      lastProgress = Date.now();
      const elapsed = Math.round((lastProgress - started) / 1000);
      say(`[up] waiting for ${waiting.join(', ')} (${elapsed} s)`);
    }
    await sleep(500);
  }
  say(banner(stack, config));
}

await main();
