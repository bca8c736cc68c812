/**
 * Static check of the container path, which this machine cannot run (no Docker engine):
 * docker-compose.yml, the Dockerfiles, redpanda.yaml and the Prometheus and Grafana files must
 * agree with each other and with the services' real configuration readers and metrics. What it
 * cannot prove (images build, containers start, DNS discovery finds replicas) is listed in the
 * README, "Run with Docker".
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { readAggregatorConfig } from '../aggregator/config.js';
import { createAggregatorMetrics } from '../aggregator/metrics.js';
import { readIngestConfig } from '../ingest/config.js';
import { createIngestMetrics } from '../ingest/metrics.js';
import { readQueryConfig } from '../query/config.js';
import { createQueryMetrics } from '../query/metrics.js';
import { DEFAULT_SITE } from '../shared/event-schema.js';
import { StateHolder } from '../shared/lifecycle.js';
import { createServiceRegistry } from '../shared/service-metrics.js';
import { REPO_ROOT } from './local/stack.js';

type Yaml = Record<string, unknown>;

const repoFile = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');
const yamlFile = (path: string): Yaml => parse(repoFile(path)) as Yaml;
const obj = (value: unknown, what: string): Yaml => {
  assert.ok(
    typeof value === 'object' && value !== null && !Array.isArray(value),
    `${what}: expected a mapping`,
  );
  return value as Yaml;
};
const list = (value: unknown, what: string): unknown[] => {
  assert.ok(Array.isArray(value), `${what}: expected a list`);
  return value;
};

const compose = yamlFile('docker-compose.yml');
const services = obj(compose.services, 'services');
const service = (name: string): Yaml => obj(services[name], `service ${name}`);

/** A service's environment as strings (compose accepts a mapping or a `KEY=value` list). */
function environment(name: string): Record<string, string> {
  const env = service(name).environment ?? {};
  if (Array.isArray(env)) {
    return Object.fromEntries(
      env.map((entry) => {
        const [key = '', ...rest] = String(entry).split('=');
        return [key, rest.join('=')];
      }),
    );
  }
  return Object.fromEntries(
    Object.entries(obj(env, `${name}.environment`)).map(([k, v]) => [k, String(v)]),
  );
}

/** The environment variable names a config reader reads, recorded by running it on a proxy. */
function namesRead(read: (env: NodeJS.ProcessEnv) => unknown): Set<string> {
  const names = new Set<string>();
  const env = new Proxy({} as NodeJS.ProcessEnv, {
    get: (_target, key) => {
      if (typeof key === 'string') names.add(key);
      return undefined;
    },
  });
  read(env);
  return names;
}

/** Compose's `${VAR:-default}` interpolation, with the defaults (what `docker compose up` uses). */
const interpolate = (text: string): string =>
  text.replace(/\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}/g, (_m, _name, fallback: string | undefined) => {
    return fallback ?? '';
  });

/** The bind mounts of a service: host path (relative to the repository) and container path. */
function bindMounts(name: string): Array<{ source: string; target: string }> {
  return (service(name).volumes === undefined ? [] : list(service(name).volumes, `${name}.volumes`))
    .map((volume) => {
      if (typeof volume === 'string') {
        const [source = '', target = ''] = volume.split(':');
        return { source, target };
      }
      const long = obj(volume, `${name}.volumes[]`);
      return { source: String(long.source), target: String(long.target) };
    })
    .filter((mount) => mount.source.startsWith('./') || mount.source.startsWith('../'));
}

/** Maps a path inside `name`'s container back to the repository through its bind mounts. */
function hostPathOf(name: string, containerPath: string): string | undefined {
  for (const { source, target } of bindMounts(name)) {
    if (containerPath === target || containerPath.startsWith(`${target}/`)) {
      return posix.join(source, containerPath.slice(target.length));
    }
  }
  return undefined;
}

interface DockerStage {
  name: string;
  from: string;
  instructions: Array<{ keyword: string; args: string }>;
}

