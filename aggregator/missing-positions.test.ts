import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { createLogger } from '../shared/logger.js';
import { createAggregatorMetrics } from './metrics.js';
import { MissingPositions } from './missing-positions.js';
import type { PartitionEnd, Position } from './partition-backlog.js';

const ASSIGNED_MS = 1_000;
const LOOKED_MS = 2_000;

function setUp(offsetReset: 'stop' | 'earliest') {
  const registry = new Registry();
  const metrics = createAggregatorMetrics(registry);
  const missing = new MissingPositions(offsetReset, metrics, createLogger('test', 'silent'));
  const gauge = async (partition: number) =>
    (await metrics.offsetsMissing.get()).values.find(
      (value) => value.labels.partition === String(partition),
    )?.value;
  const skipped = async (partition: number) =>
    (await metrics.offsetsSkipped.get()).values.find(
      (value) => value.labels.partition === String(partition),
    )?.value ?? 0;
  return { missing, gauge, skipped };
}

const ends = (entries: Array<[number, PartitionEnd]>) => new Map(entries);
const positions = (entries: Array<[number, Position]>) => new Map(entries);
const held = () => true;

test('a stored position past the end stops its partition, whatever OFFSET_RESET says', async () => {
  for (const offsetReset of ['stop', 'earliest'] as const) {
    const { missing, gauge } = setUp(offsetReset);
    missing.assigned(0, 500, ASSIGNED_MS);
    missing.assigned(1, 100, ASSIGNED_MS);
    const stopped = missing.check(
      ends([
        [0, { low: 0, high: 120 }],
        [1, { low: 0, high: 120 }],
      ]),
      LOOKED_MS,
      positions([
        [0, 40],
        [1, 100],
      ]),
      held,
    );
    assert.deepEqual(stopped, [0], offsetReset);
    assert.deepEqual([...missing.stopped], [0]);
    assert.equal(await gauge(0), 1);
    assert.equal(await gauge(1), undefined);
    assert.deepEqual(
      missing.check(ends([[0, { low: 0, high: 120 }]]), LOOKED_MS + 1, positions([[0, 40]]), held),
      [],
      'stopped once',
    );
  }
});

test('a reading position below the earliest offset stops only with OFFSET_RESET=stop', () => {
  const look = (offsetReset: 'stop' | 'earliest') => {
    const { missing } = setUp(offsetReset);
    missing.assigned(0, 30, ASSIGNED_MS);
    return missing.check(ends([[0, { low: 50, high: 90 }]]), LOOKED_MS, positions([[0, 20]]), held);
  };
  assert.deepEqual(look('stop'), [0]);
  assert.deepEqual(look('earliest'), []);
});

test('ends read before the assignment, errors and unread partitions prove nothing', () => {
  const { missing } = setUp('stop');
  missing.assigned(0, 500, ASSIGNED_MS);
  missing.assigned(1, 500, ASSIGNED_MS);
  missing.assigned(2, 500, ASSIGNED_MS);
  const gone = ends([
    [0, { low: 0, high: 120 }],
    [1, { low: -1, high: -1 }],
    [2, { low: 0, high: 120 }],
  ]);
  const before = positions([
    [0, 40],
    [1, 40],
    [2, 'beginning'],
  ]);
  assert.deepEqual(missing.check(gone, ASSIGNED_MS, before, held), [], 'read at the assignment');
  assert.deepEqual(missing.check(gone, LOOKED_MS, before, held), [0], 'only the offsets');
});

test('a partition no longer held leaves the stopped set and its gauge', async () => {
  const { missing, gauge } = setUp('stop');
  missing.assigned(0, 500, ASSIGNED_MS);
  const gone = ends([[0, { low: 0, high: 120 }]]);
  assert.deepEqual(missing.check(gone, LOOKED_MS, positions([[0, 40]]), held), [0]);
  missing.forget(0);
  assert.deepEqual(
    missing.check(gone, LOOKED_MS + 1, positions([]), () => false),
    [],
  );
  assert.equal(missing.stopped.size, 0);
  assert.equal(await gauge(0), undefined);
  missing.assigned(0, 500, LOOKED_MS + 2);
  assert.deepEqual(
    missing.check(gone, LOOKED_MS + 3, positions([[0, 40]]), held),
    [0],
    'assigned again, it stops again',
  );
});

test('a gap past the stored position counts as skipped; one before it does not', async () => {
  const { missing, skipped } = setUp('earliest');
  missing.assigned(0, 100, ASSIGNED_MS);
  // Rebuilding open windows from 40: records up to 100 were counted already.
  missing.noteSkipped(0, 41, 90);
  assert.equal(await skipped(0), 0, 'before the stored position');
  missing.noteSkipped(0, 99, 101);
  assert.equal(await skipped(0), 0, 'one offset past it: a commit marker');
  missing.noteSkipped(0, 99, 150);
  assert.equal(await skipped(0), 50, 'from the stored position to the record');
  missing.assigned(1, null, ASSIGNED_MS);
  missing.noteSkipped(1, 10, 25);
  assert.equal(await skipped(1), 15, 'no stored position: from the expected offset');
});
