/**
 * The benchmark harness cannot rot: `make test` runs it for seconds (BENCH_PROFILE=smoke) on three
 * scenarios against the test run's broker and PostgreSQL, and checks that every contender got a
 * positive figure, every ratio is a number, and the table was written; for rollups also that
 * every range was answered with the generated history's exact count (a smoke history is small
 * enough for exact answers). The figures themselves mean nothing at this size; `make bench` is
 * the real run.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { stackFromEnv } from '../shared/testing.js';
import type { ResultFile } from './results-report.js';
import type { Figure } from './statistics.js';

const RUN_BENCH = fileURLToPath(new URL('./run-bench.js', import.meta.url));
const SCENARIOS = ['ingest-single', 'aggregate-catchup', 'rollups', 'query'];
/** Timed calls of each range in the smoke profile (`rangeQueryCalls`). */
const SMOKE_RANGE_CALLS = 3;

test('a smoke run of the bench writes sane results and the table', async () => {
  const stack = stackFromEnv();
  const dir = await mkdtemp(join(tmpdir(), 'bench-smoke-'));
  try {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      KAFKA_BROKERS: stack.kafkaBrokers,
      DATABASE_URL: stack.databaseUrl,
      BENCH_PROFILE: 'smoke',
      BENCH_RESULTS_DIR: dir,
    };
    delete env.NODE_TEST_CONTEXT;
    const runSchemasBefore = await catchupRunSchemas(stack.databaseUrl);
    let output = '';
    const child = spawn(process.execPath, [RUN_BENCH, ...SCENARIOS], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
      child.once('exit', (exitCode) => {
        clearTimeout(timer);
        resolve(exitCode);
      });
    });
    assert.equal(code, 0, `run-bench exited with ${code}:\n${output.slice(-4000)}`);
    assert.match(output, /\[bench\] ingest-single: done/, 'progress is shown while it runs');

    for (const scenario of SCENARIOS) {
      const file = JSON.parse(await readFile(join(dir, `${scenario}.json`), 'utf8')) as ResultFile;
      assert.equal(file.result.scenario, scenario);
      assert.ok(file.machine.cores >= 1 && file.machine.node.startsWith('v'));
      assert.ok(file.result.contenders.length >= 3, `${scenario}: target and baselines`);
      for (const contender of file.result.contenders) {
        assert.ok(
          contender.throughput.median > 0 && Number.isFinite(contender.throughput.median),
          `${scenario}/${contender.name}: positive throughput, got ${contender.throughput.median}`,
        );
        const perCall = contender.throughput.unit === 'ms per call';
        assert.equal(contender.throughput.runs.length, perCall ? SMOKE_RANGE_CALLS : 1);
      }
      assert.ok(file.result.ratios.length >= 1);
      for (const ratio of file.result.ratios) {
        assert.ok(
          ratio.value > 0 && Number.isFinite(ratio.value),
          `${ratio.name} = ${ratio.value}`,
        );
      }
    }
    const single = JSON.parse(
      await readFile(join(dir, 'ingest-single.json'), 'utf8'),
    ) as ResultFile;
    for (const contender of single.result.contenders) {
      assert.ok((contender.generatorCpuPct?.median ?? 0) > 0, 'the generator CPU is reported');
    }
    const catchup = JSON.parse(
      await readFile(join(dir, 'aggregate-catchup.json'), 'utf8'),
    ) as ResultFile;
    const aggregators = catchup.result.contenders.filter((c) => c.name.startsWith('aggregator-'));
    assert.equal(aggregators.length, 3);
    for (const contender of aggregators) {
      // Where the rest of the machine went: the broker's and PostgreSQL's share beside it.
      const cpu = (key: string) => (contender.extra?.[key] as Figure | undefined)?.median;
      assert.ok((cpu('machineCpuPct') ?? 0) > 0, `${contender.name}: the machine's CPU`);
      for (const key of ['brokerCpuPct', 'postgresCpuPct']) {
        assert.ok((cpu(key) ?? -1) >= 0, `${contender.name}: ${key} = ${cpu(key)}`);
      }
    }
    const rollups = JSON.parse(await readFile(join(dir, 'rollups.json'), 'utf8')) as ResultFile;
    const ranges = rollups.result.contenders.filter((c) => c.throughput.unit === 'ms per call');
    assert.equal(ranges.length, 8, 'four ranges, open and sealed');
    for (const range of ranges) {
      assert.ok((range.extra?.trueUniqueUsers as number) > 0, `${range.name}: a truth to compare`);
      assert.equal(range.extra?.uniqueUsers, range.extra?.trueUniqueUsers, range.name);
    }
    const rolledUp = (name: string): number | undefined =>
      (
        rollups.result.contenders.find((c) => c.name === name)?.extra?.rolledUp as
          | Figure
          | undefined
      )?.median;
    assert.ok((rolledUp('rollups-on') ?? 0) > 0, 'ROLLUPS=on rolls up');
    assert.equal(rolledUp('rollups-off'), 0, 'ROLLUPS=off does not');
    assert.equal(rollups.result.warnings.length, 0, rollups.result.warnings.join('; '));

    const query = JSON.parse(await readFile(join(dir, 'query.json'), 'utf8')) as ResultFile;
    const stream = query.result.contenders.find((c) => c.name === 'stream delivery');
    assert.ok((stream?.extra?.events as number) > 0, 'the stream clients received flushes');
    assert.equal(query.result.ratios.length, 5, 'two p99 ratios per query, and the stream');
    assert.equal(query.result.warnings.length, 0, query.result.warnings.join('; '));

    // Each catch-up run drops its schema, so that the next run is not measured against
    // autovacuum working through the last one's tables.
    assert.equal(await catchupRunSchemas(stack.databaseUrl), runSchemasBefore);

    const table = await readFile(join(dir, 'RESULTS.md'), 'utf8');
    for (const scenario of SCENARIOS) assert.match(table, new RegExp(`## ${scenario}`));
    assert.match(table, /\| ingest-single \| .* \| (met|\*\*missed\*\*) \|/);
    assert.match(table, /\| rollups \| rollups: 3-day range, last day open .* \| <= 200 \|/);
    assert.match(table, /\| rollups \| rollups: catch-up with rollups on vs off .* \| >= 0.8 \|/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** Schemas left by bench catch-up runs (`BenchTopics.name('agg_w…')`). */
async function catchupRunSchemas(databaseUrl: string): Promise<number> {
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    const result = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM information_schema.schemata
        WHERE schema_name LIKE 'bench\\_%\\_agg\\_w%'`,
    );
    return result.rows[0]?.n ?? 0;
  } finally {
    await db.end();
  }
}
