/**
 * `ProducerWatchdog` against a scripted producer, on real (short) timers, and `DeliveryHealth`:
 * the producer is replaced only when an event handed over while the broker named every leader
 * timed out and no failing partition recovers; never while the broker does not answer or names
 * no leader, for timeouts of events handed over before the broker was well, while failing
 * partitions recover, or while a replaced producer still retires.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { createIngestMetrics } from './metrics.js';
import { DeliveryHealth, ProducerWatchdog, type WatchedProducer } from './producer-watchdog.js';

const STALL_MS = 300;
/** Long enough for a replacement the watchdog owes (the stall, plus looks 100 ms apart). */
const OBSERVE_MS = STALL_MS * 4;

class ScriptedProducer implements WatchedProducer {
  health = { failingPartitions: 2, recoveries: 0, latestTimedOutAt: Number.POSITIVE_INFINITY };
  retiring = false;
  leaders: boolean | undefined = true;
  leaderQueries = 0;
  replacements = 0;

  async leadersKnown(): Promise<boolean | undefined> {
    this.leaderQueries++;
    return this.leaders;
  }

  async replace(): Promise<void> {
    this.replacements++;
  }
}

/** Runs a watchdog over `producer` for `ms`, with `during` called every 50 ms. */
async function watch(
  producer: ScriptedProducer,
  ms: number,
  during: () => void = () => {},
): Promise<number> {
  const metrics = createIngestMetrics(new Registry(), { maxInFlightEvents: 100, sites: [] });
  const watchdog = new ProducerWatchdog(
    producer,
    STALL_MS,
    metrics,
    createLogger('test', 'silent'),
  );
  watchdog.start();
  try {
    for (let waited = 0; waited < ms; waited += 50) {
      during();
      await sleep(50);
    }
  } finally {
    watchdog.close();
  }
  const [counter] = (await metrics.producerReplacements.get()).values;
  return counter?.value ?? 0;
}

test('a partition failing after the broker was found well, none recovering: replaced', async () => {
  const producer = new ScriptedProducer();
  const counted = await watch(producer, OBSERVE_MS);
  assert.ok(producer.replacements >= 1, 'replaced');
  assert.equal(counted, producer.replacements, 'each replacement is counted');
  assert.ok(producer.leaderQueries >= 2, 'the broker was asked before it');
});

test('left alone: no partition failing, or failing partitions recovering', async () => {
  const delivering = new ScriptedProducer();
  delivering.health.failingPartitions = 0;
  assert.equal(await watch(delivering, OBSERVE_MS), 0, 'every partition delivers');
  assert.equal(delivering.leaderQueries, 0, 'no metadata request while every partition delivers');
  const recovering = new ScriptedProducer();
  assert.equal(
    await watch(recovering, OBSERVE_MS, () => recovering.health.recoveries++),
    0,
    'failing partitions recover',
  );
});

test("silence that is the broker's (no answer, a partition without a leader) replaces nothing", async () => {
  for (const leaders of [undefined, false]) {
    const producer = new ScriptedProducer();
    producer.leaders = leaders;
    assert.equal(await watch(producer, OBSERVE_MS), 0, `leaders known: ${leaders}`);
    assert.ok(producer.leaderQueries >= 2, 'the broker was asked');
  }
});

test('timeouts of events handed over before the broker was found well replace nothing', async () => {
  const before = new ScriptedProducer();
  // Failing since before the watchdog's first look, which is when the broker is first seen well.
  before.health.latestTimedOutAt = Date.now() - 1;
  assert.equal(await watch(before, OBSERVE_MS), 0);
  assert.ok(before.leaderQueries >= 2, 'the broker was asked');
  // An event handed over after that first look times out: that one tells against the producer.
  const after = new ScriptedProducer();
  after.health.latestTimedOutAt = Date.now() - 1;
  let ticks = 0;
  await watch(after, OBSERVE_MS + 200, () => {
    if (++ticks === 4) after.health.latestTimedOutAt = Date.now();
  });
  assert.ok(after.replacements >= 1, 'replaced once a later event timed out');
});

test('the wait starts over when the broker stops naming leaders, and while a producer retires', async () => {
  const flapping = new ScriptedProducer();
  let looks = 0;
  // Well for two looks in three: never for the whole stall timeout.
  flapping.leadersKnown = async () => {
    looks++;
    return looks % 3 === 0 ? undefined : true;
  };
  assert.equal(await watch(flapping, OBSERVE_MS), 0, 'flapping answers');
  const retiring = new ScriptedProducer();
  retiring.retiring = true;
  assert.equal(await watch(retiring, OBSERVE_MS), 0, 'a replaced producer retiring');
});

test('DeliveryHealth: a partition fails on a timeout and recovers on an acknowledgement', () => {
  const health = new DeliveryHealth();
  health.acknowledged(0);
  assert.deepEqual([health.failingPartitions, health.recoveries], [0, 0]);
  health.timedOut(1, 1_000);
  health.timedOut(1, 900);
  health.timedOut(2, 1_100);
  assert.deepEqual([health.failingPartitions, health.latestTimedOutAt], [2, 1_100]);
  health.acknowledged(1);
  health.acknowledged(1);
  assert.deepEqual([health.failingPartitions, health.recoveries], [1, 1]);
  health.reset();
  assert.deepEqual(
    [health.failingPartitions, health.recoveries, health.latestTimedOutAt],
    [0, 1, Number.NEGATIVE_INFINITY],
    'a new producer starts clean; recoveries keep counting',
  );
});
