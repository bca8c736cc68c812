/**
 * The dashboard page in real headless Chromium (Debian's `chromium`, driven by playwright-core)
 * against the real pipeline: ingest, the broker, the aggregator, PostgreSQL and the query
 * service, all on their default timings. Events with known figures are sent through ingest;
 * the page must show the oracle's figures for today and per type, its live chart must move
 * within 3 s of new events, its controls must work from the keyboard, a phone-width viewport
 * must not scroll sideways, and nothing may fail in the console or the network.
 *
 * `DASHBOARD_SCREENSHOT=docs/dashboard.png` also saves a screenshot of the page with this data
 * (docs/QUERY-API.md#dashboard).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, seededRandom, stackFromEnv, waitFor } from '../shared/testing.js';
import { readQueryConfig } from './config.js';
import { type QueryService, startQuery } from './service.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const CHROMIUM = '/usr/bin/chromium';
const SITE = 'shop';
const WRITE_KEY = 'dashboard-write-key';
const READ_KEY = 'dashboard-read-key';
const MINUTE_MS = 60_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
/** The page's promise: new events show on the live chart within this long of ingest's 200. */
const LIVE_BOUND_MS = 3_000;

/**
 * The site's zone puts the test's "now" near midday, whenever the test runs, so that "today"
 * holds the events of the last hours and the day does not turn during the test. `Etc/GMT-N` is
 * UTC+N (POSIX signs).
 */
const offsetHours = 12 - new Date().getUTCHours();
const TIME_ZONE =
  offsetHours === 0 ? 'UTC' : `Etc/GMT${offsetHours > 0 ? '-' : '+'}${Math.abs(offsetHours)}`;

interface SentEvent {
  user_id: string;
  activity_type: string;
  timestamp: number;
  event_id: string;
}

let resources: TestResources;
let ingestPort: number;
let query: QueryService;
let browser: Browser;

before(async () => {
  resources = await createTestResources('dashboard', stack, logger);
  ingestPort = await freeTcpPort();
  // Default windows, lateness and flush interval: the 3 s promise is measured on them.
  const env = {
    ...resources.env,
    TOPIC_PARTITIONS: '1',
    INGEST_PORT: String(ingestPort),
    AGGREGATOR_PORT: String(await freeTcpPort()),
    QUERY_PORT: String(await freeTcpPort()),
    API_KEYS: `${WRITE_KEY}=${SITE}@${TIME_ZONE}`,
    QUERY_API_KEYS: `${READ_KEY}=${SITE}`,
  };
  await resources.startIngest(env);
  await resources.startAggregator(env);
  query = await startQuery(readQueryConfig(env), logger.child({ service: 'query' }));
  resources.defer('closing the query service', () => query.close());
  browser = await chromium.launch({ executablePath: CHROMIUM });
  resources.defer('closing Chromium', () => browser.close());
});

after(() => resources?.cleanup());

/** Sends `events` through ingest's batch endpoint, 1,000 at a time; all must be accepted. */
async function send(events: readonly object[]): Promise<void> {
  for (let from = 0; from < events.length; from += 1_000) {
    const response = await fetch(`http://127.0.0.1:${ingestPort}/activities`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${WRITE_KEY}` },
      body: JSON.stringify(events.slice(from, from + 1_000)),
    });
    assert.equal(response.status, 200, await response.text());
  }
}

async function api<T>(path: string): Promise<T> {
  const response = await fetch(`http://127.0.0.1:${query.port}${path}`, {
    headers: { authorization: `Bearer ${READ_KEY}` },
  });
  const text = await response.text();
  assert.equal(response.status, 200, `${path}: ${text}`);
  return JSON.parse(text) as T;
}

/** Today's figures and those per type, counted from what was sent. */
function oracle(events: readonly SentEvent[], fromMs: number, toMs: number) {
  const today = events.filter((event) => event.timestamp >= fromMs && event.timestamp < toMs);
  // In the order the page's table lists them, so that the JSON texts compare.
  const figures = (subset: readonly SentEvent[]) => ({
    events: subset.length,
    page_views: subset.filter((event) => event.activity_type === PAGE_VIEW).length,
    unique_users: new Set(subset.map((event) => event.user_id)).size,
  });
  const types = [...new Set(today.map((event) => event.activity_type))].sort();
  return {
    total: figures(today),
    types: types.map((type) => ({
      activity_type: type,
      ...figures(today.filter((event) => event.activity_type === type)),
    })),
  };
}

/**
 * Evaluates `expression` in the page. In-page code is written as text: this file is compiled
 * for Node, without the browser's types.
 */
function inPage<T = unknown>(page: Page, expression: string): Promise<T> {
  return page.evaluate(expression) as Promise<T>;
}

/**
 * Waits until `expression` holds in the page. The predicate is made a function here, in Node:
 * Playwright compiles a function through the DevTools protocol, while a string predicate is
 * `eval`ed in the page, which the page's Content-Security-Policy (no `unsafe-eval`) refuses.
 */
