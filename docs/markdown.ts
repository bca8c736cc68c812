/**
 * Just enough Markdown for the documentation checks: headings with GitHub's anchors, sections,
 * tables and relative links. Fenced code blocks are skipped everywhere.
 */

export interface Heading {
  level: number;
  /** The heading as written, inline markup included. */
  text: string;
  /** GitHub's anchor for it, `-1`, `-2`… appended to repeats. */
  slug: string;
  /** Index of the heading's line. */
  line: number;
}

export interface Link {
  target: string;
  line: number;
}

/** The lines of `markdown` with every fenced code block's lines (fences included) blanked. */
export function proseLines(markdown: string): string[] {
  let fence: string | null = null;
  return markdown.split('\n').map((line) => {
    const opener = /^\s{0,3}(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence === null && opener !== undefined) {
      fence = opener;
      return '';
    }
    if (fence !== null) {
      if (line.trim().startsWith(fence)) fence = null;
      return '';
    }
    return line;
  });
}

/** Heading text as GitHub renders it for the anchor: links become their text, no markup. */
function plainText(text: string): string {
  return text.replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1').trim();
}

/**
 * GitHub's heading anchor (as github-slugger makes it): lower case, every character that is not
 * a letter, mark, number, connector (`_`), space or hyphen removed, spaces made hyphens.
 */
export function githubSlug(text: string): string {
  return plainText(text)
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-');
}

/** The ATX headings (`#` … `######`) outside code blocks, with their anchors. */
export function headings(markdown: string): Heading[] {
  const seen = new Map<string, number>();
  const found: Heading[] = [];
  proseLines(markdown).forEach((line, index) => {
    const match = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (match === null) return;
    const [, hashes = '', text = ''] = match;
    const base = githubSlug(text);
    const repeats = seen.get(base) ?? 0;
    seen.set(base, repeats + 1);
    found.push({
      level: hashes.length,
      text: plainText(text),
      slug: repeats === 0 ? base : `${base}-${repeats}`,
      line: index,
    });
  });
  return found;
}

/** Every anchor a link may point at in this document. */
export function anchors(markdown: string): Set<string> {
  const ids = new Set(headings(markdown).map((heading) => heading.slug));
  // Explicit HTML anchors (`<a id="...">`), which GitHub keeps as they are.
  for (const match of markdown.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) {
    if (match[1] !== undefined) ids.add(match[1]);
  }
  return ids;
}

/**
 * The body of the section under the heading whose plain text is `title` (first match, any
 * level): from the line after it to the next heading of the same or a higher level.
 */
export function section(markdown: string, title: string): string | undefined {
  const all = headings(markdown);
  const start = all.findIndex((heading) => heading.text === title);
  const heading = all[start];
  if (heading === undefined) return undefined;
  const next = all.slice(start + 1).find((other) => other.level <= heading.level);
  return markdown
    .split('\n')
    .slice(heading.line + 1, next?.line)
    .join('\n');
}

/** The cells of every table row, header included, separator rows left out. */
export function tableRows(markdown: string): string[][] {
  const rows: string[][] = [];
  for (const line of proseLines(markdown)) {
    const trimmed = line.trim();
    if (!trimmed.startsWith('|')) continue;
    const cells = trimmed
      .replace(/^\|/, '')
      .replace(/\|$/, '')
      .split(/(?<!\\)\|/)
      .map((cell) => cell.trim());
    if (cells.every((cell) => /^:?-+:?$/.test(cell))) continue;
    rows.push(cells);
  }
  return rows;
}

/** The text inside each `code span` of `text`. */
export function codeSpans(text: string): string[] {
  return [...text.matchAll(/`([^`]+)`/g)].map((match) => match[1] ?? '');
}

/**
 * Inline links and images (`[text](target)`) and link reference definitions (`[label]: target`)
 * outside code, with their line index.
 */
export function links(markdown: string): Link[] {
  const found: Link[] = [];
  proseLines(markdown).forEach((line, index) => {
    const definition = /^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?/.exec(line);
    if (definition !== null) {
      found.push({ target: definition[1] ?? '', line: index });
      return;
    }
    const prose = line.replace(/`[^`]*`/g, '');
    for (const match of prose.matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/g)) {
      found.push({ target: match[1] ?? '', line: index });
    }
  });
  return found;
}
