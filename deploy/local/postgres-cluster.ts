import { type ChildProcess, execFile, execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rm } from 'node:fs/promises';
import { dirname, join, parse } from 'node:path';
import pg from 'pg';
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

export interface PostgresClusterOptions {
  /** The cluster's data directory; created by initdb when missing, kept otherwise. */
  dataDir: string;
  /** The server's stderr log; overwritten on each start. */
  logFile: string;
  /** TCP port on 127.0.0.1; a free port when omitted. */
  port?: number;
  /** Database created on start when missing. */
  database?: string;
  readyTimeoutMs?: number;
  onProgress?: (line: string) => void;
}

export interface PostgresClusterInfo {
  databaseUrl: string;
  port: number;
  /** Server version, e.g. `15.14`. */
  version: string;
}

const INSTALL_HINT = 'run `make install` (or bash deploy/local/install.sh)';
const PG_ROOT = '/usr/lib/postgresql';
/** SIGINT is Postgres's "fast" shutdown (what `pg_ctl stop -m fast` sends), SIGQUIT "immediate". */
const GRACEFUL_STOP: readonly StopStep[] = [
  { signal: 'SIGINT', waitMs: 15_000 },
  { signal: 'SIGQUIT', waitMs: 5_000 },
];
const FORCED_STOP: readonly StopStep[] = [{ signal: 'SIGQUIT', waitMs: 3_000 }];

interface RunAs {
  uid: number;
  gid: number;
}

/**
 * A private PostgreSQL cluster on 127.0.0.1, run from the newest server binaries under
 * /usr/lib/postgresql. The postmaster runs in the foreground as a child of this process, tied to
 * it (see child-process.ts), rather than daemonised by `pg_ctl start`: a daemon would outlive a
 * killed launcher. Stopping sends the same signals `pg_ctl stop -m fast` / `-m immediate` send.
 *
 * initdb and postgres refuse to run as root, so as root both run as the `postgres` user, which
 * then owns the data and socket directories.
 */
