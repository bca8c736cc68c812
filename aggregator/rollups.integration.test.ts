/**
 * Hour and day figures, per site and per activity type, are exact: every minute, hour and day
 * figure of every site equals the oracle's (`e2e/rollup-oracle.ts`), with events over several
 * days, sites sharing user ids, late events and repeats, across a SIGKILL and two instances.
 * (Time zones: `rollup-zones.integration.test.ts`.)
 *
 * Records are produced as ingest stamps them (site, time zone, keyed by site and user), so the
 * aggregator is tested on its own. The settings are the defaults (one-minute windows, the
 * default lateness), except a short session timeout so that a killed member's partitions move
 * in seconds. A failing run prints its seed; `TEST_SEED=<seed>` replays the same events.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { SeededRandom, testSeed } from '../e2e/activity-oracle.js';
import { AggregatorProcess } from '../e2e/aggregator-process.js';
import {
  type Figure,
  figureDifferences,
  RollupOracle,
  readMinutes,
  readPeriods,
  type SiteEvent,
} from '../e2e/rollup-oracle.js';
import { createTestResources, type TestResources } from '../e2e/test-resources.js';
import { DEFAULT_SITE, PAGE_VIEW } from '../shared/event-schema.js';
import { createLogger } from '../shared/logger.js';
import { freeTcpPort, stackFromEnv, waitFor } from '../shared/testing.js';

const stack = stackFromEnv();
const logger = createLogger('test', 'warn');
const WINDOW_MS = 60_000;
const PARTITIONS = 4;
const DAY_MS = 86_400_000;
const CLOSE_MS = 15_000;
const TYPES = [PAGE_VIEW, 'click', 'signup', 'purchase'];

type Producer = ReturnType<TestResources['kafka']['producer']>;

/** A record as ingest produces it: stamped with its site and zone, keyed by site and user. */
async function produce(
  producer: Producer,
  topic: string,
  events: readonly SiteEvent[],
): Promise<void> {
  await producer.send({
    topic,
    messages: events.map((event) => ({
      key: event.site === DEFAULT_SITE ? event.user_id : `${event.site}/${event.user_id}`,
      value: JSON.stringify(event),
    })),
  });
}

async function setUp(t: TestContext, prefix: string) {
  const resources = await createTestResources(prefix, stack, logger);
  t.after(() => resources.cleanup());
  await resources.createTopic(PARTITIONS);
  const producer = resources.kafka.producer({ kafkaJS: { acks: -1 } });
  await producer.connect();
  resources.defer('closing the producer', () => producer.disconnect());
  const aggregator = async (): Promise<AggregatorProcess> => {
    const process = new AggregatorProcess({
      ...resources.env,
      AGGREGATOR_PORT: String(await freeTcpPort()),
      AGGREGATOR_HOST: '127.0.0.1',
      // A killed member's partitions move once the coordinator gives up on it: the broker's
      // minimum keeps that short. Counting does not depend on it.
      SESSION_TIMEOUT_SEC: '6',
      LOG_LEVEL: 'warn',
    });
    resources.defer('killing an aggregator', () => process.signal('SIGKILL'));
    process.start();
    await process.waitReady();
    return process;
  };
  return { resources, producer, aggregator };
}

