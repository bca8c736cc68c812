/**
 * docs/OPERATIONS.md against the alert rules and the metrics: every alert in
 * deploy/prometheus/alerts.yml has a `runbook_url` naming a section of the page, that section
 * says what the alert means, how to confirm it and what to do, and every section under "Alerts"
 * belongs to an alert. Every metric the services register is in the metrics table, and the
 * table lists no metric that does not exist.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { REPO_ROOT } from '../deploy/local/stack.js';
import { anchors, codeSpans, headings, section, tableRows } from './markdown.js';

const DOC = 'docs/OPERATIONS.md';
const doc = readFileSync(join(REPO_ROOT, DOC), 'utf8');
const source = (path: string): string => readFileSync(join(REPO_ROOT, path), 'utf8');

interface Rule {
  alert?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rules = (
  parse(source('deploy/prometheus/alerts.yml')) as { groups: Array<{ rules: Rule[] }> }
).groups.flatMap((group) => group.rules.filter((rule) => rule.alert !== undefined));

/** The `###` sections under `## Alerts`. */
function alertSections(): string[] {
  const all = headings(doc);
  const start = all.findIndex((heading) => heading.level === 2 && heading.text === 'Alerts');
  assert.ok(start >= 0, `${DOC} has an "Alerts" section`);
  const after = all.slice(start + 1);
  const end = after.findIndex((heading) => heading.level <= 2);
  return (end < 0 ? after : after.slice(0, end))
    .filter((heading) => heading.level === 3)
    .map((heading) => heading.text);
}

/** Metric names the services register: literal `name:`s of their metrics files, and the state. */
function registeredMetrics(): Set<string> {
  const names = new Set(['ingest_state', 'aggregator_state', 'query_state']);
  for (const path of ['ingest/metrics.ts', 'aggregator/metrics.ts', 'query/metrics.ts']) {
    for (const match of source(path).matchAll(/\bname:\s*'([a-z][a-z0-9_]*)'/g)) {
      names.add(match[1] ?? '');
    }
  }
  return names;
}

describe('docs/OPERATIONS.md', () => {
  test('alerts.yml has alerts to check', () => {
    assert.ok(rules.length > 0);
  });

  for (const rule of rules) {
    test(`${rule.alert}: runbook_url names its section, which says what, how to confirm, what to do`, () => {
      const url = rule.annotations?.runbook_url;
      assert.ok(url !== undefined, `${rule.alert} has a runbook_url annotation`);
      const match = /(?:^|\/)docs\/OPERATIONS\.md#([^#]+)$/.exec(url);
      assert.ok(match !== null, `${rule.alert}: ${url} points at ${DOC}#<section>`);
      const anchor = match[1] ?? '';
      assert.ok(anchors(doc).has(anchor), `${DOC} has no section #${anchor}`);
      const heading = headings(doc).find((h) => h.slug === anchor);
      assert.equal(heading?.text, rule.alert, `#${anchor} is the section of ${rule.alert}`);
      const body = section(doc, rule.alert ?? '') ?? '';
      for (const part of ['**Means.**', '**Confirm.**', '**Do.**']) {
        assert.ok(body.includes(part), `the section of ${rule.alert} has ${part}`);
      }
    });
  }

  test('every runbook section under "Alerts" belongs to an alert', () => {
    const alerts = new Set(rules.map((rule) => rule.alert));
    const orphans = alertSections().filter((title) => !alerts.has(title));
    assert.deepEqual(orphans, []);
  });

  test('the alerts table lists every alert with its severity, and no other', () => {
    const body = section(doc, 'Alerts') ?? '';
    const overview = body.split(/^### /m)[0] ?? '';
    const listed = tableRows(overview)
      .slice(1)
      .map(
        ([alert = '', severity = '']) => `${alert.replace(/^\[([^\]]+)\].*$/, '$1')} ${severity}`,
      );
    const expected = rules.map((rule) => `${rule.alert} ${rule.labels?.severity}`);
    assert.deepEqual(listed.sort(), expected.sort());
  });

  test('the metrics table lists every metric the services register, and no other', () => {
    const body = section(doc, 'Metrics');
    assert.ok(body !== undefined, `${DOC} has a "Metrics" section`);
    const listed = new Set(
      tableRows(body)
        .slice(1)
        .flatMap(([first = '']) => codeSpans(first)),
    );
    const registered = registeredMetrics();
    assert.ok(registered.size > 2, 'found the registered metrics: the source scan works');
    const missing = [...registered].filter((name) => !listed.has(name)).sort();
    const extra = [...listed].filter((name) => !registered.has(name)).sort();
    assert.deepEqual(missing, [], `registered but not in ${DOC}`);
    assert.deepEqual(extra, [], `in ${DOC} but not registered`);
  });
});