function untilInPage(
  page: Page,
  expression: string,
  arg?: undefined,
  options?: { timeout?: number; polling?: number },
): Promise<unknown> {
  const predicate = new Function(`return (${expression});`) as () => unknown;
  return page.waitForFunction(predicate, arg, options);
}

/** What the page reports going wrong: console errors, page errors, failed or refused requests. */
function watchProblems(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error' || message.type() === 'warning') {
      problems.push(`console ${message.type()}: ${message.text()}`);
    }
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('requestfailed', (request) => {
    problems.push(`request failed: ${request.url()} ${request.failure()?.errorText ?? ''}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.url()}`);
  });
  return problems;
}

test('the dashboard shows the oracle figures, follows events live and works by keyboard and on a phone', async (t) => {
  const now = Date.now();
  const offsetMs = offsetHours * HOUR_MS;
  const dayStart = Math.floor((now + offsetMs) / DAY_MS) * DAY_MS - offsetMs;
  // Yesterday and today up to three minutes ago, denser lately; 40 users, four types.
  const random = seededRandom(22);
  const types = [PAGE_VIEW, PAGE_VIEW, PAGE_VIEW, 'click', 'click', 'signup', 'purchase'];
  const events: SentEvent[] = [];
  const first = dayStart - DAY_MS;
  const last = now - 3 * MINUTE_MS;
  for (let i = 0; i < 1_500; i++) {
    const timestamp = Math.floor(last - (last - first) * random() ** 1.6);
    events.push({
      user_id: `user-${Math.floor(random() * 40)}`,
      activity_type: types[Math.floor(random() * types.length)] as string,
      timestamp,
      event_id: `e-${i}`,
    });
  }
  events.sort((a, b) => a.timestamp - b.timestamp);
  await send(events);
  const expected = oracle(events, dayStart, dayStart + DAY_MS);
  t.diagnostic(`site zone ${TIME_ZONE}; today: ${JSON.stringify(expected.total)}`);

  // Once the API has every window of today (closed minutes), the page must show the same.
  let seen = '';
  await waitFor(
    async () => {
      const summary = await api<Record<string, unknown>>(`/v1/summary?range=today`);
      seen = JSON.stringify(summary);
      return summary.events === expected.total.events && summary.complete !== undefined
        ? summary
        : undefined;
    },
    {
      timeoutMs: 120_000,
      intervalMs: 500,
      what: "today's events in /v1/summary",
      describe: () => seen,
    },
  );

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const problems = watchProblems(page);
  await page.goto(`http://127.0.0.1:${query.port}/?site=${SITE}&key=${READ_KEY}`);
  await page.waitForSelector(`#today-events[data-value="${expected.total.events}"]`);

  // Today's figures, as numbers and as text.
  const figure = (id: string) =>
    inPage<{ value: number; text: string }>(
      page,
      `(() => { const node = document.getElementById('${id}');
        return { value: Number(node.dataset.value), text: node.textContent }; })()`,
    );
  const format = new Intl.NumberFormat('en');
  for (const [id, value] of [
    ['today-unique-users', expected.total.unique_users],
    ['today-page-views', expected.total.page_views],
    ['today-events', expected.total.events],
  ] as const) {
    assert.deepEqual(await figure(id), { value, text: format.format(value) }, id);
  }
  // The activity types of today (the range's default), in the page's table.
  await page.waitForSelector('#types-table tbody tr');
  const typeRows = await inPage<Array<{ activity_type: string }>>(
    page,
    `[...document.querySelectorAll('#types-table tbody tr')].map((row) => {
      const cells = [...row.querySelectorAll('td')].map((cell) => Number(cell.dataset.value));
      return { activity_type: row.dataset.type, events: cells[0], page_views: cells[1],
        unique_users: cells[2] };
    })`,
  );
  typeRows.sort((a, b) => a.activity_type.localeCompare(b.activity_type));
  assert.equal(JSON.stringify(typeRows), JSON.stringify(expected.types));
  assert.equal(await page.textContent('#site-name'), SITE);

  // The live chart: 31 minutes, holding every event of the last half hour.
  const recent = events.filter((event) => event.timestamp >= now - 29 * MINUTE_MS).length;
  const liveTotal = () =>
    inPage<number>(page, `Number(document.getElementById('live-figures').dataset.total)`);
  // Attached, not visible: a window without events is a bar of height 0, which Playwright
  // counts as hidden, and the oldest of the 31 may have none.
  await page.waitForSelector('#live-chart rect.bar', { state: 'attached' });
  assert.equal(await page.locator('#live-chart rect.bar').count(), 31);
  await waitFor(async () => ((await liveTotal()) >= recent ? true : undefined), {
    timeoutMs: 5_000,
    what: 'the last half hour on the live chart',
    describe: () => String(recent),
  });
  await untilInPage(
    page,
    `document.getElementById('live-status').textContent.startsWith('Live: updates arrive')`,
  );
  // New events now: each round must show within the bound of ingest's acknowledgement.
  const delays: number[] = [];
  for (let round = 0; round < 3; round++) {
    const before = await liveTotal();
    const batch = Array.from({ length: 5 + round }, (_, i) => ({
      user_id: `live-${round}-${i}`,
      activity_type: i % 2 === 0 ? PAGE_VIEW : 'click',
    }));
    await send(batch);
    const acknowledged = Date.now();
    await untilInPage(
      page,
      `Number(document.getElementById('live-figures').dataset.total) >= ${before + batch.length}`,
      undefined,
      { timeout: 10_000, polling: 20 },
    );
    delays.push(Date.now() - acknowledged);
    assert.equal(await liveTotal(), before + batch.length);
  }
  t.diagnostic(`live chart updated ${delays.join(', ')} ms after ingest acknowledged the events`);
  for (const delay of delays) {
    assert.ok(delay <= LIVE_BOUND_MS, `${delay} ms > ${LIVE_BOUND_MS} ms`);
  }

  // Keyboard: Tab walks the controls in reading order, each visibly focused (from the top of
  // the page, as after a fresh load); the figure and the range change with arrow keys, the
  // table opens with Enter.
  await inPage(
    page,
    `document.body.tabIndex = -1; document.body.focus(); document.body.removeAttribute('tabindex')`,
  );
  const order: string[] = [];
  for (let i = 0; i < 6; i++) {
    await page.keyboard.press('Tab');
    order.push(
      await inPage<string>(
        page,
        `(() => { const active = document.activeElement;
          const outline = getComputedStyle(active).outlineStyle === 'none' ? ' (no outline)' : '';
          return (active.id || active.tagName.toLowerCase()) + outline; })()`,
      ),
    );
  }
  assert.deepEqual(order, ['site', 'key', 'button', 'range', 'metric', 'summary']);
  await page.focus('#metric');
  await page.keyboard.press('ArrowDown');
  await untilInPage(
    page,
    `document.getElementById('range-totals').textContent.includes(' page views.')`,
  );
  assert.match(
    (await page.textContent('#range-totals')) ?? '',
    new RegExp(`^Today: ${format.format(expected.total.page_views)} page views\\.`),
  );
  await page.focus('#range');
  await page.keyboard.press('ArrowDown');
  await untilInPage(
    page,
    `document.getElementById('types-range').textContent.includes('yesterday')`,
  );
  await page.keyboard.press('ArrowUp');
  await untilInPage(page, `document.getElementById('types-range').textContent.includes('today')`);
  await page.focus('summary');
  await page.keyboard.press('Enter');
  assert.equal(await inPage(page, `document.querySelector('details').open`), true);
  const hours = await page.locator('#range-table tbody tr').count();
  assert.ok(hours >= 23 && hours <= 25, `${hours} hours in today's table`);

  const screenshot = process.env.DASHBOARD_SCREENSHOT;
  if (screenshot !== undefined && screenshot !== '') {
    await inPage(page, `document.querySelector('details').open = false`);
    await page.selectOption('#metric', 'events');
    await untilInPage(
      page,
      `document.getElementById('range-totals').textContent.includes(' events.')`,
    );
    await inPage(page, `document.activeElement.blur()`);
    await page.screenshot({ path: screenshot, fullPage: true });
    t.diagnostic(`screenshot saved to ${screenshot}`);
  }

  // A phone: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  // The charts redraw for the new width from a ResizeObserver: wait for that too.
  await untilInPage(
    page,
    `document.documentElement.scrollWidth <= 390 &&
     document.getElementById('live-chart').getBoundingClientRect().right <= 390`,
  );
  const widths = await inPage<{ page: number; chart: number }>(
    page,
    `({ page: document.documentElement.scrollWidth,
       chart: document.getElementById('live-chart').getBoundingClientRect().right })`,
  );
  assert.ok(widths.page <= 390 && widths.chart <= 390, JSON.stringify(widths));

  assert.deepEqual(problems, []);
});

test('a wrong read key is explained on the page in words', async (t) => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  t.after(() => withDeadline(context.close(), 10_000, 'closing the browser context'));
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${query.port}/?site=${SITE}&key=not-a-key`);
  const alert = page.locator('#errors[role="alert"] p').first();
  await alert.waitFor();
  assert.match((await alert.textContent()) ?? '', /read key was not accepted/);
  // Corrected in the form, from the keyboard: the figures appear and the message goes.
  await page.focus('#key');
  await page.keyboard.press('Control+A');
  await page.keyboard.type(READ_KEY);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#today-events[data-value]');
  await untilInPage(page, `document.querySelectorAll('#errors p').length === 0`);
  assert.equal(new URL(page.url()).searchParams.get('key'), READ_KEY);
});