/** Waits until every minute and period figure equals the oracle's, then asserts it. */
async function assertFigures(
  resources: TestResources,
  oracle: RollupOracle,
  timeoutMs: number,
  describe: () => string,
): Promise<{ minutes: Figure[]; periods: Figure[] }> {
  const expected = { minutes: oracle.expectedMinutes(), periods: oracle.expectedPeriods() };
  let seen = { minutes: [] as Figure[], periods: [] as Figure[] };
  const same = () =>
    JSON.stringify(seen.minutes) === JSON.stringify(expected.minutes) &&
    JSON.stringify(seen.periods) === JSON.stringify(expected.periods);
  await waitFor(
    async () => {
      seen = {
        minutes: await readMinutes(resources.db, resources.schema),
        periods: await readPeriods(resources.db, resources.schema),
      };
      return same() ? true : undefined;
    },
    {
      timeoutMs,
      what: 'minute, hour and day figures equal to the oracle',
      describe: () =>
        `\n  minutes: ${figureDifferences(seen.minutes, expected.minutes)}` +
        `\n  periods: ${figureDifferences(seen.periods, expected.periods)}${describe()}`,
    },
  ).catch(() => undefined);
  // Compared as text: assert's structural diff of thousands of figures takes minutes.
  assert.ok(
    JSON.stringify(seen.minutes) === JSON.stringify(expected.minutes),
    `minute figures differ:\n  ${figureDifferences(seen.minutes, expected.minutes)}`,
  );
  assert.ok(
    JSON.stringify(seen.periods) === JSON.stringify(expected.periods),
    `hour and day figures differ:\n  ${figureDifferences(seen.periods, expected.periods)}`,
  );
  return seen;
}

const SITES = [
  { site: 'shop', time_zone: 'Europe/Berlin' },
  { site: 'blog', time_zone: 'Asia/Kathmandu' },
  { site: DEFAULT_SITE, time_zone: 'UTC' },
];

/** Events over the `days` days before `endMs`; user ids shared across sites. */
function randomEvents(
  random: SeededRandom,
  prefix: string,
  count: number,
  endMs: number,
  days: number,
): SiteEvent[] {
  return Array.from({ length: count }, (_, i) => {
    const { site, time_zone } = random.pick(SITES);
    return {
      site,
      time_zone,
      user_id: `u${Math.floor(random.next() ** 2 * 300)}`,
      activity_type: random.pick(TYPES),
      timestamp: endMs - random.int(days * DAY_MS),
      event_id: `${prefix}-${i}`,
    };
  });
}

test('every minute, hour and day figure per site and type is exact: late events, repeats, SIGKILL, two instances', async (t) => {
  const seed = testSeed();
  t.diagnostic(`seed ${seed}`);
  const random = new SeededRandom(seed);
  const { resources, producer, aggregator } = await setUp(t, 'rollups_exact');
  const oracle = new RollupOracle(WINDOW_MS);
  // Every window at least two minutes old: each closes by the watermark or, for the newest, by
  // the idle clock, within seconds.
  const end = Date.now() - 2 * 60_000;
  const first = randomEvents(random, 'a', 3000, end, 3);
  await produce(producer, resources.topic, first);
  for (const event of first) oracle.add(event);

  const a = await aggregator();
  const b = await aggregator();
  await assertFigures(resources, oracle, 60_000, () => a.tail() + b.tail());

  // One instance killed; meanwhile late events for closed windows (days old), new ones, and
  // repeats of counted events (a client's resend: same id, counted once).
  await a.signal('SIGKILL');
  const late = randomEvents(random, 'b', 1500, end, 3);
  const repeats = first.filter(() => random.next() < 0.2);
  const second = random.shuffle([...late, ...repeats]);
  await produce(producer, resources.topic, second);
  for (const event of second) oracle.add(event);
  await assertFigures(resources, oracle, 60_000, () => b.tail());

  // The killed one back: the group rebalances across both again; nothing moves.
  const c = await aggregator();
  const third = randomEvents(random, 'c', 1000, end, 3);
  await produce(producer, resources.topic, [...third, ...first.slice(0, 200)]);
  for (const event of third) oracle.add(event);
  const { periods } = await assertFigures(resources, oracle, 60_000, () => b.tail() + c.tail());
  t.diagnostic(`${oracle.expectedMinutes().length} minute and ${periods.length} period figures`);
  for (const process of [b, c]) {
    await process.signal('SIGTERM', CLOSE_MS);
    assert.equal(process.exitCode, 0, process.tail());
  }
});
