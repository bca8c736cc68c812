import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PipelineError } from './errors.js';
import { type ServiceState, StateHolder, sleep, withDeadline } from './lifecycle.js';

/** Pending timers of this process: a deadline left behind would show up here. */
const pendingTimers = (): number =>
  process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length;

/**
 * Longer than the tests take, so a leaked deadline timer is still pending when counted, but short
 * enough that a leak fails the test instead of holding the test process for long.
 */
const LONG_MS = 3000;

describe('withDeadline', () => {
  test('resolves with the value of a promise that finishes in time', async () => {
    assert.equal(
      await withDeadline(
        sleep(5).then(() => 'done'),
        1000,
        'work',
      ),
      'done',
    );
  });

  test('passes on the rejection of a promise that fails in time', async () => {
    const failure = new Error('boom');
    await assert.rejects(withDeadline(Promise.reject(failure), 1000, 'work'), failure);
  });

  test('rejects with deadline_exceeded, naming the work, when the promise is too slow', async () => {
    const started = Date.now();
    await assert.rejects(withDeadline(new Promise(() => {}), 20, 'final flush'), (err) => {
      assert.ok(err instanceof PipelineError);
      assert.equal(err.code, 'deadline_exceeded');
      assert.match(err.message, /final flush did not finish within 20 ms/);
      return true;
    });
    assert.ok(Date.now() - started >= 15, 'rejected before the deadline');
  });

  test('clears its timer once the promise settles, so nothing keeps the process alive', async () => {
    const before = pendingTimers();
    await withDeadline(Promise.resolve(1), LONG_MS, 'resolved work');
    await assert.rejects(withDeadline(Promise.reject(new Error('x')), LONG_MS, 'failed work'));
    assert.equal(pendingTimers(), before);
  });

  test('leaves no timer behind after the deadline fires', async () => {
    const before = pendingTimers();
    await assert.rejects(withDeadline(new Promise(() => {}), 5, 'stuck work'));
    assert.equal(pendingTimers(), before);
  });

  test('a promise that fails after its deadline does not become an unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    try {
      const late = sleep(20).then(() => {
        throw new Error('too late');
      });
      await assert.rejects(withDeadline(late, 5, 'slow work'), { code: 'deadline_exceeded' });
      await sleep(40);
      assert.deepEqual(unhandled, []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('StateHolder', () => {
  test('starts in the starting state', () => {
    assert.equal(new StateHolder().state, 'starting');
  });

  test('a new listener is called at once with the current state', () => {
    const holder = new StateHolder();
    holder.set('running');
    const seen: ServiceState[] = [];
    holder.onChange((state) => seen.push(state));
    assert.deepEqual(seen, ['running']);
  });

  test('every listener hears every change, in order', () => {
    const holder = new StateHolder();
    const first: ServiceState[] = [];
    const second: ServiceState[] = [];
    holder.onChange((state) => first.push(state));
    holder.set('running');
    holder.onChange((state) => second.push(state));
    holder.set('draining');
    holder.set('stopped');
    assert.deepEqual(first, ['starting', 'running', 'draining', 'stopped']);
    assert.deepEqual(second, ['running', 'draining', 'stopped']);
    assert.equal(holder.state, 'stopped');
  });

  test('setting the state it already has does not notify anyone', () => {
    const holder = new StateHolder();
    const seen: ServiceState[] = [];
    holder.onChange((state) => seen.push(state));
    holder.set('starting');
    holder.set('failed');
    holder.set('failed');
    assert.deepEqual(seen, ['starting', 'failed']);
  });
});
