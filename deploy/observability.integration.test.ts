/**
 * The observability path, proved against real parts: promtool accepts the shipped Prometheus
 * config and rules; a real Prometheus (Debian's binary) runs a config derived from the shipped
 * one, with its targets pointed at an ingest and two aggregator replicas started here, and
 * scrapes all of them; after real traffic every PromQL expression of the Grafana dashboard and
 * of the alert rules evaluates without error and the dashboard's panels return data; the alert
 * rules meant to notice invalid and late records do; and the dashboard's PostgreSQL panels' SQL
 * runs against the real view and reads exactly the figures that were sent.
 *
 * Outside Docker there is no Redpanda and no Docker DNS, so the derived config drops the redpanda
 * job and lists the aggregator replicas through file-based discovery (which, like DNS discovery,
 * re-reads its target list) instead of DNS. Everything else in each job is kept as shipped.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { readAggregatorConfig } from '../aggregator/config.js';
import { startAggregator } from '../aggregator/service.js';
import {
  ActivityOracle,
  type ClientEvent,
  postActivities,
  waitForOracle,
  windowStartOf,
} from '../e2e/activity-oracle.js';
import { EventStreamReader } from '../e2e/query-fixture.js';
import {
  type Figure,
  figureDifferences,
  localDayStart,
  RollupOracle,
} from '../e2e/rollup-oracle.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { readIngestConfig } from '../ingest/config.js';
import { startIngest } from '../ingest/service.js';
import { readQueryConfig } from '../query/config.js';
import { startQuery } from '../query/service.js';
import { DEFAULT_SITE } from '../shared/event-schema.js';
import { sleep, withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, waitFor } from '../shared/testing.js';
import { lastLines, spawnTied, stopChild } from './local/child-process.js';
import { REPO_ROOT } from './local/stack.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const PROMETHEUS_DIR = join(REPO_ROOT, 'deploy', 'prometheus');
const DASHBOARD = join(REPO_ROOT, 'deploy', 'grafana', 'dashboards', 'pipeline.json');
const WINDOW_SEC = 10;
const WINDOW_MS = WINDOW_SEC * 1000;
/**
 * The time zone of the site `default` here: 5:45 off UTC, so that an hour panel or a "today" that
 * followed UTC instead of the site's zone would read other rows than the oracle expects.
 */
const SITE_TIME_ZONE = 'Asia/Kathmandu';
const AGGREGATOR_REPLICAS = 2;

/**
 * Values for Grafana's variables, as Grafana would fill them in with a 1 s scrape interval:
 * $__rate_interval is at least four scrapes; $partition is "All" (its allValue).
 */
const GRAFANA_VARIABLES: Record<string, string> = {
  __rate_interval: '15s',
  __interval: '2s',
  __range: '5m',
  partition: '.*',
};

type Json = Record<string, unknown>;

/**
 * Values of the dashboard's SQL variables, as a viewer of this test's events picks them: they
 * are all of the site `default` (no API keys).
 */
const GRAFANA_SQL_VARIABLES: Record<string, string> = { site: DEFAULT_SITE };

/** The columns each PostgreSQL panel shows, by panel title: every SQL panel must be listed. */
const SQL_PANEL_COLUMNS: Record<string, string[]> = {
  'Unique users, page views and events per hour': ['time', 'unique users', 'page views', 'events'],
  'Unique users, page views and events per day': ['time', 'unique users', 'page views', 'events'],
  'Today by activity type': ['activity type', 'events', 'unique users'],
  'Unique users and page views per window': ['time', 'unique users', 'page views'],
  'Latest windows': [
    'window_start',
    'window_seconds',
    'unique_users',
    'page_view_count',
    'event_count',
    'is_final',
    'updated_at',
  ],
};

interface PromResponse {
  status: string;
  data?: {
    resultType: string;
    result: Array<{ metric: Json; value?: unknown[]; values?: unknown[][] }>;
  } & Json;
  errorType?: string;
  error?: string;
  warnings?: string[];
}

/**
 * Panel targets this test cannot feed, by legend: database retries need a failing database, and
 * an aggregator's first retention run comes a minute after it starts, after this test's queries.
 */
const NO_DATA_EXPECTED = [/^db retries/, /^since last success$/];

/** A PromQL expression found in the shipped files, with where it comes from. */
interface ShippedExpression {
  source: string;
  expr: string;
  /** Dashboard panels only: the panel title and the target's legend. */
  panel?: string;
  legend?: string;
}

