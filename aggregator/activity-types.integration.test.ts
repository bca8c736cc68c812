/**
 * MAX_ACTIVITY_TYPES: each site's hour and day figures count at most that many activity types by
 * name (first come; in name order within one flush), the rest as `other`, so that random types
 * cannot blow up storage. Checked against the real flush (`PartitionWindows` fed by the worker
 * logic, `writeFlush` into PostgreSQL) and an oracle that applies the rule to the events sent.
 *
 * The limit here is 3, not the default 100: the guarantee tested is the cap itself (what is
 * registered, what counts as `other`, that concurrent flushes never pass it), and a small limit
 * shows it with a few events.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type pg from 'pg';
import {
  type Figure,
  figureDifferences,
  readPeriods,
  type SiteEvent,
} from '../e2e/rollup-oracle.js';
import { PAGE_VIEW } from '../shared/event-schema.js';
import { stackFromEnv } from '../shared/testing.js';
import { aggregateBatch, packRecords } from './batch-aggregator.js';
import { type FlushOutcome, type RollupSettings, writeFlush } from './copy-writer.js';
import { migrate } from './migrations.js';
import { claimPartition } from './partition-recovery.js';
import { EVERY_TYPE, OTHER_TYPE } from './rollups.js';
import { TestSchemas } from './test-schemas.js';
import { PartitionWindows } from './window-state.js';

const stack = stackFromEnv();
const WINDOW_SEC = 60;
const WINDOW_MS = WINDOW_SEC * 1000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const ROLLUPS: RollupSettings = { maxActivityTypes: 3 };
/** 2024-05-01T10:00:00Z: windows in three hours of one day. */
const T0 = Date.UTC(2024, 4, 1, 10, 0, 0);

const schemas = new TestSchemas(stack.databaseUrl, 'types');
after(() => schemas.dropAll());

/** A partition's windows, claimed on `client` as an aggregator claims it on assignment. */
async function claimed(client: pg.Client, partition: number): Promise<PartitionWindows> {
  const checkpoint = await claimPartition(client, partition, WINDOW_SEC);
  return new PartitionWindows(partition, WINDOW_MS, 10_000, 7 * DAY_MS, checkpoint);
}

/**
 * Feeds `events` (received a minute after they happened) to `state` as one batch and closes
 * every window: the next snapshot writes their membership, and so their rollups.
 */
function feed(state: PartitionWindows, events: readonly SiteEvent[]): void {
  const from = state.throughOffset + 1;
  const records = events.map((event, i) => ({
    offset: from + i,
    timestampMs: event.timestamp + 60_000,
    value: Buffer.from(JSON.stringify(event)),
  }));
  const result = aggregateBatch(state.batchInput(packRecords(records)));
  assert.deepEqual(result.invalid, []);
  assert.deepEqual(result.late, []);
  state.merge(result, from + events.length - 1);
  state.closeThrough(Math.max(...events.map((event) => event.timestamp)));
}

async function flush(
  client: pg.Client,
  state: PartitionWindows,
  pause?: { ms: number; onPause: () => void },
): Promise<FlushOutcome> {
  const snapshot = state.snapshot();
  const outcome = await writeFlush(client, [snapshot], ROLLUPS, pause);
  assert.ok(outcome.committed);
  state.settle(snapshot);
  return outcome;
}

async function registeredTypes(client: pg.Client): Promise<Map<string, string[]>> {
  const result = await client.query<{ site: string; types: string[] }>(
    `SELECT site, array_agg(activity_type ORDER BY activity_type) AS types
       FROM activity_types GROUP BY site`,
  );
  return new Map(result.rows.map((row) => [row.site, row.types]));
}

/**
 * The rule, applied to the events as they are flushed: a site registers the types it does not
 * count by name yet, in name order, while it has room; `other` itself never takes a place. Each
 * event counts under its type if registered, else under `other`.
 */
class TypeCapOracle {
  readonly registered = new Map<string, Set<string>>();
  private readonly tallies = new Map<
    string,
    { users: Set<string>; pageViews: number; events: number }
  >();
  /** Events past their site's limit: counted as `other` though sent with a type of their own. */
  otherTyped = 0;
  events = 0;

