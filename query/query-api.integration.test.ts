/**
 * The query API against the oracle. Three sites in three zones — UTC, Asia/Kathmandu (+05:45:
 * hours start at a quarter past the UTC hour) and America/St_Johns (−02:30, then −03:30 from
 * 1 November 2026: a 25-hour day) — get four days of events through the aggregator's real write
 * path (`PartitionWindows` fed by the worker logic, `writeFlush` into PostgreSQL; in-process,
 * since a running aggregator dead-letters events that old). The answers of a query service on
 * the default settings must equal what the oracle computes from the events with `Intl`: minute,
 * hour and day buckets, true-union unique users over ranges, per site and per activity type,
 * the previous period and the breakdown. Then every refusal: each 400 code, 401, 404, 405, 429
 * with Retry-After, and 503 when a query passes its deadline (a lock held on the table it
 * reads); and the cache, which answers identical queries from one computation.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { TestSchemas } from '../aggregator/test-schemas.js';
import { getJson, PartitionWriter, serviceCounter, startQueryOn } from '../e2e/query-fixture.js';
import {
  localDayStart,
  localHourStart,
  RollupOracle,
  type SiteEvent,
} from '../e2e/rollup-oracle.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { stackFromEnv } from '../shared/testing.js';
import type { QueryService } from './service.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 60_000;
const HOUR_MS = 3_600_000;
const schemas = new TestSchemas(stack.databaseUrl, 'query_api');

const SITES = [
  { site: 'utc', zone: 'UTC' },
  { site: 'kathmandu', zone: 'Asia/Kathmandu' },
  { site: 'stjohns', zone: 'America/St_Johns' },
] as const;
const TYPES = [PAGE_VIEW, 'click', 'signup'];
/** Four UTC days around St John's change back (1 November 2026, 02:00 local). */
const SPAN_FROM = Date.UTC(2026, 9, 31);
const SPAN_TO = Date.UTC(2026, 10, 4);

/** One read key per site and purpose: each test has a rate-limit bucket of its own. */
const PURPOSES = ['oracle', 'errors', 'limit', 'cache', 'deadline'] as const;
const keyOf = (site: string, purpose: (typeof PURPOSES)[number]) =>
  `${purpose}-${site}-read-key-0123456789`;

const events: SiteEvent[] = [];
const oracle = new RollupOracle(WINDOW_MS);
let db: pg.Client;
let schema: string;
let service: QueryService;
let base: string;

before(async () => {
  schema = schemas.name();
  db = await schemas.connect(schema);
  const { migrate } = await import('../aggregator/migrations.js');
  await migrate(db, schema);
  // An event every 7 minutes per site; 150 users come back across days, in a pattern that
  // makes the union over a range far smaller than the sum of each day's uniques.
  let k = 0;
  for (let ms = SPAN_FROM; ms < SPAN_TO; ms += 7 * 60_000) {
    for (const { site, zone } of SITES) {
      k++;
      events.push({
        site,
        time_zone: zone,
        user_id: `user-${(k * 37) % 150}`,
        activity_type: TYPES[Math.floor(k / 3) % 3] as string,
        timestamp: ms + (k % 50) * 1000,
        event_id: `${site}-${k}`,
      });
    }
  }
  for (const event of events) oracle.add(event);
  const writer = await PartitionWriter.claim(db, 0, WINDOW_MS);
  // In daily batches, every window closing (so hours and days are written), as a running
  // aggregator would have done.
  for (let day = SPAN_FROM; day < SPAN_TO; day += 86_400_000) {
    const batch = events.filter((e) => e.timestamp >= day && e.timestamp < day + 86_400_000);
    await writer.write(batch, { closeThrough: day + 86_400_000 - WINDOW_MS });
  }
  const keys = SITES.flatMap(({ site }) => PURPOSES.map((p) => `${keyOf(site, p)}=${site}`));
  ({ service, url: base } = await startQueryOn(
    stack.databaseUrl,
    schema,
    { QUERY_API_KEYS: keys.join(',') },
    logger,
  ));
});

after(async () => {
  await withDeadline(service?.close() ?? Promise.resolve(), 10_000, 'closing the query service');
  await schemas.dropAll();
});

// ---------------------------------------------------------------------------------------------
// The oracle's answers

interface Tally {
  users: Set<string>;
  pageViews: number;
  events: number;
}

