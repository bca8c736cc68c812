/**
 * Static check of the Kubernetes manifests (deploy/k8s/), which no cluster here can apply: the
 * files kustomize lists exist, the containers set only variables their service's config reads
 * (with values it accepts), probes ask the right endpoints on the right ports, shutdown has time
 * to drain, pods run as non-root, the aggregators do not outnumber the partitions, and the
 * scrape config labels jobs the way the alert rules and the dashboard expect.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse, parseAllDocuments } from 'yaml';
import { readAggregatorConfig } from '../aggregator/config.js';
import { readIngestConfig } from '../ingest/config.js';
import { readQueryConfig } from '../query/config.js';
import { REPO_ROOT } from './local/stack.js';

type Yaml = Record<string, unknown>;

const K8S = join(REPO_ROOT, 'deploy', 'k8s');
const kustomization = parse(readFileSync(join(K8S, 'kustomization.yaml'), 'utf8')) as {
  resources: string[];
  images: Array<{ name: string }>;
};
const manifests: Yaml[] = kustomization.resources.flatMap((file) =>
  parseAllDocuments(readFileSync(join(K8S, file), 'utf8')).map((doc) => doc.toJSON() as Yaml),
);
const byKind = (kind: string): Yaml[] => manifests.filter((m) => m.kind === kind);
const named = (kind: string, name: string): Yaml => {
  const found = byKind(kind).find((m) => (m.metadata as Yaml).name === name);
  assert.ok(found, `${kind} ${name}`);
  return found;
};
const at = (value: unknown, ...path: string[]): unknown =>
  path.reduce<unknown>((node, key) => (node as Yaml | undefined)?.[key], value);

const readers = {
  ingest: readIngestConfig,
  aggregator: readAggregatorConfig,
  query: readQueryConfig,
} as const;

/** Names a config reader reads, recorded by running it on a proxy. */
function namesRead(read: (env: NodeJS.ProcessEnv) => unknown): Set<string> {
  const names = new Set<string>();
  read(
    new Proxy({} as NodeJS.ProcessEnv, {
      get: (_target, key) => {
        if (typeof key === 'string') names.add(key);
        return undefined;
      },
    }),
  );
  return names;
}

/** A container's environment: its envFrom ConfigMaps and Secrets, then its own env entries. */
function containerEnv(container: Yaml): { env: Record<string, string>; fromMaps: Set<string> } {
  const env: Record<string, string> = {};
  const fromMaps = new Set<string>();
  for (const source of (container.envFrom as Yaml[] | undefined) ?? []) {
    const map = source.configMapRef as Yaml | undefined;
    const secret = source.secretRef as Yaml | undefined;
    const data = map
      ? (named('ConfigMap', String(map.name)).data as Record<string, string>)
      : (named('Secret', String(secret?.name)).stringData as Record<string, string>);
    for (const [key, value] of Object.entries(data)) {
      env[key] = String(value);
      fromMaps.add(key);
    }
  }
  for (const entry of (container.env as Yaml[] | undefined) ?? []) {
    env[String(entry.name)] = String(entry.value);
    fromMaps.delete(String(entry.name));
  }
  return { env, fromMaps };
}

test('kustomization: every resource exists, the images are the Dockerfile targets', () => {
  for (const file of kustomization.resources) assert.ok(existsSync(join(K8S, file)), file);
  assert.deepEqual(kustomization.images.map((i) => i.name).sort(), [
    'activity-pipeline/aggregator',
    'activity-pipeline/ingest',
    'activity-pipeline/query',
  ]);
  const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
  for (const target of Object.keys(readers)) {
    assert.match(dockerfile, new RegExp(`^FROM \\S+ AS ${target}$`, 'm'), target);
  }
});

