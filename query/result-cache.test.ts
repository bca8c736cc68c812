import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ResultCache } from './result-cache.js';

function counted() {
  const counts = { hits: 0, misses: 0 };
  return { counts, counters: { hit: () => counts.hits++, miss: () => counts.misses++ } };
}

test('joins a computation in flight, reuses it while fresh, drops it on clear', async () => {
  const { counts, counters } = counted();
  const cache = new ResultCache<number>(60_000, 10, counters);
  let computations = 0;
  const compute = async () => {
    computations++;
    await new Promise((resolve) => setTimeout(resolve, 10));
    return 42;
  };
  const answers = await Promise.all([1, 2, 3].map(() => cache.get('a', Date.now(), compute)));
  assert.deepEqual(answers, [42, 42, 42]);
  assert.equal(await cache.get('a', Date.now(), compute), 42);
  assert.equal(computations, 1);
  assert.deepEqual(counts, { hits: 3, misses: 1 });
  cache.clear();
  await cache.get('a', Date.now(), compute);
  assert.equal(computations, 2);
});

test('a failure is not kept; the bound drops the least recently used', async () => {
  const { counters } = counted();
  const cache = new ResultCache<number>(60_000, 2, counters);
  await assert.rejects(cache.get('x', Date.now(), () => Promise.reject(new Error('boom'))));
  assert.equal(await cache.get('x', Date.now(), async () => 1), 1);
  await cache.get('y', Date.now(), async () => 2);
  await cache.get('z', Date.now(), async () => 3);
  assert.equal(cache.size, 2);
  assert.equal(await cache.get('x', Date.now(), async () => 9), 9, 'x was dropped');
});

test('an answer computed across a flush is not kept', async () => {
  const { counters } = counted();
  const cache = new ResultCache<number>(60_000, 10, counters);
  let release: () => void = () => {};
  const slow = cache.get(
    'k',
    Date.now(),
    () =>
      new Promise<number>((resolve) => {
        release = () => resolve(1);
      }),
  );
  cache.clear();
  release();
  assert.equal(await slow, 1);
  assert.equal(await cache.get('k', Date.now(), async () => 2), 2);
});
