/**
 * docs/CONFIGURATION.md against the code, both ways: every environment variable a process reads
 * is listed in that process's section, and every variable listed there is read. The names a
 * config reader accepts are found in its source (every `ConfigReader` call with a literal name)
 * and, for the readers that can run without side effects, by running them on a recording
 * environment, so that a name read in a way the source scan misses fails too.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, test } from 'node:test';
import { readAggregatorConfig } from '../aggregator/config.js';
import { readBenchConfig } from '../bench/bench-config.js';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { readIngestConfig } from '../ingest/config.js';
import { readQueryConfig } from '../query/config.js';
import { ConfigReader } from '../shared/config-reader.js';
import { codeSpans, headings, section, tableRows } from './markdown.js';

const DOC = 'docs/CONFIGURATION.md';
const doc = readFileSync(join(REPO_ROOT, DOC), 'utf8');
const source = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');

/** The methods of ConfigReader that take a variable's name first. */
const READER_METHODS = Object.getOwnPropertyNames(ConfigReader.prototype).filter(
  (name) => !['constructor', 'problem', 'finish'].includes(name),
);

/** Names passed as a literal to a ConfigReader method in `path`. */
function readerNames(path: string): Set<string> {
  const call = new RegExp(
    `\\.(?:${READER_METHODS.join('|')})\\(\\s*['"]([A-Z][A-Z0-9_]*)['"]`,
    'g',
  );
  return new Set([...source(path).matchAll(call)].map((match) => match[1] ?? ''));
}

/** Names read as `env.NAME` or `process.env.NAME` in `path`. */
function envPropertyNames(path: string): Set<string> {
  return new Set(
    [...source(path).matchAll(/\benv\.([A-Z][A-Z0-9_]*)\b/g)].map((match) => match[1] ?? ''),
  );
}

/** Make variables (`$(NAME)`) used by the recipe of `target` in the Makefile. */
function makeRecipeVariables(target: string): Set<string> {
  const lines = source('Makefile').split('\n');
  const start = lines.findIndex((line) => line.startsWith(`${target}:`));
  assert.ok(start >= 0, `Makefile has a ${target} target`);
  const names = new Set<string>();
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith('\t')) break;
    for (const match of line.matchAll(/\$\(([A-Z][A-Z0-9_]*)\)/g)) names.add(match[1] ?? '');
  }
  return names;
}

/** Variables docker-compose.yml interpolates (`${NAME}` / `${NAME:-default}`). */
function composeVariables(): Set<string> {
  return new Set(
    [...source('docker-compose.yml').matchAll(/\$\{([A-Z][A-Z0-9_]*)/g)].map((m) => m[1] ?? ''),
  );
}

const union = (...sets: Set<string>[]): Set<string> => new Set(sets.flatMap((set) => [...set]));

/** Names a config reader reads, recorded by running it on a proxy of an empty environment. */
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

const BASELINES = readdirSync(join(REPO_ROOT, 'bench', 'baselines'))
  .filter((file) => file.endsWith('.ts'))
  .map((file) => `bench/baselines/${file}`);

/**
 * Each section of the page (its `##` heading) and the names its process reads, with the source
 * files that hold its config readers.
 */
const SECTIONS: Record<string, { readers: string[]; names: () => Set<string> }> = {
  ingest: { readers: ['ingest/config.ts'], names: () => readerNames('ingest/config.ts') },
  aggregator: {
    readers: ['aggregator/config.ts'],
    names: () => readerNames('aggregator/config.ts'),
  },
  query: { readers: ['query/config.ts'], names: () => readerNames('query/config.ts') },
  'Memory allocator': {
    readers: [],
    names: () => envPropertyNames('deploy/local/child-process.ts'),
  },
  'Local stack': {
    readers: ['deploy/local/stack.ts'],
    names: () => readerNames('deploy/local/stack.ts'),
  },
  'make up': { readers: ['deploy/local/up.ts'], names: () => readerNames('deploy/local/up.ts') },
  'make test': {
    readers: [],
    names: () => union(makeRecipeVariables('test'), envPropertyNames('e2e/activity-oracle.ts')),
  },
  'make chaos': {
    readers: ['chaos/run-chaos.ts'],
    names: () => union(readerNames('chaos/run-chaos.ts'), makeRecipeVariables('chaos')),
  },
  'make bench': {
    readers: ['bench/bench-config.ts'],
    names: () => union(readerNames('bench/bench-config.ts'), makeRecipeVariables('bench')),
  },
  'Benchmark baselines': {
    readers: BASELINES,
    names: () => union(...BASELINES.map(readerNames)),
  },
  'Docker Compose': { readers: [], names: composeVariables },
};

/** The variables listed in a section's tables: the names in the first column. */
function documented(title: string): Set<string> {
  const body = section(doc, title);
  assert.ok(body !== undefined, `${DOC} has a section "${title}"`);
  const names = new Set<string>();
  for (const [first = ''] of tableRows(body)) {
    for (const span of codeSpans(first)) if (/^[A-Z][A-Z0-9_]*$/.test(span)) names.add(span);
  }
  return names;
}

/** Every non-test TypeScript source of the project that builds a ConfigReader. */
function filesWithReaders(): string[] {
  const found: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (['node_modules', 'dist', '.local', '.git'].includes(entry.name)) continue;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) {
        if (/new ConfigReader\(/.test(readFileSync(path, 'utf8'))) {
          found.push(relative(REPO_ROOT, path));
        }
      }
    }
  };
  walk(REPO_ROOT);
  return found.sort();
}

const sorted = (set: Set<string>): string[] => [...set].sort();

describe('docs/CONFIGURATION.md', () => {
  for (const [title, { names }] of Object.entries(SECTIONS)) {
    test(`"${title}" lists exactly the variables its process reads`, () => {
      const read = names();
      const listed = documented(title);
      assert.ok(read.size > 0, `found no variables for "${title}": the source scan is broken`);
      const missing = sorted(read).filter((name) => !listed.has(name));
      const extra = sorted(listed).filter((name) => !read.has(name));
      assert.deepEqual(missing, [], `read but not listed under "${title}" in ${DOC}`);
      assert.deepEqual(extra, [], `listed under "${title}" in ${DOC} but not read`);
    });
  }

  test('every process with a config reader has its section', () => {
    const covered = new Set(Object.values(SECTIONS).flatMap((entry) => entry.readers));
    const uncovered = filesWithReaders().filter((file) => !covered.has(file));
    assert.deepEqual(uncovered, [], `config readers with no section in ${DOC}`);
  });

  test('every section with a variable table is checked here', () => {
    const titled = headings(doc).filter((heading) => heading.level === 2);
    for (const heading of titled) {
      const rows = tableRows(section(doc, heading.text) ?? '');
      if (rows[0]?.[0] !== 'variable') continue;
      assert.ok(heading.text in SECTIONS, `section "${heading.text}" is not checked`);
    }
  });

  test('the source scan finds every name the readers read when they run', () => {
    const runs: Array<[string, Set<string>]> = [
      ['ingest/config.ts', namesRead(readIngestConfig)],
      ['aggregator/config.ts', namesRead(readAggregatorConfig)],
      ['query/config.ts', namesRead(readQueryConfig)],
      ['bench/bench-config.ts', namesRead((env) => readBenchConfig(env, [], 'results'))],
    ];
    for (const [path, read] of runs) {
      assert.deepEqual(sorted(readerNames(path)), sorted(read), path);
    }
  });
});