/** A Dockerfile's stages, with continuation lines joined and comments dropped. */
function dockerStages(path = 'Dockerfile'): DockerStage[] {
  const lines = repoFile(path)
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  const stages: DockerStage[] = [];
  for (const line of lines) {
    const [keyword = '', ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    if (keyword.toUpperCase() === 'FROM') {
      const match = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      assert.ok(match, `FROM line: ${line}`);
      stages.push({ name: match[2] ?? '', from: match[1] ?? '', instructions: [] });
    } else {
      stages.at(-1)?.instructions.push({ keyword: keyword.toUpperCase(), args });
    }
  }
  return stages;
}

/** A stage's instructions including those it inherits from the stages it is built `FROM`. */
function effectiveInstructions(stages: DockerStage[], name: string): DockerStage['instructions'] {
  const stage = stages.find((s) => s.name === name);
  assert.ok(stage, `Dockerfile has a stage ${name}`);
  const parent = stages.find((s) => s.name === stage.from);
  return [
    ...(parent === undefined ? [] : effectiveInstructions(stages, parent.name)),
    ...stage.instructions,
  ];
}

/** The patterns of .dockerignore, comments and blank lines dropped. */
function dockerIgnorePatterns(): string[] {
  return repoFile('.dockerignore')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
}

/**
 * A .dockerignore pattern as a regular expression over context-relative paths: `**` any number
 * of path segments, `*` and `?` within one; a match on a folder excludes what is below it.
 */
function dockerIgnoreRegExp(pattern: string): RegExp {
  assert.ok(!pattern.startsWith('!'), 'exceptions are not used (and not handled here)');
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const char = pattern[i] ?? '';
    if (pattern.startsWith('**/', i)) {
      source += '(?:.*/)?';
      i += 2;
    } else if (pattern.startsWith('**', i)) {
      source += '.*';
      i += 1;
    } else if (char === '*') source += '[^/]*';
    else if (char === '?') source += '[^/]';
    else source += char.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${source}(?:/.*)?$`);
}

const APP_SERVICES = ['ingest', 'aggregator', 'query'] as const;
/** The services that talk to the broker. */
const KAFKA_SERVICES = ['ingest', 'aggregator'] as const;
/** The variable each service's port is read from. */
const PORT_VARIABLE = { ingest: 'INGEST_PORT', aggregator: 'AGGREGATOR_PORT', query: 'QUERY_PORT' };

/**
 * The series names ingest and the aggregator expose, from their real registries: their own
 * metrics, Node's process metrics and the state gauge; a histogram as its `_bucket`, `_sum` and
 * `_count` series.
 */
async function exposedSeries(): Promise<Set<string>> {
  const ingest = createServiceRegistry('ingest', new StateHolder());
  createIngestMetrics(ingest, { maxInFlightEvents: 1, sites: [DEFAULT_SITE] });
  const aggregator = createServiceRegistry('aggregator', new StateHolder());
  createAggregatorMetrics(aggregator);
  const query = createServiceRegistry('query', new StateHolder());
  createQueryMetrics(query);
  const names = new Set<string>();
  for (const registry of [ingest, aggregator, query]) {
    for (const [, name = '', type] of (await registry.metrics()).matchAll(
      /^# TYPE (\S+) (\S+)$/gm,
    )) {
      names.add(name);
      const parts = { histogram: ['_bucket', '_sum', '_count'], summary: ['_sum', '_count'] };
      for (const suffix of parts[type as keyof typeof parts] ?? []) names.add(`${name}${suffix}`);
    }
  }
  return names;
}

describe('docker-compose.yml', () => {
  test('every service has a healthcheck and no fixed container name', () => {
    assert.ok(Object.keys(services).length >= 7, Object.keys(services).join(', '));
    for (const [name, value] of Object.entries(services)) {
      const svc = obj(value, name);
      const check = obj(svc.healthcheck, `${name}.healthcheck`);
      assert.notEqual(check.disable, true, `${name}: healthcheck disabled`);
      const probe = list(check.test, `${name}.healthcheck.test`);
      assert.ok(['CMD', 'CMD-SHELL'].includes(String(probe[0])) && probe.length >= 2, name);
      assert.equal(svc.container_name, undefined, `${name}: container_name breaks --scale`);
    }
    // The services' own checks ask readiness on the port they listen on, as their images do.
    for (const name of APP_SERVICES) {
      const probe = list(obj(service(name).healthcheck, name).test, name).join(' ');
      assert.match(probe, /\/readyz/, `${name} healthcheck`);
      assert.ok(probe.includes(PORT_VARIABLE[name]), name);
    }
  });

  test('the aggregator scales: no host port, its metrics port only exposed on the network', () => {
    const aggregator = service('aggregator');
    assert.equal(aggregator.ports, undefined, 'a fixed host port breaks --scale aggregator=3');
    assert.equal(aggregator.network_mode, undefined);
    const port = environment('aggregator').AGGREGATOR_PORT;
    assert.ok(port !== undefined, 'AGGREGATOR_PORT set, so the healthcheck and Prometheus agree');
    assert.deepEqual(list(aggregator.expose, 'aggregator.expose').map(String), [port]);
    assert.equal(
      aggregator.deploy === undefined ? undefined : obj(aggregator.deploy, 'deploy').replicas,
      undefined,
    );
  });

  test('services start in order: depends_on waits for health', () => {
    const expected: Record<string, Record<string, string>> = {
      ingest: { redpanda: 'service_healthy' },
      aggregator: { redpanda: 'service_healthy', postgres: 'service_healthy' },
      query: { postgres: 'service_healthy' },
      grafana: { prometheus: 'service_healthy', postgres: 'service_healthy' },
      'redpanda-console': { redpanda: 'service_healthy' },
    };
    for (const [name, deps] of Object.entries(expected)) {
      const dependsOn = obj(service(name).depends_on, `${name}.depends_on`);
      const conditions = Object.fromEntries(
        Object.entries(dependsOn).map(([dep, spec]) => [dep, String(obj(spec, dep).condition)]),
      );
      assert.deepEqual(conditions, deps, name);
    }
    // Every dependency exists and, when waited on for health, has a healthcheck.
    for (const [name, value] of Object.entries(services)) {
      const dependsOn = obj(value, name).depends_on;
      if (dependsOn === undefined) continue;
      for (const dep of Object.keys(obj(dependsOn, `${name}.depends_on`))) {
        assert.ok(services[dep] !== undefined, `${name} depends on unknown service ${dep}`);
        assert.ok(service(dep).healthcheck !== undefined, `${dep} has a healthcheck`);
      }
    }
  });

  test('every file it references exists', () => {
    let mounts = 0;
    for (const name of Object.keys(services)) {
      for (const { source } of bindMounts(name)) {
        assert.ok(
          existsSync(join(REPO_ROOT, source)),
          `${name} mounts ${source}, which is missing`,
        );
        mounts++;
      }
      const build = service(name).build;
      if (build === undefined) continue;
      const spec = obj(build, `${name}.build`);
      const context = String(spec.context ?? '.');
      const dockerfile = posix.join(context, String(spec.dockerfile ?? 'Dockerfile'));
      assert.ok(existsSync(join(REPO_ROOT, dockerfile)), `${name}: ${dockerfile} missing`);
      if (spec.target !== undefined) {
        const stages = dockerStages(dockerfile).map((stage) => stage.name);
        assert.ok(stages.includes(String(spec.target)), `${name}: no stage ${spec.target}`);
      }
    }
    assert.ok(mounts >= 4, `bind mounts checked: ${mounts}`);
    // Files named inside the mounted folders, resolved back to the repository.
    const home = environment('grafana').GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH ?? '';
    const homeOnHost = hostPathOf('grafana', home);
    assert.ok(homeOnHost !== undefined && existsSync(join(REPO_ROOT, homeOnHost)), home);
    const prometheusConfig = hostPathOf('prometheus', '/etc/prometheus/prometheus.yml');
    assert.ok(prometheusConfig !== undefined && existsSync(join(REPO_ROOT, prometheusConfig)));
    for (const rules of list(yamlFile(prometheusConfig).rule_files, 'rule_files')) {
      assert.ok(existsSync(join(REPO_ROOT, posix.dirname(prometheusConfig), String(rules))));
    }
    const provisioning = hostPathOf('grafana', '/etc/grafana/provisioning');
    assert.ok(provisioning !== undefined);
    for (const provider of list(
      yamlFile(`${provisioning}/dashboards/dashboards.yml`).providers,
      'providers',
    )) {
      const path = String(obj(obj(provider, 'provider').options, 'options').path);
      const onHost = hostPathOf('grafana', path);
      assert.ok(onHost !== undefined, `dashboard folder ${path} is mounted`);
      const dashboards = readdirSync(join(REPO_ROOT, onHost)).filter((f) => f.endsWith('.json'));
      assert.ok(dashboards.length > 0, `${onHost} holds dashboards`);
    }
    // Redpanda starts from the copy of the mounted redpanda.yaml its entrypoint makes.
    const redpandaSrc = bindMounts('redpanda').find((m) => m.source === './redpanda.yaml');
    assert.ok(redpandaSrc, 'redpanda.yaml is mounted');
    assert.ok(
      list(service('redpanda').entrypoint, 'entrypoint').some((part) =>
        String(part).includes(redpandaSrc.target),
      ),
      'the entrypoint copies the mounted file',
    );
  });

  test('the services set only variables their config reads, with values it accepts', () => {
    const readers = {
      ingest: readIngestConfig,
      aggregator: readAggregatorConfig,
      query: readQueryConfig,
    };
    for (const name of APP_SERVICES) {
      const env = environment(name);
      const known = namesRead(readers[name]);
      const unknown = Object.keys(env).filter((key) => !known.has(key));
      assert.deepEqual(unknown, [], `${name} sets variables its config.ts never reads`);
      // Throws config_invalid, listing every bad value, if one is out of range.
      readers[name](env);
    }
  });

  test('addresses agree across compose, redpanda.yaml, prometheus.yml and Grafana', () => {
    const redpanda = obj(yamlFile('redpanda.yaml').redpanda, 'redpanda');
    const internal = list(redpanda.advertised_kafka_api, 'advertised_kafka_api')
      .map((l) => obj(l, 'listener'))
      .find((l) => l.name === 'internal');
    assert.ok(internal, 'an internal listener for the compose network');
    assert.ok(services[String(internal.address)] !== undefined, 'advertised as a service name');
    const broker = `${internal.address}:${internal.port}`;
    for (const name of KAFKA_SERVICES) assert.equal(environment(name).KAFKA_BROKERS, broker, name);
    assert.equal(environment('redpanda-console').KAFKA_BROKERS, broker);
    // Topic partitions: ingest creates the topic with TOPIC_PARTITIONS; topics the broker
    // auto-creates get default_topic_partitions. Both divide evenly across 1, 2, 3, 6 replicas.
    assert.equal(environment('ingest').TOPIC_PARTITIONS, String(redpanda.default_topic_partitions));
    assert.equal(redpanda.auto_create_topics_enabled, true);
    assert.equal(environment('ingest').TOPIC, environment('aggregator').TOPIC);

    // The aggregator's database is the postgres service, with its credentials.
    const pgEnv = environment('postgres');
    const url = new URL(environment('aggregator').DATABASE_URL ?? '');
    assert.equal(url.hostname, 'postgres');
    assert.equal(url.port, '5432');
    assert.equal(url.username, pgEnv.POSTGRES_USER);
    assert.equal(url.password, pgEnv.POSTGRES_PASSWORD);
    assert.equal(url.pathname, `/${pgEnv.POSTGRES_DB}`);
    // The query service reads what the aggregator writes.
    assert.equal(environment('query').DATABASE_URL, environment('aggregator').DATABASE_URL);
    assert.equal(environment('query').WINDOW_SEC, environment('aggregator').WINDOW_SEC);
    assert.equal(
      environment('query').FLUSH_INTERVAL_SEC,
      environment('aggregator').FLUSH_INTERVAL_SEC,
    );

    // Ingest's published port maps to the port it listens on.
    const ingestPorts = list(service('ingest').ports, 'ingest.ports').map((p) =>
      interpolate(String(p)),
    );
    assert.deepEqual(ingestPorts, [`8080:${environment('ingest').INGEST_PORT}`]);
    const queryPorts = list(service('query').ports, 'query.ports').map((p) =>
      interpolate(String(p)),
    );
    assert.deepEqual(queryPorts, [`8082:${environment('query').QUERY_PORT}`]);

    // Prometheus discovers the services by their compose names, on their configured ports.
    const prom = yamlFile('deploy/prometheus/prometheus.yml');
    const jobs = new Map(
      list(prom.scrape_configs, 'scrape_configs').map((j) => [
        String(obj(j, 'job').job_name),
        obj(j, 'job'),
      ]),
    );
    for (const [job, port] of [
      ['ingest', environment('ingest').INGEST_PORT],
      ['aggregator', environment('aggregator').AGGREGATOR_PORT],
      ['query', environment('query').QUERY_PORT],
    ] as const) {
      const sd = obj(list(jobs.get(job)?.dns_sd_configs, `${job}.dns_sd_configs`)[0], 'dns_sd');
      assert.deepEqual(list(sd.names, 'names'), [job], `${job}: DNS name is the service name`);
      assert.equal(String(sd.port), port, `${job}: scrape port`);
    }
    const redpandaJob = jobs.get('redpanda');
    assert.equal(redpandaJob?.metrics_path, '/public_metrics');
    const adminPort = obj(list(redpanda.admin, 'admin')[0], 'admin').port;
    const redpandaTargets = obj(list(redpandaJob?.static_configs, 'static')[0], 'static').targets;
    assert.deepEqual(redpandaTargets, [`redpanda:${adminPort}`]);

    // Grafana's data sources are the compose services, and the dashboards use their uids.
    const datasources = list(
      yamlFile('deploy/grafana/provisioning/datasources/datasources.yml').datasources,
      'datasources',
    ).map((d) => obj(d, 'datasource'));
    const byType = new Map(datasources.map((d) => [String(d.type), d]));
    assert.equal(byType.get('prometheus')?.url, 'http://prometheus:9090');
    const pgSource = byType.get('grafana-postgresql-datasource');
    assert.equal(pgSource?.url, 'postgres:5432');
    assert.equal(pgSource?.user, pgEnv.POSTGRES_USER);
    assert.equal(obj(pgSource?.jsonData, 'jsonData').database, pgEnv.POSTGRES_DB);
    assert.equal(obj(pgSource?.secureJsonData, 'secureJsonData').password, pgEnv.POSTGRES_PASSWORD);
    const uids = new Set(datasources.map((d) => String(d.uid)));
    const used = new Set<string>();
    const collect = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(collect);
      else if (typeof node === 'object' && node !== null) {
        const record = node as Yaml;
        if (record.datasource !== undefined && typeof record.datasource === 'object') {
          used.add(String(obj(record.datasource, 'datasource').uid));
        }
        Object.values(record).forEach(collect);
      }
    };
    collect(JSON.parse(repoFile('deploy/grafana/dashboards/pipeline.json')));
    assert.deepEqual(
      [...used].filter((uid) => !uids.has(uid)),
      [],
      'dashboard datasource uids',
    );
    assert.deepEqual([...used].sort(), ['postgres', 'prometheus']);
  });
});

describe('deploy/grafana/dashboards/pipeline.json', () => {
  test('every metric its panels and variables query is one the services register', async () => {
    const dashboard = JSON.parse(repoFile('deploy/grafana/dashboards/pipeline.json')) as {
      panels: Yaml[];
      templating: { list: Yaml[] };
    };
    const queries = [
      ...dashboard.panels.flatMap((panel) =>
        ((panel.targets as Yaml[] | undefined) ?? []).flatMap((target) =>
          target.expr === undefined ? [] : [String(target.expr)],
        ),
      ),
      ...dashboard.templating.list.flatMap((variable) =>
        obj(variable.datasource, 'variable datasource').type === 'prometheus'
          ? [String(variable.definition)]
          : [],
      ),
    ];
    assert.ok(queries.length >= 40, `${queries.length} PromQL queries found`);
    const exposed = await exposedSeries();
    const unknown = new Set<string>();
    for (const query of queries) {
      for (const [name] of query.matchAll(
        /\b(?:ingest|aggregator|query|process|nodejs)_[a-z0-9_]+/g,
      )) {
        if (!exposed.has(name)) unknown.add(name);
      }
    }
    assert.deepEqual([...unknown], [], 'queried but not registered by ingest or the aggregator');
  });
});

describe('Dockerfile', () => {
  const stages = dockerStages();

  test('multi-stage on Debian 12, runtime separate from the build toolchain', () => {
    const nodeImage = /ARG NODE_IMAGE=(\S+)/.exec(repoFile('Dockerfile'))?.[1] ?? '';
    assert.match(nodeImage, /^node:20(\.\d+)*-bookworm-slim$/, 'Node 20 on Debian 12 (glibc 2.36)');
    assert.equal(
      nodeImage.split(':')[1]?.split('-')[0],
      process.versions.node,
      'same Node.js as here',
    );
    const byName = new Map(stages.map((s) => [s.name, s]));
    const fromNodeImage = /^\$\{NODE_IMAGE\}$/;
    assert.match(byName.get('build')?.from ?? '', fromNodeImage);
    assert.match(
      byName.get('runtime')?.from ?? '',
      fromNodeImage,
      'runtime does not inherit the toolchain',
    );
    const runtime = byName.get('runtime')?.instructions ?? [];
    assert.ok(
      runtime.some((i) => i.keyword === 'COPY' && i.args.includes('--from=build')),
      'runtime copies the built app from the build stage',
    );
    assert.ok(
      !runtime.some((i) => i.args.includes('build-essential')),
      'no compiler in the runtime image',
    );
    // librdkafka is built as deploy/local/install.sh builds it: dynamically linked.
    const build = byName.get('build')?.instructions ?? [];
    assert.ok(build.some((i) => i.keyword === 'ENV' && i.args.includes('CKJS_LINKING=dynamic')));
    assert.match(repoFile('deploy/local/install.sh'), /CKJS_LINKING=dynamic/);
  });

  test('the services run on jemalloc, installed, linked where LD_PRELOAD points, and checked', () => {
    const runtime = stages.find((s) => s.name === 'runtime')?.instructions ?? [];
    const env = runtime
      .filter((i) => i.keyword === 'ENV')
      .map((i) => i.args)
      .join(' ');
    const preload = /LD_PRELOAD=(\S+)/.exec(env)?.[1];
    assert.equal(preload, '/usr/local/lib/libjemalloc.so.2');
    const runs = runtime.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    assert.ok(
      runs.some(
        (run) => run.includes('libjemalloc2') && run.includes(`ln -s`) && run.includes(preload),
      ),
      'libjemalloc2 installed and linked at the LD_PRELOAD path',
    );
    assert.ok(
      runs.some((run) => run.includes('/proc/self/maps') && run.includes('libjemalloc')),
      'the image build fails when the preload does not take',
    );
    // The local stack preloads the same library (deploy/local/child-process.ts).
    assert.match(repoFile('deploy/local/install.sh'), /libjemalloc2/);
  });

  for (const name of APP_SERVICES) {
    test(`${name}: non-root, HEALTHCHECK on /readyz, Node as PID 1`, () => {
      const instructions = effectiveInstructions(stages, name);
      const last = (keyword: string) => instructions.filter((i) => i.keyword === keyword).at(-1);
      const user = last('USER')?.args ?? 'root';
      assert.ok(!['root', '0', '0:0'].includes(user), `${name} runs as ${user}`);
      const healthcheck = last('HEALTHCHECK')?.args ?? '';
      assert.match(healthcheck, /CMD \[.*\/readyz/, `${name}: HEALTHCHECK probes /readyz`);
      const portVariable = PORT_VARIABLE[name];
      assert.ok(healthcheck.includes(portVariable), `${name}: probes the port it listens on`);
      // Exec form: no shell as PID 1 swallowing SIGTERM.
      assert.equal(last('ENTRYPOINT'), undefined);
      const cmd = JSON.parse(last('CMD')?.args ?? 'null') as unknown;
      assert.deepEqual(cmd, ['node', `dist/${name}/main.js`]);
      assert.ok(
        statSync(join(REPO_ROOT, `${name}/main.ts`)).isFile(),
        `${name}/main.ts compiles to the CMD`,
      );
      const stop = last('STOPSIGNAL')?.args ?? 'SIGTERM';
      assert.equal(stop, 'SIGTERM');
    });
  }

  test('the build context (.dockerignore applied) compiles to the entry points, with no dev dependency', () => {
    // The files `COPY . .` receives, then the image's `tsc` on them, in a scratch directory.
    const patterns = dockerIgnorePatterns().map(dockerIgnoreRegExp);
    const context = mkdtempSync(join(tmpdir(), 'activity-docker-context-'));
    try {
      const copied: string[] = [];
      const walk = (dir: string): void => {
        for (const entry of readdirSync(join(REPO_ROOT, dir), { withFileTypes: true })) {
          const path = dir === '' ? entry.name : `${dir}/${entry.name}`;
          if (patterns.some((pattern) => pattern.test(path))) continue;
          if (entry.isDirectory()) walk(path);
          else if (entry.isFile()) {
            mkdirSync(join(context, dir), { recursive: true });
            copyFileSync(join(REPO_ROOT, path), join(context, path));
            copied.push(path);
          }
        }
      };
      walk('');
      assert.ok(copied.includes('package-lock.json') && copied.includes('tsconfig.json'));
      assert.deepEqual(
        copied.filter((path) => /\.test\.ts$|^(e2e|bench|chaos|deploy)\//.test(path)),
        [],
        'no tests, benchmarks or deployment files in the context',
      );
      symlinkSync(join(REPO_ROOT, 'node_modules'), join(context, 'node_modules'), 'dir');
      const tsc = spawnSync(
        process.execPath,
        [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'],
        { cwd: context, encoding: 'utf8', timeout: 240_000 },
      );
      assert.equal(tsc.status, 0, `${tsc.stdout}${tsc.stderr}`);
      for (const entry of [
        'ingest/main.js',
        'aggregator/main.js',
        'aggregator/parse-worker.js',
        'query/main.js',
      ]) {
        assert.ok(existsSync(join(context, 'dist', entry)), `dist/${entry} (CMD, Piscina worker)`);
      }
      // `npm prune --omit=dev` runs before the runtime stage: every package the compiled code
      // imports must be a runtime dependency.
      const pkg = JSON.parse(repoFile('package.json')) as { dependencies: Record<string, string> };
      const imported = new Set<string>();
      const scan = (dir: string): void => {
        for (const entry of readdirSync(dir, { withFileTypes: true })) {
          const path = join(dir, entry.name);
          if (entry.isDirectory()) scan(path);
          else if (entry.name.endsWith('.js')) {
            for (const match of readFileSync(path, 'utf8').matchAll(/\bfrom '([^'.][^']*)'/g)) {
              const specifier = match[1] ?? '';
              if (specifier.startsWith('node:')) continue;
              const parts = specifier.split('/');
              imported.add(
                specifier.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] ?? ''),
              );
            }
          }
        }
      };
      scan(join(context, 'dist'));
      assert.ok(imported.size > 0);
      assert.deepEqual(
        [...imported].filter((name) => pkg.dependencies[name] === undefined),
        [],
        'imported by the services but not a runtime dependency',
      );
    } finally {
      rmSync(context, { recursive: true, force: true });
    }
  });

  test('.dockerignore keeps host builds and local state out of the context', () => {
    const ignored = dockerIgnorePatterns();
    for (const path of ['node_modules', 'dist', '.local', '.git']) {
      assert.ok(ignored.includes(path), `${path} is ignored`);
    }
    // tsc must still find what it compiles.
    for (const path of [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'shared',
      'ingest',
      'aggregator',
      'query',
    ]) {
      assert.ok(!ignored.includes(path), `${path} must reach the build`);
    }
  });
});

describe('deploy/postgres/Dockerfile', () => {
  const path = 'deploy/postgres/Dockerfile';
  const base = /^ARG POSTGRES_IMAGE=(\S+)$/m.exec(repoFile(path))?.[1] ?? '';

  test('compose builds PostgreSQL from it: the official image plus the hll extension', () => {
    const postgres = service('postgres');
    assert.equal(postgres.image, undefined, 'built from the Dockerfile, not the bare image');
    const build = obj(postgres.build, 'postgres.build');
    assert.equal(posix.join(String(build.context), String(build.dockerfile ?? 'Dockerfile')), path);
    assert.match(base, /^postgres:15(\.\d+)*-bookworm$/, 'official PostgreSQL 15 on Debian 12');
    const arg = obj(build.args, 'postgres.build.args').POSTGRES_IMAGE;
    assert.equal(interpolate(String(arg)), base, 'compose builds on the Dockerfile default');

    const [stage, ...more] = dockerStages(path);
    assert.equal(more.length, 0, 'one stage');
    assert.match(stage?.from ?? '', /^\$\{POSTGRES_IMAGE\}$/);
    const runs = (stage?.instructions ?? []).filter((i) => i.keyword === 'RUN').map((i) => i.args);
    assert.ok(
      runs.some((run) => /apt-get install [^;]*"postgresql-\$\{PG_MAJOR\}-hll"/.test(run)),
      "installs hll for the base image's PostgreSQL major version",
    );
    assert.ok(
      runs.some((run) => run.includes('CREATE EXTENSION hll')),
      'the image build fails when the server cannot load the extension',
    );
  });

  test('the local stack installs hll for the same PostgreSQL major version', () => {
    const major = /^postgres:(\d+)/.exec(base)?.[1];
    const install = repoFile('deploy/local/install.sh');
    assert.match(install, new RegExp(`\\bpostgresql-${major}\\b`));
    assert.match(install, new RegExp(`\\bpostgresql-${major}-hll\\b`));
  });
});
