/**
 * `/metrics` of a real ingest after real traffic (accepted, invalid and rate-limited requests):
 * Prometheus' own linter, `promtool check metrics`, accepts it without a single problem, and the
 * metric families the README promises are there, with their types, labels and counts.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { deleteTopics, freeTcpPort, stackFromEnv, uniqueName } from '../shared/testing.js';
import { readIngestConfig } from './config.js';
import { type IngestService, startIngest } from './service.js';

const stack = stackFromEnv();
const topic = uniqueName('metrics_it');
const logger = createLogger('test', 'warn');

let ingest: IngestService;

before(async () => {
  ingest = await startIngest(
    readIngestConfig({
      KAFKA_BROKERS: stack.kafkaBrokers,
      TOPIC: topic,
      TOPIC_PARTITIONS: '2',
      INGEST_HOST: '127.0.0.1',
      INGEST_PORT: String(await freeTcpPort()),
      SHUTDOWN_GRACE_SEC: '5',
      // Three requests pass at once, then one a second: enough for 200s and 400s before a 429.
      RATE_LIMIT_PER_SEC: '1',
      RATE_LIMIT_BURST: '3',
    }),
    logger.child({ service: 'ingest' }),
  );
});

after(async () => {
  const closed = await Promise.allSettled([
    withDeadline(ingest?.close() ?? Promise.resolve(), 15_000, 'closing ingest'),
  ]);
  await deleteTopics(stack.kafkaBrokers, [topic], logger);
  for (const result of closed) if (result.status === 'rejected') throw result.reason;
});

/** What the traffic below produced, and the `/metrics` text scraped after it. */
const traffic = { invalid: 0, limited: 0, metrics: '' };

