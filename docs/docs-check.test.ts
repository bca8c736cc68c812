/**
 * The Markdown documentation as a whole: every relative link resolves to a file or folder of
 * the repository, and every `#anchor` to a heading of its target (GitHub's anchors); the README
 * and the architecture page stay within the sizes that keep them readable.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { anchors, links } from './markdown.js';

/** The documentation: top-level and docs/ and bench/ Markdown files. */
const DOCS = [
  ...['README.md', 'CHANGELOG.md'],
  ...['docs', 'bench'].flatMap((dir) =>
    readdirSync(join(REPO_ROOT, dir))
      .filter((file) => file.endsWith('.md'))
      .map((file) => `${dir}/${file}`),
  ),
].sort();

/** Largest sizes, in bytes (issue 24): a README read in a screen or two, a focused design page. */
const SIZE_LIMITS: Record<string, number> = {
  'README.md': 12 * 1024,
  'docs/ARCHITECTURE.md': 25 * 1024,
};

const read = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');

describe('Markdown docs', () => {
  test('the files exist', () => {
    for (const path of ['README.md', 'CHANGELOG.md', 'docs/ARCHITECTURE.md']) {
      assert.ok(existsSync(join(REPO_ROOT, path)), path);
    }
  });

  for (const path of DOCS) {
    test(`${path}: every relative link and anchor resolves`, () => {
      const markdown = read(path);
      const broken: string[] = [];
      for (const { target, line } of links(markdown)) {
        // Absolute URLs (`https:`, `mailto:`) and protocol-relative ones are not checked here.
        if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('//')) continue;
        const [pathPart = '', anchor] = target.split('#', 2);
        const file = decodeURIComponent(pathPart.split('?')[0] ?? '');
        const resolved =
          file === '' ? join(REPO_ROOT, path) : resolve(dirname(join(REPO_ROOT, path)), file);
        const where = `${path}:${line + 1} → ${target}`;
        if (relative(REPO_ROOT, resolved).startsWith('..')) {
          broken.push(`${where} (outside the repository)`);
          continue;
        }
        if (!existsSync(resolved)) {
          broken.push(`${where} (no such file)`);
          continue;
        }
        if (anchor === undefined || anchor === '') continue;
        if (statSync(resolved).isDirectory() || !resolved.endsWith('.md')) {
          broken.push(`${where} (an anchor into a file that is not Markdown)`);
          continue;
        }
        if (!anchors(readFileSync(resolved, 'utf8')).has(decodeURIComponent(anchor))) {
          broken.push(`${where} (no heading with that anchor)`);
        }
      }
      assert.deepEqual(broken, []);
    });
  }

  for (const [path, limit] of Object.entries(SIZE_LIMITS)) {
    test(`${path} is at most ${limit / 1024} KB`, () => {
      const size = Buffer.byteLength(read(path));
      assert.ok(size <= limit, `${path} is ${size} bytes, over ${limit}`);
    });
  }
});