test('deployments: environment, probes, shutdown time, non-root, partitions', () => {
  const sharedKeysRead = new Set<string>();
  const sharedKeys = new Set<string>();
  for (const name of Object.keys(readers) as Array<keyof typeof readers>) {
    const deployment = named('Deployment', name);
    const pod = at(deployment, 'spec', 'template', 'spec') as Yaml;
    const [container] = pod.containers as Yaml[];
    assert.ok(container);
    assert.equal(container.image, `activity-pipeline/${name}`);
    const { env, fromMaps } = containerEnv(container);
    const known = namesRead(readers[name]);
    // The container's own entries are all for this service; shared ConfigMap keys must be read
    // by at least one of the services that receive them.
    const own = Object.keys(env).filter((key) => !fromMaps.has(key));
    assert.deepEqual(
      own.filter((key) => !known.has(key)),
      [],
      `${name} sets variables it never reads`,
    );
    for (const key of fromMaps) {
      sharedKeys.add(key);
      if (known.has(key)) sharedKeysRead.add(key);
    }
    const config = readers[name](env) as { port: number; shutdownGraceMs: number };
    // Probes: ready on /readyz, alive on /healthz, on the port the service listens on.
    const ports = new Map(
      (container.ports as Yaml[]).map((p) => [String(p.name), Number(p.containerPort)]),
    );
    for (const [probe, path] of [
      ['readinessProbe', '/readyz'],
      ['livenessProbe', '/healthz'],
      ['startupProbe', '/healthz'],
    ] as const) {
      const get = at(container, probe, 'httpGet') as Yaml;
      assert.equal(get.path, path, `${name} ${probe}`);
      assert.equal(ports.get(String(get.port)), config.port, `${name} ${probe} port`);
    }
    const annotations = at(deployment, 'spec', 'template', 'metadata', 'annotations') as Yaml;
    assert.equal(annotations['prometheus.io/scrape'], 'true');
    assert.equal(Number(annotations['prometheus.io/port']), config.port);
    assert.ok(
      Number(pod.terminationGracePeriodSeconds) * 1000 > config.shutdownGraceMs,
      `${name}: terminationGracePeriodSeconds exceeds SHUTDOWN_GRACE_SEC`,
    );
    assert.equal(at(pod, 'securityContext', 'runAsNonRoot'), true);
    assert.notEqual(at(pod, 'securityContext', 'runAsUser'), 0);
    assert.equal(at(container, 'securityContext', 'allowPrivilegeEscalation'), false);
    // A selector that matches its own pods, and a disruption budget on it.
    const labels = at(deployment, 'spec', 'template', 'metadata', 'labels') as Yaml;
    const selector = at(deployment, 'spec', 'selector', 'matchLabels') as Yaml;
    for (const [key, value] of Object.entries(selector)) assert.equal(labels[key], value);
    assert.deepEqual(
      at(named('PodDisruptionBudget', name), 'spec', 'selector', 'matchLabels'),
      selector,
    );
    // job = app name in the scrape config, as the rules and the dashboard expect.
    assert.equal(labels['app.kubernetes.io/name'], name);
  }
  assert.deepEqual(
    [...sharedKeys].filter((key) => !sharedKeysRead.has(key)),
    [],
    'ConfigMap/Secret keys no service reads',
  );
  const partitions = Number(
    (named('ConfigMap', 'activity-pipeline').data as Yaml).TOPIC_PARTITIONS,
  );
  const aggregators = Number(at(named('Deployment', 'aggregator'), 'spec', 'replicas'));
  assert.ok(aggregators <= partitions, 'no idle aggregator replicas');
  const hpa = named('HorizontalPodAutoscaler', 'ingest');
  assert.equal(at(hpa, 'spec', 'scaleTargetRef', 'name'), 'ingest');
  assert.equal(
    byKind('HorizontalPodAutoscaler').some(
      (h) => at(h, 'spec', 'scaleTargetRef', 'name') === 'aggregator',
    ),
    false,
    'aggregators scale with partitions, not CPU',
  );
  const service = named('Service', 'ingest');
  const [servicePort] = at(service, 'spec', 'ports') as Yaml[];
  assert.equal(servicePort?.targetPort, 'http');
});

test('the scrape config keeps annotated pods and names jobs like the compose stack', () => {
  const config = parse(readFileSync(join(K8S, 'prometheus.yml'), 'utf8')) as Yaml;
  assert.deepEqual(config.rule_files, ['alerts.yml']);
  const [job] = config.scrape_configs as Yaml[];
  assert.ok(job);
  const sd = (job.kubernetes_sd_configs as Yaml[])[0];
  assert.equal(sd?.role, 'pod');
  assert.deepEqual(at(sd, 'namespaces', 'names'), [
    at(named('Namespace', 'activity-pipeline'), 'metadata', 'name'),
  ]);
  const relabels = job.relabel_configs as Yaml[];
  const jobLabel = relabels.find((r) => r.target_label === 'job');
  assert.deepEqual(jobLabel?.source_labels, ['__meta_kubernetes_pod_label_app_kubernetes_io_name']);
  const keep = relabels.find((r) => r.action === 'keep');
  assert.deepEqual(keep?.source_labels, ['__meta_kubernetes_pod_annotation_prometheus_io_scrape']);
  // The same global intervals as the compose stack's Prometheus, which the Grafana data source states.
  const compose = parse(
    readFileSync(join(REPO_ROOT, 'deploy', 'prometheus', 'prometheus.yml'), 'utf8'),
  ) as Yaml;
  assert.deepEqual(config.global, compose.global);
});