test('traffic: a 200, a 207, 400s until a 429, a 404; then /metrics', async () => {
  const url = (path: string) => `http://127.0.0.1:${ingest.port}${path}`;
  const post = (path: string, body: unknown) =>
    fetch(url(path), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  const accepted = await post('/activity', { user_id: 'm1', activity_type: 'page_view' });
  assert.equal(accepted.status, 200, await accepted.text());
  const partial = await post('/activities', [
    { user_id: 'm2', activity_type: 'click' },
    { activity_type: 'click' },
  ]);
  assert.equal(partial.status, 207, await partial.text());
  // Invalid requests until the bucket is empty (a loop, so that a slow machine refilling it in
  // between cannot fail the test): every answer 400 until the first 429.
  for (let i = 0; i < 20 && traffic.limited === 0; i++) {
    const response = await post('/activity', { user_id: 'm3' });
    await response.arrayBuffer();
    if (response.status === 429) traffic.limited++;
    else {
      assert.equal(response.status, 400);
      traffic.invalid++;
    }
  }
  assert.equal(traffic.limited, 1, 'no 429 in 20 requests at RATE_LIMIT_PER_SEC=1');
  assert.equal((await fetch(url('/nope'))).status, 404);

  const response = await fetch(url('/metrics'));
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  traffic.metrics = await response.text();
});

test('promtool check metrics accepts /metrics without a single problem', async () => {
  assert.notEqual(traffic.metrics, '', 'no metrics scraped');
  const lint = await promtoolCheckMetrics(traffic.metrics);
  assert.deepEqual(
    { exitCode: lint.exitCode, output: lint.output.trim() },
    { exitCode: 0, output: '' },
    `promtool check metrics found problems:\n${lint.output}`,
  );
});

test('/metrics has every metric family the README promises, counting the traffic', () => {
  const { invalid, limited } = traffic;
  const families = parseExposition(traffic.metrics);
  const family = (name: string, type: string): Family => {
    const found = families.get(name);
    assert.ok(found !== undefined, `no metric family ${name}`);
    assert.equal(found.type, type, `type of ${name}`);
    assert.ok(found.help.length > 0, `no HELP for ${name}`);
    return found;
  };
  const value = (name: string, labels: Record<string, string> = {}, sample = name): number => {
    const samples = families.get(name)?.samples ?? [];
    const match = samples.find(
      (s) => s.name === sample && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
    );
    assert.ok(match !== undefined, `no sample ${sample}${JSON.stringify(labels)}`);
    return match.value;
  };

  const requests = family('ingest_http_requests_total', 'counter');
  for (const sample of requests.samples) {
    assert.deepEqual(Object.keys(sample.labels).sort(), ['method', 'route', 'status']);
  }
  const requestsOf = (route: string, status: string) =>
    value('ingest_http_requests_total', { route, method: 'POST', status });
  assert.equal(requestsOf('/activity', '200'), 1);
  assert.equal(requestsOf('/activities', '207'), 1);
  assert.equal(requestsOf('/activity', '400'), invalid);
  assert.equal(requestsOf('/activity', '429'), limited);
  assert.equal(value('ingest_http_requests_total', { route: 'other', status: '404' }), 1);

  family('ingest_http_request_duration_seconds', 'histogram');
  const durationsOf = (status: string) =>
    value(
      'ingest_http_request_duration_seconds',
      { route: '/activity', status },
      'ingest_http_request_duration_seconds_count',
    );
  assert.deepEqual(
    [durationsOf('200'), durationsOf('400'), durationsOf('429')],
    [1, invalid, limited],
  );
  family('ingest_events_accepted_total', 'counter');
  assert.equal(value('ingest_events_accepted_total', { site: 'default' }), 2);
  family('ingest_events_rejected_total', 'counter');
  assert.equal(value('ingest_events_rejected_total', { reason: 'missing_field' }), 1 + invalid);
  family('ingest_producer_in_flight_events', 'gauge');
  assert.equal(value('ingest_producer_in_flight_events'), 0);
  family('ingest_producer_in_flight_limit', 'gauge');
  assert.ok(value('ingest_producer_in_flight_limit') > 0);
  // Known reasons start at 0, so that the first rejection is visible to rate().
  assert.equal(value('ingest_events_rejected_total', { reason: 'timestamp_too_old' }), 0);
  family('ingest_broker_ack_duration_seconds', 'histogram');
  assert.equal(
    value('ingest_broker_ack_duration_seconds', {}, 'ingest_broker_ack_duration_seconds_count'),
    2,
  );
  family('ingest_rate_limited_requests_total', 'counter');
  assert.equal(value('ingest_rate_limited_requests_total'), limited);
  family('ingest_producer_replacements_total', 'counter');
  assert.equal(value('ingest_producer_replacements_total'), 0, 'a well producer is kept');
  family('ingest_state', 'gauge');
  assert.equal(value('ingest_state', { state: 'running' }), 1);
  assert.equal(value('ingest_state', { state: 'draining' }), 0);
  family('process_cpu_seconds_total', 'counter');
  family('nodejs_heap_size_used_bytes', 'gauge');
  assert.ok(value('nodejs_heap_size_used_bytes') > 0);
});

/** Pipes `text` into `promtool check metrics`: exit code 0 and no output means no problem. */
function promtoolCheckMetrics(text: string): Promise<{ exitCode: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        err.code === 'ENOENT'
          ? new Error(
              'promtool not found: run `make install` (deploy/local/install.sh installs Debian’s prometheus package, which ships /usr/bin/promtool)',
            )
          : err,
      );
    });
    child.once('close', (exitCode, signal) => {
      clearTimeout(timer);
      resolve({
        exitCode: exitCode ?? -1,
        output: signal === null ? output : `${output}(${signal})`,
      });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(text);
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  type: string;
  help: string;
  samples: Sample[];
}

/**
 * The text exposition format, as far as this test needs it: families from `# HELP` / `# TYPE`,
 * and each sample under the family declared last (histograms' `_bucket`, `_sum`, `_count` too).
 */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: Family | undefined;
  const familyNamed = (name: string): Family => {
    let found = families.get(name);
    if (found === undefined) {
      found = { type: 'untyped', help: '', samples: [] };
      families.set(name, found);
    }
    return found;
  };
  for (const line of text.split('\n')) {
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (meta !== null) {
      const [, kind, name = '', rest = ''] = meta;
      current = familyNamed(name);
      if (kind === 'HELP') current.help = rest;
      else current.type = rest;
      continue;
    }
    if (line.trim() === '' || line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/.exec(line);
    assert.ok(sample !== null, `not a sample line: ${line}`);
    const [, name = '', labelText = '', valueText = ''] = sample;
    const labels: Record<string, string> = {};
    for (const [, label = '', raw = ''] of labelText.matchAll(
      /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g,
    )) {
      labels[label] = raw.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    (current ?? familyNamed(name)).samples.push({ name, labels, value: Number(valueText) });
  }
  return families;
}