let resources: TestResources;
let ingestPort: number;
let queryPort = 0;
let prometheusUrl = '';
let prometheus: ChildProcess | undefined;
let prometheusLog = '';
let workDir = '';
let derivedConfigPath = '';
let trafficStartedAt = 0;
let stopTraffic: (() => Promise<void>) | undefined;
const oracle = new ActivityOracle(WINDOW_MS);
const rollupOracle = new RollupOracle(WINDOW_MS);
let eventsCounted = 0;

/** Counts an accepted event in both oracles: its window, and its site's hour and day. */
function expectCounted(event: ClientEvent): void {
  oracle.add(event);
  rollupOracle.add({
    site: DEFAULT_SITE,
    time_zone: SITE_TIME_ZONE,
    user_id: String(event.user_id),
    activity_type: String(event.activity_type),
    timestamp: Number(event.timestamp),
    // The traffic sends no ids and never repeats an event: each is its own.
    event_id: `event-${eventsCounted++}`,
  });
}

/** Substitutes Grafana's variables; fails on one the test does not know. */
function grafanaToPromQL(expr: string): string {
  const substituted = expr.replace(/\$\{?(\w+)\}?/g, (match, name: string) => {
    const value = GRAFANA_VARIABLES[name];
    assert.ok(value !== undefined, `unknown Grafana variable ${match} in ${expr}`);
    return value;
  });
  return substituted;
}

function dashboardExpressions(): ShippedExpression[] {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Json[] };
  const found: ShippedExpression[] = [];
  for (const panel of dashboard.panels) {
    for (const target of (panel.targets as Json[] | undefined) ?? []) {
      const datasource = (target.datasource ?? panel.datasource) as Json | undefined;
      if (datasource?.type !== 'prometheus') continue;
      found.push({
        source: `dashboard panel "${panel.title}" ${target.refId}`,
        expr: String(target.expr),
        panel: String(panel.title),
        legend: String(target.legendFormat ?? ''),
      });
    }
  }
  return found;
}

/** A SQL query of the dashboard: a PostgreSQL panel's target or a variable's query. */
interface ShippedSql {
  source: string;
  /** The panel's title, or the variable's name. */
  title: string;
  variable: boolean;
  sql: string;
  /** The panel's relative time ("48h"), which replaces the dashboard's range for it. */
  timeFrom: string | undefined;
}

function dashboardSql(): ShippedSql[] {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
    panels: Json[];
    templating: { list: Json[] };
  };
  const isPostgres = (source: unknown) =>
    (source as Json | undefined)?.type === 'grafana-postgresql-datasource';
  const variables = dashboard.templating.list
    .filter((variable) => isPostgres(variable.datasource))
    .map((variable) => ({
      source: `dashboard variable $${variable.name}`,
      title: String(variable.name),
      variable: true,
      sql: String(variable.query),
      timeFrom: undefined,
    }));
  const panels = dashboard.panels.flatMap((panel) =>
    ((panel.targets as Json[] | undefined) ?? [])
      .filter((target) => isPostgres(target.datasource ?? panel.datasource))
      .map((target) => ({
        source: `dashboard panel "${panel.title}" ${target.refId}`,
        title: String(panel.title),
        variable: false,
        sql: String(target.rawSql),
        timeFrom: panel.timeFrom === undefined ? undefined : String(panel.timeFrom),
      })),
  );
  return [...variables, ...panels];
}

/** The dashboard's own range: `time.from` is now-30m. */
const DASHBOARD_RANGE = '30m';

/**
 * A dashboard SQL query as Grafana's PostgreSQL data source runs it over the range that ends
 * now: `$__timeFilter(column)` expanded as the data source expands it, then the variables
 * interpolated as Grafana's SQL data sources interpolate a single-valued one (the value as is,
 * its quotes doubled; the query quotes it). Fails on a macro or variable the test does not know.
 */