function tally(site: string, fromMs: number, toMs: number, type?: string): Tally {
  const result: Tally = { users: new Set(), pageViews: 0, events: 0 };
  for (const e of events) {
    if (e.site !== site || e.timestamp < fromMs || e.timestamp >= toMs) continue;
    if (type !== undefined && e.activity_type !== type) continue;
    result.users.add(e.user_id);
    result.events++;
    if (e.activity_type === PAGE_VIEW) result.pageViews++;
  }
  return result;
}

const metricOf = (t: Tally, metric: string): number =>
  metric === 'unique_users' ? t.users.size : metric === 'page_views' ? t.pageViews : t.events;

/** The starts of `zone`'s hours or days in [fromMs, toMs), found with the oracle's `Intl`. */
function oracleStarts(fromMs: number, toMs: number, period: 'hour' | 'day', zone: string) {
  const starts = new Set<number>();
  for (let ms = fromMs; ms < toMs; ms += 15 * 60_000) {
    starts.add(period === 'hour' ? localHourStart(ms, zone) : localDayStart(ms, zone));
  }
  return [...starts].sort((a, b) => a - b);
}

/** The expected buckets of a timeseries, as JSON text (compared as text, not deep-equal). */
function expectedBuckets(
  site: string,
  starts: number[],
  toMs: number,
  metric: string,
  type?: string,
): string {
  return JSON.stringify(
    starts.map((start, i) => ({
      start: new Date(start).toISOString(),
      value: metricOf(tally(site, start, starts[i + 1] ?? toMs, type), metric),
    })),
  );
}

const seenBuckets = (body: { buckets: Array<{ start: string; value: number }> }): string =>
  JSON.stringify(body.buckets.map(({ start, value }) => ({ start, value })));

// ---------------------------------------------------------------------------------------------

