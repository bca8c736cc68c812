/** The machine and versions a bench run reports with its figures. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, hostname, totalmem } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { MachineInfo } from './bench-result.js';

const PACKAGES = [
  '@confluentinc/kafka-javascript',
  'uWebSockets.js',
  'piscina',
  'pg',
  'fastify',
  'kafkajs',
  'autocannon',
];

export async function machineInfo(options: {
  repoRoot: string;
  databaseUrl: string;
  kafkaVersion: string | undefined;
  profile: string;
  sourceCommit: string | undefined;
}): Promise<MachineInfo> {
  const packages: Record<string, string> = {};
  for (const name of PACKAGES) {
    try {
      const manifest = JSON.parse(
        readFileSync(join(options.repoRoot, 'node_modules', name, 'package.json'), 'utf8'),
      ) as { version: string };
      packages[name] = manifest.version;
    } catch {
      packages[name] = 'missing';
    }
  }
  const kcat = spawnSync('kcat', ['-V'], { encoding: 'utf8' });
  packages.kcat =
    kcat.status === 0 ? (/kcat - .*?version ([^\s]+)/.exec(kcat.stdout)?.[1] ?? 'yes') : 'missing';
  const db = new pg.Client({ connectionString: options.databaseUrl });
  let postgres = 'unknown';
  try {
    await db.connect();
    postgres =
      (await db.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]?.v ??
      postgres;
  } finally {
    await db.end().catch(() => {});
  }
  const osRelease = readFileSync('/etc/os-release', 'utf8');
  const git = spawnSync('git', ['rev-parse', '--short', 'HEAD'], {
    cwd: options.repoRoot,
    encoding: 'utf8',
  });
  // Figures belong to the code that was built: say when the tree differed from the commit.
  const dirty = spawnSync(
    'git',
    ['status', '--porcelain', '--untracked-files=no', '--', 'ingest', 'aggregator', 'shared'],
    {
      cwd: options.repoRoot,
      encoding: 'utf8',
    },
  );
  const changed =
    dirty.status === 0
      ? dirty.stdout
          .split('\n')
          .filter((line) => line.trim() !== '')
          .map((line) => line.slice(3))
      : [];
  return {
    date: new Date().toISOString(),
    host: hostname(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    os: /^PRETTY_NAME="?([^"\n]+)"?/m.exec(osRelease)?.[1] ?? 'linux',
    node: process.version,
    kafka: options.kafkaVersion ?? 'external (KAFKA_BROKERS)',
    postgres,
    packages,
    gitCommit: options.sourceCommit ?? (git.status === 0 ? git.stdout.trim() : 'unknown'),
    uncommittedServiceFiles: changed,
    profile: options.profile,
  };
}