function grafanaToSql(query: ShippedSql, nowMs = Date.now()): string {
  const range = /^(\d+)([mhd])$/.exec(query.timeFrom ?? DASHBOARD_RANGE);
  assert.ok(range !== null, `${query.source}: unknown relative time ${query.timeFrom}`);
  const unitMs = { m: 60_000, h: 3_600_000, d: 86_400_000 }[range[2] as 'm' | 'h' | 'd'];
  const from = new Date(nowMs - Number(range[1]) * unitMs).toISOString();
  const to = new Date(nowMs).toISOString();
  const expanded = query.sql.replace(
    /\$__timeFilter\(([^)]+)\)/g,
    `$1 BETWEEN '${from}' AND '${to}'`,
  );
  assert.doesNotMatch(expanded, /\$__\w+/, `a Grafana macro left in ${query.source}`);
  return expanded.replace(/\$\{?(\w+)\}?/g, (match, name: string) => {
    const value = GRAFANA_SQL_VARIABLES[name];
    assert.ok(value !== undefined, `unknown Grafana variable ${match} in ${query.source}`);
    return value.replaceAll("'", "''");
  });
}

function alertExpressions(): ShippedExpression[] {
  const rules = parse(readFileSync(join(PROMETHEUS_DIR, 'alerts.yml'), 'utf8')) as {
    groups: Array<{
      name: string;
      rules: Array<{ alert?: string; record?: string; expr: string }>;
    }>;
  };
  return rules.groups.flatMap((group) =>
    group.rules.map((rule) => ({
      source: `rule ${rule.alert ?? rule.record}`,
      expr: rule.expr,
    })),
  );
}

async function promApi(path: string, params: Record<string, string> = {}): Promise<PromResponse> {
  const response = await fetch(`${prometheusUrl}${path}?${new URLSearchParams(params)}`, {
    signal: AbortSignal.timeout(10_000),
  });
  return (await response.json()) as PromResponse;
}