  /** One flush's events (every one new). Returns how many of them were `otherTyped`. */
  flush(events: readonly SiteEvent[]): number {
    const bySite = new Map<string, Set<string>>();
    for (const event of events) {
      if (event.activity_type === OTHER_TYPE) continue;
      const seen = bySite.get(event.site) ?? new Set();
      seen.add(event.activity_type);
      bySite.set(event.site, seen);
    }
    for (const [site, types] of bySite) {
      const registered = this.registered.get(site) ?? new Set();
      this.registered.set(site, registered);
      for (const type of [...types].sort()) {
        if (!registered.has(type) && registered.size < ROLLUPS.maxActivityTypes) {
          registered.add(type);
        }
      }
    }
    let otherTyped = 0;
    for (const event of events) {
      const named = this.registered.get(event.site)?.has(event.activity_type) === true;
      if (!named && event.activity_type !== OTHER_TYPE) otherTyped++;
      const type = named ? event.activity_type : OTHER_TYPE;
      const hour = event.timestamp - (event.timestamp % HOUR_MS);
      const day = event.timestamp - (event.timestamp % DAY_MS);
      for (const [period, start] of [
        ['hour', hour],
        ['day', day],
      ] as const) {
        for (const key of [EVERY_TYPE, type]) {
          this.count(`${event.site}|${period}|${new Date(start).toISOString()}|${key}`, event);
        }
      }
    }
    this.otherTyped += otherTyped;
    this.events += events.length;
    return otherTyped;
  }

  private count(key: string, event: SiteEvent): void {
    const tally = this.tallies.get(key) ?? { users: new Set(), pageViews: 0, events: 0 };
    this.tallies.set(key, tally);
    tally.users.add(event.user_id);
    tally.events++;
    if (event.activity_type === PAGE_VIEW) tally.pageViews++;
  }

  expectedPeriods(): Figure[] {
    return [...this.tallies]
      .map(([key, tally]) => ({
        key,
        unique_users: tally.users.size,
        page_view_count: tally.pageViews,
        event_count: tally.events,
      }))
      .sort((a, b) => a.key.localeCompare(b.key));
  }
}

/** Types whose names sort the same in every collation: distinct first letters, or `se` < `sh`. */
const MANY_TYPES = [
  'upload',
  'share',
  PAGE_VIEW,
  'click',
  'search',
  'like',
  'export',
  'invite',
  'download',
  'follow',
];

let nextId = 0;
function event(site: string, type: string, user: number, at: number): SiteEvent {
  return {
    site,
    time_zone: 'UTC',
    user_id: `u${user}`,
    activity_type: type,
    timestamp: at,
    event_id: `e${nextId++}`,
  };
}

