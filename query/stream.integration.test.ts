/**
 * The live side: `/v1/stream` pushes each window a flush commits within a second of the commit,
 * to the clients of that site only, and resumes from `Last-Event-ID`; `/v1/realtime` answers the
 * current window and the 30 before it. Flushes go through the aggregator's real write path
 * (`writeFlush`, whose transaction notifies `activity_flush` before COMMIT); "commit time" is
 * when `writeFlush` returns, after COMMIT's answer, so a measured delay is, if anything, short
 * of the true one by the COMMIT round trip.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type pg from 'pg';
import { migrate } from '../aggregator/migrations.js';
import { TestSchemas } from '../aggregator/test-schemas.js';
import { EventStreamReader, getJson, PartitionWriter, startQueryOn } from '../e2e/query-fixture.js';
import type { SiteEvent } from '../e2e/rollup-oracle.js';
import { withDeadline } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { stackFromEnv } from '../shared/testing.js';
import type { QueryService } from './service.js';
import { RESUME_MARGIN_MS } from './window-stream.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 60_000;
const schemas = new TestSchemas(stack.databaseUrl, 'query_stream');
const services: QueryService[] = [];
const readers: EventStreamReader[] = [];

let db: pg.Client;
let schema: string;
let base: string;
let writer: PartitionWriter;
let counter = 0;

before(async () => {
  schema = schemas.name();
  db = await schemas.connect(schema);
  await migrate(db, schema);
  writer = await PartitionWriter.claim(db, 0, WINDOW_MS);
  const started = await startQueryOn(stack.databaseUrl, schema, {}, logger);
  services.push(started.service);
  base = started.url;
});

after(async () => {
  for (const reader of readers) reader.close();
  for (const service of services) {
    await withDeadline(service.close(), 10_000, 'closing a query service');
  }
  await schemas.dropAll();
});

/** `n` events of `site` now, by users new and old. */
function eventsNow(site: string, n: number): SiteEvent[] {
  const now = Date.now();
  return Array.from({ length: n }, () => {
    counter++;
    return {
      site,
      time_zone: 'UTC',
      user_id: `live-${counter % 17}`,
      activity_type: counter % 2 === 0 ? 'page_view' : 'click',
      timestamp: now,
      event_id: `${site}-${counter}`,
    };
  });
}

/** The window row of `site` at `start` as PostgreSQL holds it. */
async function storedWindow(site: string, start: string) {
  const result = await db.query<{
    unique_users: string;
    page_view_count: string;
    event_count: string;
    is_final: boolean;
  }>(
    `SELECT unique_users, page_view_count, event_count, is_final FROM site_window_totals
      WHERE site = $1 AND window_start = $2`,
    [site, start],
  );
  const row = result.rows[0];
  assert.ok(row, `a row for ${site} ${start}`);
  return {
    site,
    start,
    unique_users: Number(row.unique_users),
    page_views: Number(row.page_view_count),
    events: Number(row.event_count),
    complete: row.is_final,
  };
}

const open = async (params: Record<string, string>, headers: Record<string, string> = {}) => {
  const reader = await EventStreamReader.open(base, params, headers);
  readers.push(reader);
  assert.equal(reader.response.status, 200);
  assert.match(reader.response.headers.get('content-type') ?? '', /^text\/event-stream/);
  return reader;
};

test('each flush reaches the stream within 1 s of its commit, only to its site', async (t) => {
  const shop = await open({ site: 'shop' });
  const blog = await open({ site: 'blog' });
  // Let the service register both clients.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const delays: number[] = [];
  for (let round = 0; round < 8; round++) {
    // What the last round's reads still send is not this round's.
    await new Promise((resolve) => setTimeout(resolve, 150));
    for (const extra of shop.drain()) {
      assert.equal((JSON.parse(extra.data) as { site: string }).site, 'shop');
    }
    await writer.write(eventsNow('blog', 2));
    await writer.write(eventsNow('shop', 3));
    const committed = performance.now();
    const event = await shop.next(5000);
    delays.push(Math.max(0, event.receivedAt - committed));
    assert.equal(event.event, 'window');
    assert.match(event.id ?? '', /^\d+$/);
    const data = JSON.parse(event.data) as { site: string; start: string };
    assert.equal(data.site, 'shop');
    // What the stream says is what PostgreSQL holds for that window after the commit.
    assert.equal(event.data, JSON.stringify(await storedWindow('shop', data.start)));
  }
  const blogEvents = [await blog.next(5000), ...blog.drain()];
  for (const event of blogEvents) {
    assert.equal((JSON.parse(event.data) as { site: string }).site, 'blog');
  }
  const worst = Math.max(...delays);
  assert.ok(worst <= 1000, `commit to receipt: ${delays.map((d) => d.toFixed(1)).join(', ')} ms`);
  t.diagnostic(
    `commit to receipt over 8 flushes: median ${[...delays].sort((a, b) => a - b)[4]?.toFixed(1)} ms, worst ${worst.toFixed(1)} ms`,
  );
});