export class PostgresCluster {
  private child: ChildProcess | undefined;
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: PostgresClusterOptions) {}

  /** Directory for the Unix socket: beside the data directory, never inside it. */
  get socketDir(): string {
    return join(dirname(this.options.dataDir), 'pg-socket');
  }

  /** Runs initdb when needed, starts the server and creates the database. */
  async start(): Promise<PostgresClusterInfo> {
    const { dataDir, logFile } = this.options;
    // A cluster stopped and started again is a new postmaster: its stop must run again too.
    this.stopping = undefined;
    const database = this.options.database ?? 'activity';
    const binDir = newestBinDir();
    const runAs = postgresUserIfRoot();
    const parent = dirname(dataDir);
    await mkdir(parent, { recursive: true });
    if (runAs !== undefined) checkReachable(parent);

    await PostgresCluster.stopLeftover(dataDir, (line) => this.progress(line));
    const logFd = openSync(logFile, 'w');
    try {
      if (!existsSync(join(dataDir, 'PG_VERSION'))) {
        this.progress(`initdb: creating a new cluster in ${dataDir}`);
        await initdb(binDir, dataDir, runAs, logFd);
      }
      await checkMajorVersion(binDir, dataDir);
      await mkdir(this.socketDir, { recursive: true });
      if (runAs !== undefined) await chown(this.socketDir, runAs.uid, runAs.gid);

      const port = this.options.port ?? (await freePort());
      this.child = spawnTied(
        join(binDir, 'postgres'),
        [
          '-D',
          dataDir,
          '-p',
          String(port),
          '-c',
          `listen_addresses=${LOOPBACK}`,
          '-k',
          this.socketDir,
          '-c',
          'fsync=on',
        ],
        {
          cwd: dataDir,
          stdio: ['ignore', logFd, logFd],
          detached: true,
          deathSignal: 'SIGINT',
          ...(runAs ?? {}),
        },
      );
      const child = this.child;
      try {
        const version = await this.waitUntilReady(child, port);
        await createDatabase(port, database);
        return { databaseUrl: databaseUrl(port, database), port, version };
      } catch (err) {
        await this.kill();
        throw err;
      }
    } finally {
      closeSync(logFd);
    }
  }

  /** Fast shutdown (SIGINT) for up to 15 s, then immediate (SIGQUIT), then SIGKILL. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.stopWith(GRACEFUL_STOP);
    return this.stopping;
  }

  /** Immediate shutdown now; for a second Ctrl-C or a failed start. */
  kill(): Promise<void> {
    return this.stopWith(FORCED_STOP);
  }

  /**
   * Handles a postmaster.pid left by a killed run: stops the postmaster if it still runs on
   * `dataDir`, or removes the file when its pid is dead or now belongs to another program (which
   * would make Postgres refuse to start).
   */
  static async stopLeftover(dataDir: string, say?: (line: string) => void): Promise<void> {
    const pidFile = join(dataDir, 'postmaster.pid');
    let lines: string[];
    try {
      lines = (await readFile(pidFile, 'utf8')).split('\n');
    } catch {
      return;
    }
    const pid = Number.parseInt(lines[0] ?? '', 10);
    const cmd = Number.isSafeInteger(pid) && pid > 0 && isAlive(pid) ? commandLine(pid) : null;
    if (cmd?.includes('postgres') && lines[1]?.trim() === dataDir) {
      say?.(`stopping postmaster pid ${pid}, left running on ${dataDir} by an earlier run`);
      await stopPid(pid, GRACEFUL_STOP);
    } else {
      say?.(`removing stale ${pidFile} (pid ${lines[0]?.trim()} is not a running postmaster)`);
    }
    await rm(pidFile, { force: true });
  }

  private async stopWith(steps: readonly StopStep[]): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    if (!(await stopChild(child, steps))) {
      this.progress(`postgres pid ${child.pid} did not exit even after SIGKILL`);
    }
  }

  private async waitUntilReady(child: ChildProcess, port: number): Promise<string> {
    const { logFile } = this.options;
    const timeoutMs = this.options.readyTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    while (Date.now() < deadline) {
      await sleep(200);
      if (spawnError !== undefined) {
        throw new PipelineError(
          'database_unavailable',
          `could not start postgres: ${spawnError.message}`,
          { cause: spawnError },
        );
      }
      if (child.exitCode !== null || child.signalCode !== null) {
        const log = await readFile(logFile, 'utf8').catch(() => '');
        const how = child.exitCode !== null ? `code ${child.exitCode}` : `${child.signalCode}`;
        throw new PipelineError(
          'database_unavailable',
          `postgres exited with ${how} while starting. Last lines of ${logFile}:\n${lastLines(log, 20).join('\n')}`,
        );
      }
      const version = await queryVersion(port);
      if (version !== null) return version;
    }
    throw new PipelineError(
      'database_unavailable',
      `postgres was not ready within ${timeoutMs / 1000} s; see ${logFile}`,
    );
  }

  private progress(line: string): void {
    this.options.onProgress?.(line);
  }
}

/** The connection string clients use. */
export function databaseUrl(port: number, database: string): string {
  return `postgres://postgres@${LOOPBACK}:${port}/${database}`;
}

/** The bin directory of the newest PostgreSQL major version installed. */
function newestBinDir(): string {
  const majors = existsSync(PG_ROOT)
    ? readdirSync(PG_ROOT)
        .filter((name) => /^\d+$/.test(name) && existsSync(join(PG_ROOT, name, 'bin', 'initdb')))
        .map(Number)
        .sort((a, b) => b - a)
    : [];
  const newest = majors[0];
  if (newest === undefined) {
    throw new PipelineError(
      'database_unavailable',
      `no PostgreSQL server binaries under ${PG_ROOT}/*/bin: ${INSTALL_HINT}`,
    );
  }
  return join(PG_ROOT, String(newest), 'bin');
}