describe('answers equal the oracle in three time zones', () => {
  for (const { site, zone } of SITES) {
    test(`${site} (${zone}): minute buckets, any zone`, async (t) => {
      const key = keyOf(site, 'oracle');
      const fromMs = Date.UTC(2026, 10, 1, 1);
      const toMs = fromMs + 6 * HOUR_MS;
      for (const metric of ['unique_users', 'page_views', 'events']) {
        const answer = await getJson(
          base,
          '/v1/timeseries',
          {
            metric,
            interval: 'minute',
            from: new Date(fromMs).toISOString(),
            to: new Date(toMs).toISOString(),
          },
          key,
        );
        assert.equal(answer.status, 200, answer.text);
        assert.equal(answer.body.site, site);
        assert.equal(answer.body.time_zone, zone, 'the site zone by default');
        const starts = Array.from({ length: 360 }, (_, i) => fromMs + i * WINDOW_MS);
        assert.equal(seenBuckets(answer.body), expectedBuckets(site, starts, toMs, metric));
        assert.ok(answer.body.buckets.every((b: { complete: boolean }) => b.complete));
      }
      // Minute buckets answer in any zone: a Kathmandu date asked of every site.
      const kathmanduDay = await getJson(
        base,
        '/v1/timeseries',
        {
          metric: 'events',
          interval: 'minute',
          from: '2026-11-02',
          to: '2026-11-03',
          tz: 'Asia/Kathmandu',
        },
        key,
      );
      assert.equal(kathmanduDay.status, 200, kathmanduDay.text);
      const dayStart = Date.UTC(2026, 10, 1, 18, 15);
      assert.equal(kathmanduDay.body.from, new Date(dayStart).toISOString());
      const starts = Array.from({ length: 1440 }, (_, i) => dayStart + i * WINDOW_MS);
      assert.equal(
        seenBuckets(kathmanduDay.body),
        expectedBuckets(site, starts, dayStart + 86_400_000, 'events'),
      );
      t.diagnostic(`${3 * 360 + 1440} minute buckets equal the oracle's`);
    });

    test(`${site} (${zone}): hour and day buckets in the site zone, every type and each`, async (t) => {
      const key = keyOf(site, 'oracle');
      let compared = 0;
      for (const [interval, from, to] of [
        ['hour', '2026-11-01', '2026-11-03'],
        ['day', '2026-10-31', '2026-11-04'],
      ] as const) {
        for (const type of [undefined, ...TYPES]) {
          for (const metric of ['unique_users', 'page_views', 'events']) {
            const answer = await getJson(
              base,
              '/v1/timeseries',
              {
                metric,
                interval,
                from,
                to,
                ...(type === undefined ? {} : { activity_type: type }),
              },
              key,
            );
            assert.equal(answer.status, 200, answer.text);
            const fromMs = Date.parse(answer.body.from);
            const toMs = Date.parse(answer.body.to);
            assert.equal(fromMs, localDayStart(fromMs + 12 * HOUR_MS, zone), 'a local midnight');
            const starts = oracleStarts(fromMs, toMs, interval, zone);
            assert.equal(
              seenBuckets(answer.body),
              expectedBuckets(site, starts, toMs, metric, type),
              `${interval} ${metric} ${type ?? 'every type'}`,
            );
            compared += starts.length;
          }
        }
      }
      if (site === 'stjohns') {
        // 1 November 2026 in St John's lasts 25 hours: 02:00 happens twice.
        const hours = await getJson(
          base,
          '/v1/timeseries',
          { metric: 'events', interval: 'hour', from: '2026-11-01', to: '2026-11-02' },
          key,
        );
        assert.equal(hours.body.buckets.length, 25);
      }
      t.diagnostic(`${compared} hour and day buckets equal the oracle's`);
    });

    test(`${site} (${zone}): summary unique users are a true union; previous period; per type`, async (t) => {
      const key = keyOf(site, 'oracle');
      // Whole days of the site zone (day periods), and 7 hours across a local midnight (hours).
      const dayFrom = localDayStart(Date.UTC(2026, 10, 1, 12), zone);
      const dayTo = localDayStart(Date.UTC(2026, 10, 3, 12), zone);
      const hourFrom = localHourStart(Date.UTC(2026, 10, 2, 12), zone) + 9 * HOUR_MS;
      const ranges = [
        { fromMs: dayFrom, toMs: dayTo, days: 2 },
        { fromMs: hourFrom, toMs: hourFrom + 7 * HOUR_MS, days: 0 },
      ];
      for (const range of ranges) {
        for (const type of [undefined, ...TYPES]) {
          const answer = await getJson(
            base,
            '/v1/summary',
            {
              from: new Date(range.fromMs).toISOString(),
              to: new Date(range.toMs).toISOString(),
              compare: 'previous_period',
              ...(type === undefined ? {} : { activity_type: type }),
            },
            key,
          );
          assert.equal(answer.status, 200, answer.text);
          const want = tally(site, range.fromMs, range.toMs, type);
          assert.equal(
            JSON.stringify([answer.body.unique_users, answer.body.page_views, answer.body.events]),
            JSON.stringify([want.users.size, want.pageViews, want.events]),
            `${answer.body.from}..${answer.body.to} ${type ?? 'every type'}`,
          );
          assert.deepEqual(answer.body.accuracy, { kind: 'exact' });
          assert.equal(answer.body.complete, true);
          // The previous period: as many days (hours) immediately before.
          const previous = answer.body.previous_period;
          assert.equal(previous.to, answer.body.from);
          const prevFrom = Date.parse(previous.from);
          if (range.days > 0) {
            assert.equal(oracleStarts(prevFrom, range.fromMs, 'day', zone).length, range.days);
          } else {
            assert.equal(range.fromMs - prevFrom, 7 * HOUR_MS);
          }
          const before = tally(site, prevFrom, range.fromMs, type);
          assert.equal(
            JSON.stringify([previous.unique_users, previous.page_views, previous.events]),
            JSON.stringify([before.users.size, before.pageViews, before.events]),
          );
        }
        // The union is what makes this worth asking: far below the sum of each day's uniques.
        const perDay = oracleStarts(range.fromMs, range.toMs, range.days > 0 ? 'day' : 'hour', zone)
          .map((start, i, all) => tally(site, start, all[i + 1] ?? range.toMs).users.size)
          .reduce((a, b) => a + b, 0);
        assert.ok(tally(site, range.fromMs, range.toMs).users.size < perDay);
      }
      // A named range, resolved in the site zone.
      const yesterday = await getJson(base, '/v1/summary', { range: 'yesterday' }, key);
      assert.equal(yesterday.status, 200, yesterday.text);
      const from = Date.parse(yesterday.body.from);
      assert.equal(from, localDayStart(from + HOUR_MS, zone));
      t.diagnostic('summaries equal the oracle over day and hour ranges, for every type and each');
    });

    test(`${site} (${zone}): breakdown by activity type`, async () => {
      const key = keyOf(site, 'oracle');
      const answer = await getJson(
        base,
        '/v1/breakdown',
        { from: '2026-11-01', to: '2026-11-03', by: 'activity_type' },
        key,
      );
      assert.equal(answer.status, 200, answer.text);
      const fromMs = Date.parse(answer.body.from);
      const toMs = Date.parse(answer.body.to);
      const expected = TYPES.map((type) => {
        const t = tally(site, fromMs, toMs, type);
        return {
          activity_type: type,
          events: t.events,
          page_views: t.pageViews,
          unique_users: t.users.size,
          accuracy: { kind: 'exact' },
        };
      })
        .filter((row) => row.events > 0)
        .sort((a, b) => b.events - a.events || a.activity_type.localeCompare(b.activity_type));
      assert.equal(expected.length, 3, 'every type has events: the test data is right');
      assert.equal(JSON.stringify(answer.body.rows), JSON.stringify(expected));
    });
  }

  test('another zone: the same days are answered, other hours are tz_unsupported', async () => {
    const key = keyOf('utc', 'oracle');
    // London keeps UTC in November: its days are the UTC site's days.
    const london = await getJson(
      base,
      '/v1/timeseries',
      {
        metric: 'events',
        interval: 'day',
        from: '2026-11-01',
        to: '2026-11-03',
        tz: 'Europe/London',
      },
      key,
    );
    assert.equal(london.status, 200, london.text);
    assert.equal(london.body.time_zone, 'Europe/London');
    assert.equal(
      seenBuckets(london.body),
      expectedBuckets(
        'utc',
        [Date.UTC(2026, 10, 1), Date.UTC(2026, 10, 2)],
        Date.UTC(2026, 10, 3),
        'events',
      ),
    );
    // Kathmandu's hours start at a quarter past: the UTC site has no such hours stored.
    const kathmandu = await getJson(
      base,
      '/v1/timeseries',
      {
        metric: 'events',
        interval: 'hour',
        from: '2026-11-01T00:15:00Z',
        to: '2026-11-01T05:15:00Z',
        tz: 'Asia/Kathmandu',
      },
      key,
    );
    assert.equal(kathmandu.status, 400, kathmandu.text);
    assert.equal(kathmandu.body.code, 'tz_unsupported');
    assert.equal(kathmandu.body.parameter, 'tz');
  });
});