function promtool(...args: string[]): { status: number | null; output: string } {
  const result = spawnSync('promtool', args, { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

/**
 * The shipped prometheus.yml with its targets pointed at this test's services: every job kept
 * but redpanda (none runs outside Docker), scrape settings kept, intervals shortened to 1 s.
 */
function derivePrometheusConfig(ports: {
  ingest: number;
  query: number;
  aggregatorTargetsFile: string;
  prometheus: number;
}): Json {
  const shipped = parse(readFileSync(join(PROMETHEUS_DIR, 'prometheus.yml'), 'utf8')) as Json;
  const jobs = (shipped.scrape_configs as Json[]).filter((job) => job.job_name !== 'redpanda');
  return {
    ...shipped,
    global: {
      ...(shipped.global as Json),
      scrape_interval: '1s',
      evaluation_interval: '1s',
      scrape_timeout: '1s',
    },
    rule_files: (shipped.rule_files as string[]).map((file) => join(PROMETHEUS_DIR, file)),
    scrape_configs: jobs.map((job) => {
      const { dns_sd_configs: _dns, static_configs: _static, ...kept } = job;
      switch (job.job_name) {
        case 'ingest':
          return { ...kept, static_configs: [{ targets: [`127.0.0.1:${ports.ingest}`] }] };
        case 'query':
          return { ...kept, static_configs: [{ targets: [`127.0.0.1:${ports.query}`] }] };
        case 'aggregator':
          return {
            ...kept,
            file_sd_configs: [{ files: [ports.aggregatorTargetsFile], refresh_interval: '1s' }],
          };
        case 'prometheus':
          return { ...kept, static_configs: [{ targets: [`127.0.0.1:${ports.prometheus}`] }] };
        default:
          throw new Error(
            `prometheus.yml has a job ${job.job_name} this test does not point anywhere`,
          );
      }
    }),
  };
}

/** Posts a small batch of current events every `intervalMs` until the returned stop is called. */
function startTraffic(intervalMs: number): () => Promise<void> {
  let running = true;
  let round = 0;
  const loop = (async () => {
    while (running) {
      const now = Date.now();
      const events: ClientEvent[] = Array.from({ length: 10 }, (_, i) => ({
        user_id: `user-${(round * 7 + i * 13) % 150}`,
        activity_type: i % 3 === 0 ? 'click' : 'page_view',
        timestamp: now,
      }));
      // One invalid event in every fourth batch: a 207 and a rejected reason.
      const batch: unknown[] =
        round % 4 === 0 ? [...events, { user_id: '', activity_type: 'page_view' }] : events;
      const outcome = await postActivities(ingestPort, batch as ClientEvent[]);
      for (const event of outcome.accepted) if (event.user_id !== '') expectCounted(event);
      // And a request refused before its events are read (415), for the refused-by-reason
      // series: more than one, because a labelled series is born at 1 on its first increment
      // and rate() cannot see that step.
      if (round % 4 === 2) {
        const refused = await fetch(`http://127.0.0.1:${ingestPort}/activity`, {
          method: 'POST',
          headers: { 'content-type': 'text/xml' },
          body: '<event/>',
        });
        assert.equal(refused.status, 415);
      }
      // A dashboard reading the query service meanwhile, for its panels.
      const read = await fetch(`http://127.0.0.1:${queryPort}/v1/realtime`);
      assert.equal(read.status, 200);
      await read.arrayBuffer();
      round++;
      await sleep(intervalMs);
    }
  })();
  return async () => {
    running = false;
    await loop;
  };
}

before(async () => {
  resources = await createTestResources('obs', stack, logger);
  await resources.createTopic(3);
  ingestPort = await freeTcpPort();
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '3',
    INGEST_PORT: String(ingestPort),
    WINDOW_SEC: String(WINDOW_SEC),
    DEFAULT_SITE_TIME_ZONE: SITE_TIME_ZONE,
    // Shorter than the default so that windows become final while the dashboard queries run;
    // no count depends on it (later events are still counted).
    ALLOWED_LATENESS_SEC: '1',
    FLUSH_INTERVAL_SEC: '0.5',
    WORKERS: '1',
  };
  const ingest = await startIngest(readIngestConfig(env), logger.child({ service: 'ingest' }));
  resources.defer('closing ingest', () => ingest.close());
  const aggregatorPorts: number[] = [];
  for (let replica = 0; replica < AGGREGATOR_REPLICAS; replica++) {
    const port = await freeTcpPort();
    const aggregator = await startAggregator(
      readAggregatorConfig({ ...env, AGGREGATOR_PORT: String(port) }),
      logger.child({ service: 'aggregator', replica }),
    );
    resources.defer(`closing aggregator ${replica}`, () => aggregator.close());
    aggregatorPorts.push(port);
  }

  queryPort = await freeTcpPort();
  const query = await startQuery(
    readQueryConfig({ ...env, QUERY_PORT: String(queryPort) }),
    logger.child({ service: 'query' }),
  );
  resources.defer('closing query', () => query.close());
  // A live dashboard: one stream open throughout, for the stream panel.
  const stream = await EventStreamReader.open(`http://127.0.0.1:${queryPort}`, {});
  resources.defer('closing the stream', async () => stream.close());

  workDir = mkdtempSync(join(tmpdir(), 'activity-prometheus-'));
  const aggregatorTargetsFile = join(workDir, 'aggregator-targets.json');
  writeFileSync(
    aggregatorTargetsFile,
    JSON.stringify([{ targets: aggregatorPorts.map((port) => `127.0.0.1:${port}`) }]),
  );
  const prometheusPort = await freeTcpPort();
  derivedConfigPath = join(workDir, 'prometheus.yml');
  writeFileSync(
    derivedConfigPath,
    stringify(
      derivePrometheusConfig({
        ingest: ingestPort,
        query: queryPort,
        aggregatorTargetsFile,
        prometheus: prometheusPort,
      }),
    ),
  );
  prometheusUrl = `http://127.0.0.1:${prometheusPort}`;
  prometheus = spawnTied(
    'prometheus',
    [
      `--config.file=${derivedConfigPath}`,
      `--storage.tsdb.path=${join(workDir, 'data')}`,
      `--web.listen-address=127.0.0.1:${prometheusPort}`,
      '--storage.tsdb.retention.time=1h',
    ],
    { deathSignal: 'SIGKILL', stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const keepLog = (chunk: Buffer): void => {
    prometheusLog = `${prometheusLog}${chunk}`.slice(-20_000);
  };
  prometheus.stdout?.on('data', keepLog);
  prometheus.stderr?.on('data', keepLog);
  await waitFor(
    async () => {
      if (prometheus?.exitCode !== null || prometheus.signalCode !== null)
        throw new Error(`prometheus exited:\n${prometheusLog}`);
      const ready = await fetch(`${prometheusUrl}/-/ready`).catch(() => undefined);
      return ready?.ok === true ? true : undefined;
    },
    {
      timeoutMs: 30_000,
      what: 'Prometheus ready',
      describe: () => lastLines(prometheusLog, 5).join('\n'),
    },
  );
});

after(async () => {
  const failures: unknown[] = [];
  if (stopTraffic !== undefined) {
    await withDeadline(stopTraffic(), 15_000, 'stopping traffic').catch((err) =>
      failures.push(err),
    );
  }
  if (prometheus !== undefined) {
    const child = prometheus;
    const stopped = await withDeadline(
      stopChild(child, [{ signal: 'SIGTERM', waitMs: 5_000 }]),
      15_000,
      'stopping Prometheus',
    ).catch((err) => {
      child.kill('SIGKILL');
      failures.push(err);
      return false;
    });
    if (!stopped) failures.push(new Error('Prometheus did not exit'));
  }
  if (workDir !== '') rmSync(workDir, { recursive: true, force: true });
  await resources?.cleanup().catch((err) => failures.push(err));
  if (failures.length > 0) throw failures[0];
});

test('promtool accepts the shipped config and rules, and the alerts unit tests pass', () => {
  const config = promtool('check', 'config', join(PROMETHEUS_DIR, 'prometheus.yml'));
  assert.equal(config.status, 0, config.output);
  assert.match(config.output, /SUCCESS: .*prometheus\.yml is valid prometheus config file syntax/);
  const rules = promtool('check', 'rules', join(PROMETHEUS_DIR, 'alerts.yml'));
  assert.equal(rules.status, 0, rules.output);
  assert.match(rules.output, new RegExp(`SUCCESS: ${alertExpressions().length} rules found`));
  const unit = promtool('test', 'rules', join(PROMETHEUS_DIR, 'alerts.test.yml'));
  assert.equal(unit.status, 0, unit.output);
  assert.match(unit.output, /SUCCESS/);
});

test('the derived config keeps every shipped job but redpanda, and promtool accepts it', () => {
  const shipped = parse(readFileSync(join(PROMETHEUS_DIR, 'prometheus.yml'), 'utf8')) as Json;
  const derived = parse(readFileSync(derivedConfigPath, 'utf8')) as Json;
  const names = (config: Json) => (config.scrape_configs as Json[]).map((job) => job.job_name);
  assert.deepEqual(
    names(derived),
    names(shipped).filter((name) => name !== 'redpanda'),
  );
  const checked = promtool('check', 'config', derivedConfigPath);
  assert.equal(checked.status, 0, checked.output);
});

test('Prometheus scrapes every target: ingest, each aggregator replica, query and itself, all up', async () => {
  let seen = '';
  const targets = await waitFor(
    async () => {
      const response = await promApi('/api/v1/targets', { state: 'active' });
      const active = (response.data?.activeTargets ?? []) as Array<{
        labels: { job: string; instance: string };
        health: string;
        lastError: string;
      }>;
      seen = JSON.stringify(
        active.map((t) => [t.labels.job, t.labels.instance, t.health, t.lastError]),
      );
      const perJob = (job: string) => active.filter((t) => t.labels.job === job);
      const allUp = active.length > 0 && active.every((t) => t.health === 'up');
      return allUp &&
        perJob('ingest').length === 1 &&
        perJob('aggregator').length === AGGREGATOR_REPLICAS &&
        perJob('query').length === 1 &&
        perJob('prometheus').length === 1
        ? active
        : undefined;
    },
    { timeoutMs: 30_000, what: 'every target up', describe: () => seen },
  );
  assert.equal(targets.length, 3 + AGGREGATOR_REPLICAS);
  // The `up` series agree, and the dashboard's "Aggregators up" figure counts both replicas.
  const up = await promApi('/api/v1/query', { query: 'sum(up{job="aggregator"})' });
  assert.equal(up.data?.result[0]?.value?.[1], String(AGGREGATOR_REPLICAS));
});

test('traffic, late and invalid records reach PostgreSQL and the metrics', async () => {
  trafficStartedAt = Date.now();
  stopTraffic = startTraffic(250);
  // Counted events first, so every partition's watermark is current...
  await waitFor(
    async () => {
      const { rows } = await resources.db.query(
        `SELECT count(DISTINCT source_partition)::int AS partitions, coalesce(sum(event_count), 0)::int AS events
           FROM ${resources.schema}.user_activity_metrics`,
      );
      return rows[0]?.partitions === 3 && rows[0]?.events >= 100 ? true : undefined;
    },
    { timeoutMs: 30_000, what: '100 events counted in all 3 partitions' },
  );
  // ...then events of the same users minutes old: their windows are final and closed, so they
  // arrive late and are counted through the closed windows' stored membership.
  const old = windowStartOf(Date.now(), WINDOW_MS) - 6 * WINDOW_MS;
  const late = Array.from({ length: 20 }, (_, i) => ({
    user_id: `user-${i}`,
    activity_type: 'page_view',
    timestamp: old + i,
  }));
  assert.equal((await postActivities(ingestPort, late)).status, 200);
  for (const event of late) expectCounted(event);
  // A record no ingest would produce, written straight to the topic: invalid.
  const producer = resources.kafka.producer({ kafkaJS: { acks: -1 } });
  await producer.connect();
  resources.defer('closing the raw producer', () => producer.disconnect());
  const poison = () =>
    producer.send({ topic: resources.topic, messages: [{ key: 'poison', value: 'not json' }] });
  await poison();

  const scalar = async (query: string): Promise<number> => {
    const response = await promApi('/api/v1/query', { query });
    return Number(response.data?.result[0]?.value?.[1] ?? Number.NaN);
  };
  let seen = '';
  await waitFor(
    async () => {
      const late = await scalar('sum(aggregator_closed_window_records_total)');
      const invalid = await scalar('sum(aggregator_records_invalid_total{reason="invalid_json"})');
      seen = `late ${late}, invalid ${invalid}`;
      return late >= 20 && invalid === 1 ? true : undefined;
    },
    {
      timeoutMs: 30_000,
      what: '20 late records counted and 1 invalid record in Prometheus',
      describe: () => seen,
    },
  );
  // A second one once the first is scraped: its series was born at 1, so only a second
  // increment shows in rate() (the alert rule sees the first one too, see alerts.yml).
  await poison();
  await waitFor(
    async () => {
      const invalid = await scalar('sum(aggregator_records_invalid_total{reason="invalid_json"})');
      seen = `invalid ${invalid}`;
      return invalid === 2 ? true : undefined;
    },
    { timeoutMs: 30_000, what: 'the second invalid record in Prometheus', describe: () => seen },
  );
});

test('every dashboard and alert expression evaluates; every panel returns data', async (t) => {
  // Scrapes of the traffic above, so that rates over the windows below have points.
  await sleep(5_000);
  const expressions = [...dashboardExpressions(), ...alertExpressions()];
  assert.ok(expressions.length >= 50, `${expressions.length} expressions`);
  const end = Date.now() / 1000;
  const start = trafficStartedAt / 1000 - 5;
  const failures: string[] = [];
  const empty: string[] = [];
  for (const shipped of expressions) {
    const query = grafanaToPromQL(shipped.expr);
    const instant = await promApi('/api/v1/query', { query, time: String(end) });
    const range = await promApi('/api/v1/query_range', {
      query,
      start: String(start),
      end: String(end),
      step: '1',
    });
    for (const [kind, response] of [
      ['instant', instant],
      ['range', range],
    ] as const) {
      if (response.status !== 'success') {
        failures.push(
          `${shipped.source} (${kind}): ${response.errorType} ${response.error}\n  ${query}`,
        );
      }
    }
    if (shipped.panel === undefined) continue;
    // A panel target returns data: some series with at least one finite value in the range.
    const finite = (range.data?.result ?? []).some((series) =>
      (series.values ?? []).some((point) => Number.isFinite(Number(point[1]))),
    );
    if (!finite && !NO_DATA_EXPECTED.some((legend) => legend.test(shipped.legend ?? ''))) {
      empty.push(`${shipped.source} [${shipped.legend}]: ${query}`);
    }
  }
  assert.deepEqual(failures, [], 'expressions Prometheus refused');
  assert.deepEqual(empty, [], 'panel targets without data after traffic');

  // Core panels do not merely answer: they show the traffic (positive figures in the range).
  const positive = async (query: string): Promise<number> => {
    const response = await promApi('/api/v1/query_range', {
      query: grafanaToPromQL(query),
      start: String(start),
      end: String(end),
      step: '1',
    });
    const values = (response.data?.result ?? []).flatMap((s) =>
      (s.values ?? []).map((p) => Number(p[1])),
    );
    return Math.max(0, ...values.filter(Number.isFinite));
  };
  const byLegend = new Map(dashboardExpressions().map((e) => [`${e.panel}|${e.legend}`, e.expr]));
  const core: Array<[string, string]> = [
    ['Ingest requests / s, by status', '{{status}}'],
    ['Ingest latency, by route and status', 'p99 {{route}} {{status}}'],
    ['Events accepted and rejected / s', 'accepted'],
    ['Events accepted and rejected / s', 'rejected {{reason}}'],
    ['Events accepted and rejected / s', 'refused {{reason}}'],
    ['Aggregation throughput', 'records {{instance}}'],
    ['Aggregation throughput', 'rows written (all)'],
    ['Flush duration', 'p99'],
    ['Open windows and memory', 'open windows {{instance}}'],
    ['Open windows and memory', 'held user ids {{instance}}'],
    ['Open windows and memory', 'RSS {{job}} {{instance}}'],
    // Late events are counted now; dead-lettered late ones (windows made final before
    // membership was stored) stay at zero.
    ['Late and invalid records / s', 'late, counted (closed window)'],
    ['Late and invalid records / s', 'invalid {{reason}}'],
    ['Late and invalid records / s', 'dead-lettered'],
    ['Freshness', 'p95'],
    ['Worker pool', 'task p99'],
    ['Partitions, rebalances, pauses', 'partitions {{instance}}'],
    ['Hour and day rollups / s', 'events added'],
  ];
  const flat: string[] = [];
  for (const [panel, legend] of core) {
    const expr = byLegend.get(`${panel}|${legend}`);
    assert.ok(expr !== undefined, `dashboard has "${panel}" / ${legend}`);
    if ((await positive(expr)) <= 0) flat.push(`${panel} / ${legend}: ${expr}`);
  }
  assert.deepEqual(flat, [], 'core panel targets that stayed at zero during traffic');
  // The partitions are split between the replicas and the lag panel sees all three.
  const partitions = await promApi('/api/v1/query', {
    query: 'count(max by (partition) (aggregator_partition_lag_records))',
  });
  assert.equal(partitions.data?.result[0]?.value?.[1], '3');
  // The $partition variable's query (label_values) lists them too.
  const labels = (await promApi('/api/v1/label/partition/values', {
    'match[]': 'aggregator_partition_lag_records',
  })) as unknown as { status: string; data: string[] };
  assert.deepEqual([...labels.data].sort(), ['0', '1', '2']);
  t.diagnostic(
    `${expressions.length} expressions (${dashboardExpressions().length} dashboard, ${alertExpressions().length} alert) evaluated, instant and range`,
  );
});

test('the alert rules evaluate cleanly; InvalidRecords fires and LateEvents is pending after them', async () => {
  let seen = '';
  await waitFor(
    async () => {
      const response = await promApi('/api/v1/rules');
      const rules = ((response.data?.groups ?? []) as Array<{ rules: Json[] }>).flatMap(
        (g) => g.rules,
      );
      seen = JSON.stringify(rules.map((r) => [r.name, r.health, r.lastError]));
      return rules.length === alertExpressions().length && rules.every((r) => r.health === 'ok')
        ? true
        : undefined;
    },
    { timeoutMs: 20_000, what: 'every rule evaluated with health ok', describe: () => seen },
  );
  const alerts = await waitFor(
    async () => {
      const response = await promApi('/api/v1/alerts');
      const list = (response.data?.alerts ?? []) as Array<{ labels: Json; state: string }>;
      seen = JSON.stringify(list.map((a) => [a.labels.alertname, a.labels.reason, a.state]));
      const names = new Set(list.map((a) => a.labels.alertname));
      return names.has('InvalidRecords') && names.has('LateEvents') ? list : undefined;
    },
    { timeoutMs: 20_000, what: 'InvalidRecords and LateEvents active', describe: () => seen },
  );
  // InvalidRecords fires at once; LateEvents waits 10 minutes (`for`) and is pending. Nothing
  // else is wrong with this pipeline, so no other alert fires.
  const firing = alerts.filter((a) => a.state === 'firing');
  assert.deepEqual(
    firing.map((a) => [a.labels.alertname, a.labels.reason]),
    [['InvalidRecords', 'invalid_json']],
    seen,
  );
  assert.equal(alerts.find((a) => a.labels.alertname === 'LateEvents')?.state, 'pending');
});

test('the dashboard SQL reads exactly what was sent from the real views', async () => {
  await stopTraffic?.();
  stopTraffic = undefined;
  await waitForOracle(resources.db, resources.schema, oracle, 30_000);
  // The data source connects to the database whose schema holds the views (public in compose).
  await resources.db.query(`SET search_path TO ${resources.schema}`);
  const run = async (query: ShippedSql): Promise<{ columns: string[]; rows: Json[] }> => {
    const result = await resources.db.query(grafanaToSql(query)).catch((err: Error) => {
      throw new Error(`${query.source}: ${err.message}\n  ${grafanaToSql(query)}`);
    });
    return { columns: result.fields.map((field) => field.name), rows: result.rows as Json[] };
  };

  // The $site variable lists the sites with windows: this test's events are all of `default`.
  const [siteVariable, ...otherVariables] = dashboardSql().filter((q) => q.variable);
  assert.ok(siteVariable !== undefined && otherVariables.length === 0, 'one SQL variable, $site');
  const sites = await run(siteVariable);
  assert.deepEqual(sites.columns, ['site']);
  assert.deepEqual(
    sites.rows.map((row) => row.site),
    [GRAFANA_SQL_VARIABLES.site],
  );

  // Every SQL panel runs and answers with the columns its panel shows.
  const panels = new Map(
    dashboardSql()
      .filter((q) => !q.variable)
      .map((q) => [q.title, q]),
  );
  assert.deepEqual([...panels.keys()].sort(), Object.keys(SQL_PANEL_COLUMNS).sort());
  const answers = new Map<string, Json[]>();
  for (const [title, query] of panels) {
    const { columns, rows } = await run(query);
    assert.deepEqual(columns, SQL_PANEL_COLUMNS[title], `columns of "${title}"`);
    answers.set(title, rows);
  }

  const expected = oracle.expected();
  assert.ok(expected.length >= 2, JSON.stringify(expected));
  assert.deepEqual(
    (answers.get('Unique users and page views per window') ?? []).map((row) => ({
      window_start: (row.time as Date).toISOString(),
      unique_users: Number(row['unique users']),
      page_view_count: Number(row['page views']),
    })),
    expected.map(({ window_start, unique_users, page_view_count }) => ({
      window_start,
      unique_users,
      page_view_count,
    })),
  );
  assert.deepEqual(
    (answers.get('Latest windows') ?? []).map((row) => [
      (row.window_start as Date).toISOString(),
      Number(row.unique_users),
    ]),
    [...expected]
      .reverse()
      .slice(0, 30)
      .map((w) => [w.window_start, w.unique_users]),
  );

  // The hour and day panels, and today's types, once the last windows have closed: each
  // period's own figures, in the site's zone, exactly as the oracle counts them.
  const site = GRAFANA_SQL_VARIABLES.site;
  const periodFigures = (rows: Json[], period: string): Figure[] =>
    rows.map((row) => ({
      key: `${site}|${period}|${(row.time as Date).toISOString()}|`,
      unique_users: Number(row['unique users']),
      page_view_count: Number(row['page views']),
      event_count: Number(row.events),
    }));
  const periods = rollupOracle.expectedPeriods();
  const expectedPeriods = (period: string) =>
    periods
      .filter((f) => f.key.startsWith(`${site}|${period}|`) && f.key.endsWith('|'))
      .sort((a, b) => a.key.localeCompare(b.key));
  let seen = '';
  await waitFor(
    async () => {
      const differences: string[] = [];
      for (const [title, period] of [
        ['Unique users, page views and events per hour', 'hour'],
        ['Unique users, page views and events per day', 'day'],
      ] as const) {
        const query = panels.get(title);
        assert.ok(query !== undefined);
        const shown = periodFigures((await run(query)).rows, period);
        const wanted = expectedPeriods(period);
        assert.ok(wanted.length > 0);
        if (JSON.stringify(shown) !== JSON.stringify(wanted)) {
          differences.push(`${title}:\n  ${figureDifferences(shown, wanted)}`);
        }
      }
      const query = panels.get('Today by activity type');
      assert.ok(query !== undefined);
      const today = new Date(localDayStart(Date.now(), SITE_TIME_ZONE)).toISOString();
      const shown = (await run(query)).rows.map((row) => ({
        type: String(row['activity type']),
        events: Number(row.events),
        users: Number(row['unique users']),
      }));
      const wanted = periods
        .filter((f) => f.key.startsWith(`${site}|day|${today}|`) && !f.key.endsWith('|'))
        .map((f) => ({
          type: f.key.split('|')[3] ?? '',
          events: f.event_count,
          users: f.unique_users,
        }))
        .sort((a, b) => b.events - a.events || a.type.localeCompare(b.type));
      if (JSON.stringify(shown) !== JSON.stringify(wanted)) {
        differences.push(
          `today by type: ${JSON.stringify(shown)}, oracle ${JSON.stringify(wanted)}`,
        );
      }
      seen = differences.join('\n');
      return differences.length === 0 ? true : undefined;
    },
    {
      timeoutMs: 30_000,
      intervalMs: 500,
      what: 'the hour, day and activity-type panels to equal the oracle',
      describe: () => seen,
    },
  );
});