/** The postgres user's ids when running as root (initdb and postgres refuse root); else none. */
function postgresUserIfRoot(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    return { uid, gid };
  } catch (err) {
    throw new PipelineError(
      'database_unavailable',
      `running as root, but there is no "postgres" user to run PostgreSQL as: ${INSTALL_HINT}`,
      { cause: err },
    );
  }
}

/** Fails clearly when the postgres user cannot traverse a directory above the cluster. */
function checkReachable(dir: string): void {
  const { root } = parse(dir);
  for (let current = dir; ; current = dirname(current)) {
    if ((statSync(current).mode & 0o001) === 0) {
      throw new PipelineError(
        'database_unavailable',
        `the postgres user cannot enter ${current} (no execute permission for others); ` +
          `run \`chmod o+x ${current}\` or keep the repository elsewhere`,
      );
    }
    if (current === root) return;
  }
}

function run(
  command: string,
  args: readonly string[],
  runAs: RunAs | undefined,
  cwd: string,
): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd, timeout: 120_000, ...(runAs ?? {}) }, (err, stdout, stderr) =>
      resolve({ ok: err === null, output: `${stdout}${stderr}${err === null ? '' : err.message}` }),
    );
  });
}

async function initdb(
  binDir: string,
  dataDir: string,
  runAs: RunAs | undefined,
  logFd: number,
): Promise<void> {
  let result = { ok: false, output: '' };
  // C.UTF-8 keeps text sorting byte-wise and predictable; plain C is the fallback where the
  // locale is not installed.
  for (const locale of ['C.UTF-8', 'C']) {
    await rm(dataDir, { recursive: true, force: true });
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    if (runAs !== undefined) await chown(dataDir, runAs.uid, runAs.gid);
    await chmod(dataDir, 0o700);
    const args = [
      '-D',
      dataDir,
      '-U',
      'postgres',
      '--auth=trust',
      '-E',
      'UTF8',
      '--no-instructions',
    ];
    result = await run(join(binDir, 'initdb'), [...args, `--locale=${locale}`], runAs, dataDir);
    writeSync(logFd, result.output);
    if (result.ok) return;
  }
  await rm(dataDir, { recursive: true, force: true });
  throw new PipelineError(
    'database_unavailable',
    `initdb failed for ${dataDir}:\n${lastLines(result.output, 20).join('\n')}`,
  );
}

async function checkMajorVersion(binDir: string, dataDir: string): Promise<void> {
  const dataMajor = (await readFile(join(dataDir, 'PG_VERSION'), 'utf8')).trim();
  const binMajor = binDir.split('/').at(-2);
  if (dataMajor !== binMajor) {
    throw new PipelineError(
      'database_unavailable',
      `${dataDir} was created by PostgreSQL ${dataMajor}, but the server binaries are ${binMajor}; ` +
        'remove the old data with `make clean-data`',
    );
  }
}

/** The server version once it accepts queries; null while it is still starting. */
async function queryVersion(port: number): Promise<string | null> {
  const client = new pg.Client({
    host: LOOPBACK,
    port,
    user: 'postgres',
    database: 'postgres',
    connectionTimeoutMillis: 1_000,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    const result = await client.query<{ server_version: string }>('SHOW server_version');
    return result.rows[0]?.server_version.split(' ')[0] ?? 'unknown';
  } catch {
    return null;
  } finally {
    await client.end().catch(() => {});
  }
}

async function createDatabase(port: number, database: string): Promise<void> {
  const client = new pg.Client({ host: LOOPBACK, port, user: 'postgres', database: 'postgres' });
  client.on('error', () => {});
  try {
    await client.connect();
    const exists = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (exists.rowCount === 0) {
      await client.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`);
    }
  } catch (err) {
    throw new PipelineError('database_unavailable', `could not create database ${database}`, {
      cause: err,
    });
  } finally {
    await client.end().catch(() => {});
  }
}