describe('refusals', () => {
  const key = keyOf('utc', 'errors');
  const hourly = { metric: 'events', interval: 'hour' };
  const cases: Array<{
    what: string;
    path: string;
    params: Record<string, string>;
    code: string;
    parameter?: string;
    message?: RegExp;
  }> = [
    {
      what: 'metric missing',
      path: '/v1/timeseries',
      params: { interval: 'hour', range: 'today' },
      code: 'invalid_parameter',
      parameter: 'metric',
    },
    {
      what: 'interval unknown',
      path: '/v1/timeseries',
      params: { metric: 'events', interval: 'week', range: 'today' },
      code: 'invalid_parameter',
      parameter: 'interval',
    },
    {
      what: 'from not a time',
      path: '/v1/timeseries',
      params: { ...hourly, from: 'last tuesday', to: '2026-11-02' },
      code: 'invalid_parameter',
      parameter: 'from',
    },
    {
      what: 'from on a day that does not exist',
      path: '/v1/summary',
      params: { from: '2026-02-30', to: '2026-03-02' },
      code: 'invalid_parameter',
      parameter: 'from',
    },
    {
      what: 'to before from',
      path: '/v1/timeseries',
      params: { ...hourly, from: '2026-11-02', to: '2026-11-01' },
      code: 'invalid_parameter',
      parameter: 'to',
    },
    {
      what: 'to missing',
      path: '/v1/summary',
      params: { from: '2026-11-02' },
      code: 'invalid_parameter',
      parameter: 'to',
    },
    {
      what: 'range with from',
      path: '/v1/summary',
      params: { range: 'today', from: '2026-11-02' },
      code: 'invalid_parameter',
      parameter: 'range',
    },
    {
      what: 'range unknown',
      path: '/v1/summary',
      params: { range: 'last_week' },
      code: 'invalid_parameter',
      parameter: 'range',
    },
    {
      what: 'tz unknown',
      path: '/v1/summary',
      params: { range: 'today', tz: 'Mars/Olympus_Mons' },
      code: 'invalid_parameter',
      parameter: 'tz',
    },
    {
      what: 'activity_type by minute',
      path: '/v1/timeseries',
      params: { metric: 'events', interval: 'minute', range: 'today', activity_type: 'click' },
      code: 'invalid_parameter',
      parameter: 'activity_type',
    },
    {
      what: 'compare unknown',
      path: '/v1/summary',
      params: { range: 'today', compare: 'last_year' },
      code: 'invalid_parameter',
      parameter: 'compare',
    },
    {
      what: 'by unknown',
      path: '/v1/breakdown',
      params: { range: 'today', by: 'country' },
      code: 'invalid_parameter',
      parameter: 'by',
    },
    {
      what: 'a parameter of another endpoint',
      path: '/v1/summary',
      params: { range: 'today', interval: 'hour' },
      code: 'unknown_parameter',
      parameter: 'interval',
    },
    {
      what: 'a typo',
      path: '/v1/timeseries',
      params: { ...hourly, range: 'today', activity_typ: 'click' },
      code: 'unknown_parameter',
      parameter: 'activity_typ',
    },
    {
      what: 'minute range past 48 hours',
      path: '/v1/timeseries',
      params: {
        metric: 'events',
        interval: 'minute',
        from: '2026-11-01',
        to: '2026-11-03T00:01:00Z',
      },
      code: 'range_too_long',
      message: /48 hours/,
    },
    {
      what: 'hour range past 31 days',
      path: '/v1/timeseries',
      params: { ...hourly, from: '2026-10-01', to: '2026-11-02' },
      code: 'range_too_long',
      message: /31 days/,
    },
    {
      what: 'day range past 400 days',
      path: '/v1/timeseries',
      params: { metric: 'events', interval: 'day', from: '2025-01-01', to: '2026-11-02' },
      code: 'range_too_long',
      message: /400 days/,
    },
    {
      what: 'summary past 400 days',
      path: '/v1/summary',
      params: { from: '2025-01-01', to: '2026-11-02' },
      code: 'range_too_long',
      message: /400 days/,
    },
    {
      what: 'minute buckets off the window',
      path: '/v1/timeseries',
      params: {
        metric: 'events',
        interval: 'minute',
        from: '2026-11-01T10:00:30Z',
        to: '2026-11-01T11:00:00Z',
      },
      code: 'range_unaligned',
      parameter: 'from',
    },
    {
      what: 'hour buckets off the hour',
      path: '/v1/timeseries',
      params: { ...hourly, from: '2026-11-01T10:00:00Z', to: '2026-11-01T11:30:00Z' },
      code: 'range_unaligned',
      parameter: 'to',
    },
    {
      what: 'a total off the hour',
      path: '/v1/summary',
      params: { from: '2026-11-01T10:30:00Z', to: '2026-11-01T12:00:00Z' },
      code: 'range_unaligned',
      parameter: 'from',
    },
    {
      what: 'hours of another zone',
      path: '/v1/timeseries',
      params: {
        ...hourly,
        from: '2026-11-01T00:30:00Z',
        to: '2026-11-01T02:30:00Z',
        tz: 'Asia/Kolkata',
      },
      code: 'tz_unsupported',
      parameter: 'tz',
    },
  ];
  for (const c of cases) {
    test(`400 ${c.code}: ${c.what}`, async () => {
      const answer = await getJson(base, c.path, c.params, key);
      assert.equal(answer.status, 400, answer.text);
      assert.equal(answer.body.code, c.code, answer.text);
      if (c.parameter !== undefined) assert.equal(answer.body.parameter, c.parameter);
      if (c.message !== undefined) assert.match(answer.body.message, c.message);
      assert.ok(answer.body.message.length > 10, 'a message for a person');
    });
  }

  test('401 without a key or with a wrong one; ?key= works as well as the header', async () => {
    const none = await getJson(base, '/v1/realtime');
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'unauthorized');
    const wrong = await getJson(base, '/v1/realtime', {}, 'not-a-key-of-this-server-000');
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.code, 'unauthorized');
    const inUrl = await getJson(base, '/v1/realtime', { key });
    assert.equal(inUrl.status, 200, inUrl.text);
    assert.equal(inUrl.body.site, 'utc', 'the key reads one site: site may be left out');
  });

  test('404 for a site the key does not read, and for an unknown path; 405 for POST', async () => {
    const other = await getJson(base, '/v1/realtime', { site: 'kathmandu' }, key);
    assert.equal(other.status, 404);
    assert.equal(other.body.code, 'unknown_site');
    assert.equal(other.body.parameter, 'site');
    const unknown = await getJson(base, '/v1/realtime', { site: 'no-such-site' }, key);
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.code, 'unknown_site');
    const path = await getJson(base, '/v1/sessions', {}, key);
    assert.equal(path.status, 404);
    assert.equal(path.body.code, 'not_found');
    const post = await fetch(new URL('/v1/summary', base), { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD, OPTIONS');
    assert.equal(((await post.json()) as { code: string }).code, 'method_not_allowed');
  });

  test('429 rate_limited with Retry-After past the burst (default 20/s, burst 100)', async (t) => {
    const limited = keyOf('utc', 'limit');
    let admitted = 0;
    let refused: Awaited<ReturnType<typeof getJson>> | undefined;
    for (let i = 0; i < 300 && refused === undefined; i++) {
      const answer = await getJson(base, '/v1/realtime', {}, limited);
      if (answer.status === 429) refused = answer;
      else {
        assert.equal(answer.status, 200, answer.text);
        admitted++;
      }
    }
    assert.ok(refused !== undefined, 'refused within 300 requests');
    assert.equal(refused.body.code, 'rate_limited');
    const retryAfter = Number(refused.headers.get('retry-after'));
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After ${retryAfter}`);
    assert.ok(admitted >= 100, `the burst is admitted: ${admitted}`);
    // Another key of the same site has a bucket of its own.
    const other = await getJson(base, '/v1/realtime', {}, keyOf('utc', 'cache'));
    assert.equal(other.status, 200);
    t.diagnostic(`${admitted} admitted, then 429 with Retry-After: ${retryAfter}`);
  });
});

test('identical queries are answered from one computation', async (t) => {
  const key = keyOf('kathmandu', 'cache');
  const params = { from: '2026-11-01', to: '2026-11-04', compare: 'previous_period' };
  const missesBefore = await serviceCounter(base, 'query_cache_misses_total');
  const hitsBefore = await serviceCounter(base, 'query_cache_hits_total');
  // Five at once (one computation in flight, four joining it), then one more while it is fresh.
  const answers = await Promise.all(
    Array.from({ length: 5 }, () => getJson(base, '/v1/summary', params, key)),
  );
  answers.push(await getJson(base, '/v1/summary', params, key));
  for (const answer of answers) {
    assert.equal(answer.status, 200, answer.text);
    assert.equal(answer.text, answers[0]?.text);
  }
  const misses = (await serviceCounter(base, 'query_cache_misses_total')) - missesBefore;
  const hits = (await serviceCounter(base, 'query_cache_hits_total')) - hitsBefore;
  assert.equal(misses, 1, 'one computation');
  assert.equal(hits, 5);
  // Another range is another computation (one no earlier test asked within the TTL).
  const other = await getJson(base, '/v1/summary', { ...params, to: '2026-11-02' }, key);
  assert.equal(other.status, 200, other.text);
  assert.equal((await serviceCounter(base, 'query_cache_misses_total')) - missesBefore, 2);
  t.diagnostic('6 identical summaries, 1 computation');
});

test('a query that passes its deadline (5 s) answers 503 deadline_exceeded', async (t) => {
  const key = keyOf('stjohns', 'deadline');
  const locker = await schemas.connect(schema);
  // The summary reads period_metrics: an exclusive lock held meanwhile makes it wait.
  await locker.query('BEGIN');
  await locker.query('LOCK TABLE period_metrics IN ACCESS EXCLUSIVE MODE');
  const started = performance.now();
  let answer: Awaited<ReturnType<typeof getJson>>;
  try {
    answer = await getJson(base, '/v1/summary', { from: '2026-11-02', to: '2026-11-03' }, key);
  } finally {
    await locker.query('ROLLBACK');
  }
  const seconds = (performance.now() - started) / 1000;
  assert.equal(answer.status, 503, answer.text);
  assert.equal(answer.body.code, 'deadline_exceeded');
  assert.ok(Number(answer.headers.get('retry-after')) >= 1);
  assert.ok(seconds >= 4.5 && seconds < 10, `answered after ${seconds.toFixed(2)} s`);
  // The lock gone, the same query answers.
  const again = await getJson(base, '/v1/summary', { from: '2026-11-02', to: '2026-11-03' }, key);
  assert.equal(again.status, 200, again.text);
  t.diagnostic(`503 deadline_exceeded after ${seconds.toFixed(2)} s`);
});
