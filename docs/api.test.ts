/**
 * docs/API.md against ingest/openapi.json, both ways: every operation has a section, every
 * status it can answer is a row of that section's table, and the `code`s of each status's row(s)
 * are exactly the ones the contract allows. The event's fields and the codes of a batch's
 * rejected entries are checked the same way.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { codeSpans, headings, section, tableRows } from './markdown.js';

type Node = Record<string, unknown>;

const DOC = 'docs/API.md';
const doc = readFileSync(join(REPO_ROOT, DOC), 'utf8');
const spec = JSON.parse(readFileSync(join(REPO_ROOT, 'ingest', 'openapi.json'), 'utf8')) as Node;

const METHODS = ['get', 'head', 'post', 'put', 'patch', 'delete', 'options'];

/** Follows `$ref`s (local ones: `#/components/...`). */
function deref(node: unknown): Node {
  let current = node as Node;
  while (typeof current.$ref === 'string') {
    const ref: string = current.$ref;
    current = ref
      .slice(2)
      .split('/')
      .reduce<Node>((parent, key) => parent[key] as Node, spec);
  }
  return current;
}

/** The values a body's top-level `code` may take (through `oneOf`/`anyOf`/`allOf`). */
function codesOf(schemaNode: unknown, into = new Set<string>()): Set<string> {
  const schema = deref(schemaNode);
  for (const key of ['oneOf', 'anyOf', 'allOf']) {
    for (const part of (schema[key] as unknown[] | undefined) ?? []) codesOf(part, into);
  }
  const code = (schema.properties as Node | undefined)?.code as Node | undefined;
  if (code !== undefined) {
    if (typeof code.const === 'string') into.add(code.const);
    for (const value of (code.enum as string[] | undefined) ?? []) into.add(value);
  }
  return into;
}

/** Status → codes of one response map. */
function statusCodes(responses: Node): Map<string, Set<string>> {
  const byStatus = new Map<string, Set<string>>();
  for (const [status, response] of Object.entries(responses)) {
    const codes = new Set<string>();
    const content = (deref(response).content as Node | undefined) ?? {};
    for (const media of Object.values(content)) codesOf((media as Node).schema, codes);
    byStatus.set(status, codes);
  }
  return byStatus;
}

/** The operations of the contract, as `METHOD /path`, with what each status may carry. */
const operations = new Map<string, Map<string, Set<string>>>();
for (const [path, item] of Object.entries(spec.paths as Node)) {
  for (const [method, operation] of Object.entries(item as Node)) {
    if (!METHODS.includes(method)) continue;
    const responses = (operation as Node).responses as Node;
    operations.set(`${method.toUpperCase()} ${path}`, statusCodes(responses));
  }
}

/** A section's table as status → codes (rows of one status merged); the last column holds codes. */
function documentedStatuses(title: string): Map<string, Set<string>> {
  const body = section(doc, title);
  assert.ok(body !== undefined, `${DOC} has a section "${title}"`);
  const byStatus = new Map<string, Set<string>>();
  for (const row of tableRows(body)) {
    const [status = ''] = row;
    if (!/^\d{3}$/.test(status)) continue;
    const codes = byStatus.get(status) ?? new Set<string>();
    for (const code of codeSpans(row.at(-1) ?? '')) codes.add(code);
    byStatus.set(status, codes);
  }
  return byStatus;
}

const asObject = (map: Map<string, Set<string>>): Record<string, string[]> =>
  Object.fromEntries([...map].sort().map(([status, codes]) => [status, [...codes].sort()]));

/** Headings naming operations: `GET /readyz, HEAD /readyz` covers both. */
const operationHeadings = headings(doc)
  .map((heading) => ({
    title: heading.text,
    covers: heading.text.split(',').map((part) => part.trim()),
  }))
  .filter(({ covers }) => covers.every((part) => /^[A-Z]+ \/\S*$/.test(part)));

describe('docs/API.md', () => {
  test('every operation of the contract has a section, and every section is an operation', () => {
    const documented = operationHeadings.flatMap((heading) => heading.covers).sort();
    assert.deepEqual(documented, [...operations.keys()].sort());
  });

  for (const { title, covers } of operationHeadings) {
    test(`"${title}": the statuses and codes of the contract, no more`, () => {
      const expected = new Map<string, Set<string>>();
      for (const name of covers) {
        for (const [status, codes] of operations.get(name) ?? []) {
          const merged = expected.get(status) ?? new Set<string>();
          for (const code of codes) merged.add(code);
          expected.set(status, merged);
        }
      }
      assert.deepEqual(asObject(documentedStatuses(title)), asObject(expected));
    });
  }

  test('"Any other path or method": 404 and 405 as the contract describes them', () => {
    const responses = (spec.components as Node).responses as Node;
    const expected = statusCodes({ 404: responses.NotFound, 405: responses.MethodNotAllowed });
    assert.deepEqual(asObject(documentedStatuses('Any other path or method')), asObject(expected));
  });

  test('"Rejected events in a batch": the codes an entry of `rejected` may carry', () => {
    const body = section(doc, 'Rejected events in a batch') ?? '';
    const listed = tableRows(body)
      .slice(1)
      .flatMap(([first = '']) => codeSpans(first));
    const schemas = (spec.components as Node).schemas as Node;
    assert.deepEqual(listed.sort(), [...codesOf(schemas.RejectedEvent)].sort());
  });

  test('"The event": every field of the schema, no more', () => {
    const body = section(doc, 'The event') ?? '';
    const listed = tableRows(body)
      .slice(1)
      .flatMap(([first = '']) => codeSpans(first));
    const schemas = (spec.components as Node).schemas as Node;
    const fields = Object.keys((schemas.ActivityEvent as Node).properties as Node);
    assert.deepEqual(listed.sort(), fields.sort());
  });
});