describe('MAX_ACTIVITY_TYPES', () => {
  test('a site counts at most the limit of types by name; the rest, and only they, are otherTyped', async (t) => {
    const client = await schemas.fresh();
    const state = await claimed(client, 0);
    const oracle = new TypeCapOracle();
    // Three flushes, an hour of windows each: `many` sees its ten types arrive over them (the
    // first brings five, of which the first three by name take every place), `few` two types,
    // under the limit; `many` also sends events of the type `other` itself.
    const rounds: SiteEvent[][] = [[], [], []];
    for (let i = 0; i < 360; i++) {
      const round = Math.floor(i / 120);
      const at = T0 + round * HOUR_MS + (i % 120) * 30_000 + 17;
      const available = MANY_TYPES.slice(0, 5 + round * 3);
      rounds[round]?.push(
        event('many', available[(i * 7) % available.length] as string, (i * 13) % 37, at),
        event('few', i % 3 === 0 ? PAGE_VIEW : 'click', (i * 5) % 11, at + 1),
      );
      if (i % 9 === 0) rounds[round]?.push(event('many', OTHER_TYPE, (i * 3) % 23, at + 2));
    }
    const outcomes: FlushOutcome[] = [];
    for (const events of rounds) {
      feed(state, events);
      const outcome = await flush(client, state);
      assert.equal(outcome.rollups.events, events.length, 'every event is in the rollups once');
      assert.equal(outcome.rollups.otherTyped, oracle.flush(events), 'otherTyped of the flush');
      outcomes.push(outcome);
    }
    // A flush whose only unregistered type is `other` itself: counted there, none otherTyped.
    const registeredMany = [...(oracle.registered.get('many') ?? [])];
    const last = [
      event('many', OTHER_TYPE, 101, T0 + 2 * HOUR_MS + 61 * 60_000),
      event('many', OTHER_TYPE, 1, T0 + 2 * HOUR_MS + 61 * 60_000 + 5),
      event('many', registeredMany[0] as string, 102, T0 + 2 * HOUR_MS + 61 * 60_000 + 9),
    ];
    feed(state, last);
    const lastOutcome = await flush(client, state);
    assert.equal(oracle.flush(last), 0);
    assert.deepEqual(lastOutcome.rollups, { events: 3, otherTyped: 0 });

    const registered = await registeredTypes(client);
    assert.equal(registered.get('many')?.length, ROLLUPS.maxActivityTypes);
    assert.deepEqual(registered.get('many'), [...(oracle.registered.get('many') ?? [])].sort());
    assert.deepEqual(registered.get('few'), [...(oracle.registered.get('few') ?? [])].sort());
    assert.equal(registered.get('few')?.length, 2);
    assert.ok(!registered.get('many')?.includes(OTHER_TYPE));

    const periods = await readPeriods(client, await schemaOf(client));
    const expected = oracle.expectedPeriods();
    assert.ok(
      JSON.stringify(periods) === JSON.stringify(expected),
      `hour and day figures differ:\n  ${figureDifferences(periods, expected)}`,
    );
    // The every-type row adds up its type rows (events, page views); users overlap across types.
    const sums = new Map<string, { events: number; pageViews: number; users: number }>();
    const everyType = new Map<string, Figure>();
    for (const figure of periods) {
      const cut = figure.key.lastIndexOf('|');
      const period = figure.key.slice(0, cut);
      if (figure.key.slice(cut + 1) === EVERY_TYPE) {
        everyType.set(period, figure);
        continue;
      }
      const sum = sums.get(period) ?? { events: 0, pageViews: 0, users: 0 };
      sum.events += figure.event_count;
      sum.pageViews += figure.page_view_count;
      sum.users = Math.max(sum.users, figure.unique_users);
      sums.set(period, sum);
    }
    assert.deepEqual([...everyType.keys()].sort(), [...sums.keys()].sort());
    for (const [period, all] of everyType) {
      const sum = sums.get(period);
      assert.equal(all.event_count, sum?.events, `${period}: events`);
      assert.equal(all.page_view_count, sum?.pageViews, `${period}: page views`);
      assert.ok(all.unique_users >= (sum?.users ?? 0), `${period}: users`);
    }
    const otherTyped = [...outcomes, lastOutcome].reduce(
      (total, outcome) => total + outcome.rollups.otherTyped,
      0,
    );
    assert.equal(otherTyped, oracle.otherTyped);
    assert.ok(oracle.otherTyped > 0 && oracle.otherTyped < oracle.events);
    t.diagnostic(
      `${oracle.events} events, ${oracle.otherTyped} otherTyped, ${periods.length} hour and day figures`,
    );
  });

  test('flushes from two connections registering types for one site never pass the limit', async (t) => {
    const schema = schemas.name();
    const first = await schemas.connect(schema);
    const second = await schemas.connect(schema);
    await migrate(first, schema);
    const left = await claimed(first, 0);
    const right = await claimed(second, 1);
    /** Each partition's events of `site`: five types of its own (none shared with the other). */
    const send = (site: string, round: number) => {
      const at = T0 + round * 10 * WINDOW_MS;
      const sides = [
        { state: left, types: ['alpha', 'bravo', 'charlie', 'delta', 'echo'] },
        { state: right, types: ['foxtrot', 'golf', 'hotel', 'india', 'juliett'] },
      ];
      for (const { state, types } of sides) {
        const events = types.flatMap((type, i) => [
          event(site, type, i, at + i),
          event(site, type, i + 10, at + 100 + i),
        ]);
        feed(state, events);
      }
    };

    // 1. Forced overlap: the second flush starts while the first holds its registrations,
    //    between its rollups and its COMMIT; without the site's lock both would see room.
    send('race', 0);
    let started = 0;
    let waiting: Promise<FlushOutcome> | undefined;
    const firstOutcome = await flush(first, left, {
      ms: 1_000,
      onPause: () => {
        started = performance.now();
        waiting = flush(second, right);
      },
    });
    assert.ok(waiting !== undefined);
    const secondOutcome = await waiting;
    t.diagnostic(`the second flush took ${Math.round(performance.now() - started)} ms`);
    let registered = await registeredTypes(first);
    assert.deepEqual(registered.get('race'), ['alpha', 'bravo', 'charlie']);
    // The first took every place: all of the second's events count as `other`.
    assert.equal(firstOutcome.rollups.otherTyped, (5 - ROLLUPS.maxActivityTypes) * 2);
    assert.equal(secondOutcome.rollups.otherTyped, secondOutcome.rollups.events);

    // 2. Flushes started together, for new sites, several times over.
    for (let round = 1; round <= 6; round++) {
      send(`race${round}`, round);
      const outcomes = await Promise.all([flush(first, left), flush(second, right)]);
      const count = (await registeredTypes(first)).get(`race${round}`)?.length ?? 0;
      assert.equal(count, ROLLUPS.maxActivityTypes, `race${round}: types registered`);
      // Whoever registered what, exactly the unregistered types' events are otherTyped.
      const otherTyped = outcomes.reduce((total, o) => total + o.rollups.otherTyped, 0);
      assert.equal(otherTyped, (10 - ROLLUPS.maxActivityTypes) * 2, `race${round}: otherTyped`);
    }
    registered = await registeredTypes(first);
    for (const [site, types] of registered) {
      assert.ok(types.length <= ROLLUPS.maxActivityTypes, `${site}: ${types.join(', ')}`);
    }
  });
});

async function schemaOf(client: pg.Client): Promise<string> {
  const result = await client.query<{ schema: string }>('SELECT current_schema() AS schema');
  return result.rows[0]?.schema ?? '';
}