test('Last-Event-ID resumes: the windows written after it are sent first', async () => {
  const first = await open({ site: 'resume' });
  await new Promise((resolve) => setTimeout(resolve, 200));
  await writer.write(eventsNow('resume', 4));
  const seen = await first.next(5000);
  const cursor = seen.id ?? '';
  first.close();
  // While away: two flushes.
  await writer.write(eventsNow('resume', 5));
  await writer.write(eventsNow('resume', 6));
  const { start } = JSON.parse(seen.data) as { start: string };
  const now = await storedWindow('resume', start);

  const resumed = await open({ site: 'resume' }, { 'last-event-id': cursor });
  const caughtUp = await resumed.next(5000);
  assert.ok(BigInt(caughtUp.id ?? '0') > BigInt(cursor), 'a newer cursor');
  const data = JSON.parse(caughtUp.data) as { start: string };
  // Windows are cumulative: the window as it stands now, after both flushes.
  assert.equal(
    caughtUp.data,
    JSON.stringify(await storedWindow('resume', data.start)),
    'the resumed window equals the stored one',
  );
  if (data.start === start) assert.equal(caughtUp.data, JSON.stringify(now));

  // Resuming from the newest cursor repeats at most the windows of the margin, each as stored
  // now; the query parameter works as well.
  const latest = [caughtUp, ...resumed.drain()].at(-1)?.id ?? '';
  const quiet = await open({ site: 'resume', last_event_id: latest });
  await new Promise((resolve) => setTimeout(resolve, 1500));
  for (const repeated of quiet.drain()) {
    assert.ok(BigInt(repeated.id ?? '0') >= BigInt(latest) - BigInt(RESUME_MARGIN_MS) * 1000n);
    const { start: repeatedStart } = JSON.parse(repeated.data) as { start: string };
    assert.equal(repeated.data, JSON.stringify(await storedWindow('resume', repeatedStart)));
  }
  await writer.write(eventsNow('resume', 1));
  assert.equal((await quiet.next(5000)).event, 'window');
});

test('resume re-sends a window that an older flush changed after the cursor was sent', async () => {
  // Two aggregator instances: partition 1's flush starts first and commits last, so its rows
  // carry an older updated_at than the cursor the client holds when it leaves.
  const other = await schemas.connect(schema);
  try {
    const otherWriter = await PartitionWriter.claim(other, 1, WINDOW_MS);
    const reader = await open({ site: 'overlap' });
    await new Promise((resolve) => setTimeout(resolve, 200));
    let paused!: () => void;
    const inTransaction = new Promise<void>((resolve) => {
      paused = resolve;
    });
    // Both in the same window (made together, so that the minute cannot turn in between).
    const [slowEvents, fastEvents] = [eventsNow('overlap', 3), eventsNow('overlap', 2)];
    const slow = otherWriter.write(slowEvents, {
      pauseBeforeCommit: { ms: 1500, onPause: () => paused() },
    });
    await inTransaction;
    await writer.write(fastEvents);
    const seen = await reader.next(5000);
    const cursor = seen.id ?? '';
    const { start } = JSON.parse(seen.data) as { start: string };
    reader.close();
    await slow;
    const stored = await storedWindow('overlap', start);
    assert.notEqual(seen.data, JSON.stringify(stored), 'the slow flush changed the window');
    const olderFlush = await db.query<{ cursor: string }>(
      `SELECT (extract(epoch FROM updated_at) * 1000000)::bigint::text AS cursor
         FROM user_activity_metrics WHERE site = 'overlap' AND source_partition = 1`,
    );
    assert.ok(
      BigInt(olderFlush.rows[0]?.cursor ?? '0') < BigInt(cursor),
      'the slow flush is older than the cursor handed out',
    );

    const resumed = await open({ site: 'overlap' }, { 'last-event-id': cursor });
    const events = [await resumed.next(5000)];
    await new Promise((resolve) => setTimeout(resolve, 300));
    events.push(...resumed.drain());
    const window = events.filter((e) => (JSON.parse(e.data) as { start: string }).start === start);
    assert.equal(window.at(-1)?.data, JSON.stringify(stored), 'the window as both flushes left it');
  } finally {
    await other.end();
  }
});

test('realtime: the current window and the 30 before it, zero-filled, with freshness', async () => {
  await writer.write(eventsNow('rt', 7));
  const answer = await getJson(base, '/v1/realtime', { site: 'rt' });
  assert.equal(answer.status, 200, answer.text);
  const windows = answer.body.windows as Array<{ start: string; events: number }>;
  assert.equal(windows.length, 31);
  assert.equal(answer.body.window_seconds, 60);
  for (let i = 1; i < windows.length; i++) {
    assert.equal(
      Date.parse(windows[i]?.start ?? '') - Date.parse(windows[i - 1]?.start ?? ''),
      WINDOW_MS,
    );
  }
  const current = windows.at(-1);
  assert.ok(current !== undefined);
  const stored = await storedWindow('rt', current.start).catch(() => undefined);
  // The events were written in the current window, unless the minute turned since.
  const withEvents = windows.filter((w) => w.events > 0);
  assert.equal(withEvents.length, 1);
  assert.equal(withEvents[0]?.events, 7);
  if (stored !== undefined) assert.equal(current.events, stored.events);
  assert.equal(answer.body.freshness.newest_window_with_events, withEvents[0]?.start);
  assert.ok(Date.now() - Date.parse(answer.body.freshness.flushed_at) < 60_000);
  assert.equal(answer.body.freshness.consumer_lag_records, null);
});

test('streams are bounded: past QUERY_MAX_STREAMS, 503 too_many_streams', async () => {
  // A bound of 2 on a second instance, to reach it with three connections; the default
  // instance's bound (1000) is the same code path.
  const small = await startQueryOn(stack.databaseUrl, schema, { QUERY_MAX_STREAMS: '2' }, logger);
  services.push(small.service);
  const a = await EventStreamReader.open(small.url, { site: 'x' });
  const b = await EventStreamReader.open(small.url, { site: 'x' });
  readers.push(a, b);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const refused = await getJson(small.url, '/v1/stream', { site: 'x' });
  assert.equal(refused.status, 503);
  assert.equal(refused.body.code, 'too_many_streams');
  assert.ok(Number(refused.headers.get('retry-after')) >= 1);
  a.close();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const c = await EventStreamReader.open(small.url, { site: 'x' });
  readers.push(c);
  assert.equal(c.response.status, 200, 'a closed stream frees its place');
});
