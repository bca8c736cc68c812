import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PipelineError } from '../shared/errors.js';
import { MAX_EVENTS_PER_REQUEST, RequestDelivery } from './request-delivery.js';

const timeout = new PipelineError('broker_timeout', 'no acknowledgement', { retryable: true });

/** Whether `promise` has settled by the time queued callbacks have run. */
async function isSettled(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  void promise.then(() => {
    settled = true;
  });
  await new Promise((resolve) => setImmediate(resolve));
  return settled;
}

describe('RequestDelivery', () => {
  test('answers only once every event has its outcome, in any order', async () => {
    const delivery = new RequestDelivery(3);
    assert.equal(delivery.settle(2, null), false);
    assert.equal(delivery.settle(0, null), false);
    assert.equal(await isSettled(delivery.done), false, 'one event still unacknowledged');
    assert.equal(delivery.unsettled, 1);
    assert.equal(delivery.settle(1, null), true, 'the last outcome settles the request');
    assert.equal(JSON.stringify(await delivery.done), '[null,null,null]');
  });

  test('a failed event is named by its index; the others stay acknowledged', async () => {
    const delivery = new RequestDelivery(4);
    delivery.settle(3, null);
    delivery.settle(1, timeout);
    delivery.settle(0, null);
    assert.equal(await isSettled(delivery.done), false, 'a failure alone does not answer early');
    delivery.settle(2, null);
    const outcomes = await delivery.done;
    assert.equal(outcomes.length, 4);
    assert.deepEqual(
      outcomes.map((o) => o?.code ?? null),
      [null, 'broker_timeout', null, null],
    );
  });

  test('outcomes after the last one change nothing', async () => {
    const delivery = new RequestDelivery(1);
    assert.equal(delivery.settle(0, timeout), true);
    assert.equal(delivery.settle(0, null), false);
    assert.equal((await delivery.done)[0]?.code, 'broker_timeout');
  });

  test('a request holds 1 to MAX_EVENTS_PER_REQUEST events', () => {
    assert.throws(() => new RequestDelivery(0), RangeError);
    assert.throws(() => new RequestDelivery(MAX_EVENTS_PER_REQUEST + 1), RangeError);
    assert.equal(new RequestDelivery(MAX_EVENTS_PER_REQUEST).unsettled, MAX_EVENTS_PER_REQUEST);
  });
});
