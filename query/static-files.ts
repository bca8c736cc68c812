import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The dashboard page as built (`dist/query/web/`: the compiled scripts, and the HTML and CSS the
 * build copies beside them). Never the source folder: its TypeScript and tsconfig are not the
 * page's to serve.
 */
export const WEB_ROOTS = [fileURLToPath(new URL('./web/', import.meta.url))];

/**
 * Headers of the page's own responses. The page loads its script, style and data from this
 * origin only, with no inline script or style (the favicon is an empty `data:` URL); the
 * browser must not guess a type other than the one sent.
 */
export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'",
  'x-content-type-options': 'nosniff',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json',
};

/** At most this many bytes of files are held. */
const MAX_TOTAL_BYTES = 16 * 1_048_576;

export interface StaticFile {
  type: string;
  body: Buffer;
}

/**
 * The page's files, read once at start-up into memory (a few small files): served from memory,
 * with no path ever joined from a request, so nothing outside the folder can be reached. `/` is
 * `index.html`.
 */
export class StaticFiles {
  private readonly files = new Map<string, StaticFile>();

  constructor(roots: readonly string[] = WEB_ROOTS) {
    let total = 0;
    const walk = (root: string, dir: string): void => {
      let entries: string[];
      try {
        entries = readdirSync(dir);
      } catch {
        return;
      }
      for (const name of entries) {
        if (name.startsWith('.') || name.endsWith('.test.ts')) continue;
        const path = join(dir, name);
        const stat = statSync(path);
        if (stat.isDirectory()) {
          walk(root, path);
          continue;
        }
        const type = TYPES[extname(name).toLowerCase()];
        if (type === undefined || name.endsWith('.d.ts') || total + stat.size > MAX_TOTAL_BYTES) {
          continue;
        }
        total += stat.size;
        const url = `/${relative(root, path).split('\\').join('/')}`;
        this.files.set(url, { type, body: readFileSync(path) });
      }
    };
    for (const root of roots) walk(root, root);
    const index = this.files.get('/index.html');
    if (index !== undefined) this.files.set('/', index);
  }

  get(path: string): StaticFile | undefined {
    return this.files.get(path);
  }

  get count(): number {
    return this.files.size;
  }
}
