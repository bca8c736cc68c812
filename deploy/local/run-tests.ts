/**
 * `make test`: starts a fresh broker and Postgres (.local/test), runs every compiled `*.test.js`
 * under dist/ with node's test runner against them, and stops them again, whatever happens.
 *
 *   node dist/deploy/local/run-tests.js [filter ...]
 *
 * Filters select test files whose path contains any of them (`make test FILTER=window`).
 * Integration tests read KAFKA_BROKERS and DATABASE_URL from the environment.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { stopChild } from './child-process.js';
import { type LocalStack, REPO_ROOT, startLocalStack } from './stack.js';

/**
 * One test file at a time: the broker, Postgres and the tests share two cores, and integration
 * tests that time out under CPU starvation are worse than a slower run.
 */
const TEST_CONCURRENCY = 1;
/**
 * Timeout of each test (node applies it per test, not per file): generous, but a hung close must
 * fail the run rather than stall it.
 */
const TEST_TIMEOUT_MS = 300_000;
/** How long the test run gets to finish after a Ctrl-C before it is killed. */
const INTERRUPT_GRACE_MS = 20_000;

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

/** Every `*.test.js` below `dir`, as paths relative to the repository root, sorted. */
export function findTestFiles(dir: string): string[] {
  const found: string[] = [];
  const walk = (current: string): void => {
    for (const entry of readdirSync(current, { withFileTypes: true })) {
      if (entry.name === 'node_modules') continue;
      const path = join(current, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile() && entry.name.endsWith('.test.js')) {
        found.push(relative(REPO_ROOT, path));
      }
    }
  };
  walk(dir);
  return found.sort();
}

async function main(): Promise<number> {
  const filters = process.argv.slice(2).filter((arg) => arg.trim() !== '');
  let files: string[];
  try {
    files = findTestFiles(join(REPO_ROOT, 'dist'));
  } catch {
    say('[test] dist/ not found: run `make build` first (make test does it for you)');
    return 1;
  }
  if (filters.length > 0) {
    files = files.filter((file) => filters.some((filter) => file.includes(filter)));
  }
  if (files.length === 0) {
    const which = filters.length > 0 ? ` matching ${filters.join(' or ')}` : '';
    say(`[test] no test files${which} under dist/`);
    return 1;
  }
  say(
    `[test] ${files.length} test file(s)${filters.length > 0 ? ` matching ${filters.join(' or ')}` : ''}`,
  );

  let stack: LocalStack | undefined;
  let child: ChildProcess | undefined;
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      say(`\n[test] ${signal}: stopping the test run, then the broker and Postgres`);
      // From a terminal the test runner got the same SIGINT; from `kill` it did not. Either way
      // it gets a bounded time to print its summary.
      if (child !== undefined) {
        void stopChild(child, [{ signal, waitMs: INTERRUPT_GRACE_MS }]);
      }
      return;
    }
    say(`[test] ${signal} again: killing everything now`);
    child?.kill('SIGKILL');
    void (stack?.stop({ force: true }) ?? Promise.resolve()).finally(() => process.exit(1));
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);

  try {
    stack = await startLocalStack({ mode: 'test', log: say });
  } catch (err) {
    say(`[test] ${(err as Error).message}`);
    return 1;
  }
  if (signals > 0) {
    await stack.stop();
    return 130;
  }

  try {
    const started = Date.now();
    const args = [
      '--test',
      '--test-reporter=spec',
      `--test-concurrency=${TEST_CONCURRENCY}`,
      `--test-timeout=${TEST_TIMEOUT_MS}`,
      // A test file whose tests all finished but that leaks a handle (an unclosed consumer)
      // would otherwise keep the run waiting forever; its tests still fail on their own timeouts.
      '--test-force-exit',
      ...files,
    ];
    say(`[test] node ${args.slice(0, -files.length).join(' ')} <${files.length} files>`);
    const running = spawn(process.execPath, args, {
      cwd: REPO_ROOT,
      stdio: 'inherit',
      env: { ...process.env, KAFKA_BROKERS: stack.kafkaBrokers, DATABASE_URL: stack.databaseUrl },
    });
    child = running;
    const code = await new Promise<number>((resolve) => {
      running.once('error', (err) => {
        say(`[test] could not start the test runner: ${err.message}`);
        resolve(1);
      });
      running.once('exit', (exitCode, signal) => resolve(exitCode ?? (signal === null ? 1 : 130)));
    });
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    say(`[test] test run finished with exit code ${code} in ${seconds} s`);
    return signals > 0 && code === 0 ? 130 : code;
  } finally {
    say('[test] stopping the broker and Postgres');
    await stack.stop();
  }
}

// Exit explicitly: a stray handle must not keep `make test` alive after the stack is stopped.
process.exit(await main());
