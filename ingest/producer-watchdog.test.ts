/**
 * `ProducerWatchdog` against a scripted producer, on real (short) timers: it replaces a producer
 * that acknowledges nothing only while the broker names every leader, and leaves it alone while
 * acknowledgements come, while nothing waits, while the broker does not answer or names no
 * leader, and while a replaced producer still retires.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { sleep } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { createIngestMetrics } from './metrics.js';
import { ProducerWatchdog, type WatchedProducer } from './producer-watchdog.js';

const STALL_MS = 300;
/** Long enough for a replacement the watchdog owes (the stall, plus looks 100 ms apart). */
const OBSERVE_MS = STALL_MS * 4;

class ScriptedProducer implements WatchedProducer {
  inFlight = 10;
  acknowledged = 0;
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
  const metrics = createIngestMetrics(new Registry(), { maxInFlightEvents: 100 });
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

test('events waiting, no acknowledgement, every leader named: the producer is replaced', async () => {
  const producer = new ScriptedProducer();
  const counted = await watch(producer, OBSERVE_MS);
  assert.ok(producer.replacements >= 1, 'replaced');
  assert.equal(counted, producer.replacements, 'each replacement is counted');
  assert.ok(producer.leaderQueries >= 2, 'the broker was asked before it');
});

test('a producer left alone: acknowledgements coming, or nothing waiting', async () => {
  const acknowledging = new ScriptedProducer();
  assert.equal(
    await watch(acknowledging, OBSERVE_MS, () => acknowledging.acknowledged++),
    0,
    'acknowledging',
  );
  assert.equal(acknowledging.leaderQueries, 0, 'no metadata request while acknowledgements come');
  const idle = new ScriptedProducer();
  idle.inFlight = 0;
  assert.equal(await watch(idle, OBSERVE_MS), 0, 'nothing waits');
  assert.equal(idle.leaderQueries, 0);
});

test("silence that is the broker's (no answer, a partition without a leader) replaces nothing", async () => {
  for (const leaders of [undefined, false]) {
    const producer = new ScriptedProducer();
    producer.leaders = leaders;
    assert.equal(await watch(producer, OBSERVE_MS), 0, `leaders known: ${leaders}`);
    assert.ok(producer.leaderQueries >= 2, 'the broker was asked');
  }
});

test('the wait starts over when the broker stops naming leaders, and while a producer retires', async () => {
  const flapping = new ScriptedProducer();
  let looks = 0;
  // Every leader named for two looks in three: never for the whole stall timeout.
  flapping.leadersKnown = async () => {
    looks++;
    return looks % 3 === 0 ? undefined : true;
  };
  assert.equal(await watch(flapping, OBSERVE_MS), 0, 'flapping answers');
  const retiring = new ScriptedProducer();
  retiring.retiring = true;
  assert.equal(await watch(retiring, OBSERVE_MS), 0, 'a replaced producer retiring');
});
