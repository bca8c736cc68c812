/** Ingest, the aggregator and the query service as the separate processes the bench measures (`node dist/.../main.js`). */
import { freeTcpPort } from '../shared/testing.js';
import { BenchProcess, distScript } from './bench-process.js';

export interface RunningService {
  process: BenchProcess;
  port: number;
  url: string;
}

/** Node's flags for a V8 CPU profile of every thread, written to `dir` on exit; none without. */
export function cpuProfileArgs(dir: string | undefined): string[] {
  return dir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${dir}`];
}

export async function startIngestProcess(options: {
  kafkaBrokers: string;
  topic: string;
  env?: Record<string, string>;
  /** Where to write a V8 CPU profile when it stops (`--cpu-prof`); unset: none. */
  cpuProfileDir?: string | undefined;
}): Promise<RunningService> {
  const port = await freeTcpPort();
  const profile = cpuProfileArgs(options.cpuProfileDir);
  const process = new BenchProcess('ingest', [...profile, distScript('../ingest/main.js')], {
    KAFKA_BROKERS: options.kafkaBrokers,
    TOPIC: options.topic,
    INGEST_HOST: '127.0.0.1',
    INGEST_PORT: String(port),
    LOG_LEVEL: 'warn',
    ...options.env,
  });
  const url = `http://127.0.0.1:${port}`;
  await process.waitHttpOk(`${url}/readyz`);
  return { process, port, url };
}

export async function startAggregatorProcess(options: {
  kafkaBrokers: string;
  databaseUrl: string;
  topic: string;
  /** A fresh schema: positions come from its rows, so a fresh one reads the topic from the start. */
  schema: string;
  group: string;
  workers: number;
  env?: Record<string, string>;
  /** Extra node flags, e.g. `--cpu-prof`. */
  nodeArgs?: string[];
}): Promise<RunningService> {
  const port = await freeTcpPort();
  const process = new BenchProcess(
    `aggregator(WORKERS=${options.workers})`,
    [...(options.nodeArgs ?? []), distScript('../aggregator/main.js')],
    {
      KAFKA_BROKERS: options.kafkaBrokers,
      DATABASE_URL: options.databaseUrl,
      DATABASE_SCHEMA: options.schema,
      TOPIC: options.topic,
      CONSUMER_GROUP: options.group,
      WORKERS: String(options.workers),
      AGGREGATOR_HOST: '127.0.0.1',
      AGGREGATOR_PORT: String(port),
      LOG_LEVEL: 'warn',
      ...options.env,
    },
  );
  const url = `http://127.0.0.1:${port}`;
  await process.waitHttpOk(`${url}/healthz`);
  return { process, port, url };
}

/** The sum of a Prometheus metric's samples (all labels), undefined when unreachable. */
export async function readMetric(url: string, name: string): Promise<number | undefined> {
  const text = await readMetricsText(url);
  if (text === undefined) return undefined;
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) {
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return total;
}

export async function readMetricsText(url: string): Promise<string | undefined> {
  try {
    const response = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(2_000) });
    return response.status === 200 ? await response.text() : undefined;
  } catch {
    return undefined;
  }
}

export async function startQueryProcess(options: {
  databaseUrl: string;
  schema: string;
  name?: string;
  env?: Record<string, string>;
}): Promise<RunningService> {
  const port = await freeTcpPort();
  const process = new BenchProcess(options.name ?? 'query', [distScript('../query/main.js')], {
    DATABASE_URL: options.databaseUrl,
    DATABASE_SCHEMA: options.schema,
    QUERY_HOST: '127.0.0.1',
    QUERY_PORT: String(port),
    LOG_LEVEL: 'warn',
    ...options.env,
  });
  const url = `http://127.0.0.1:${port}`;
  await process.waitHttpOk(`${url}/readyz`);
  return { process, port, url };
}
