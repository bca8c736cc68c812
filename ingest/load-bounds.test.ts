import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RequestBudget, Slots } from './load-bounds.js';

describe('RequestBudget', () => {
  test('admits up to the request bound, and again once one is released', () => {
    const budget = new RequestBudget(2, 1_000);
    const a = budget.admit(0);
    const b = budget.admit(0);
    assert.ok(a && b);
    assert.equal(budget.admit(0), undefined);
    a.release();
    a.release(); // twice is once
    assert.equal(budget.active, 1);
    assert.ok(budget.admit(0));
  });

  test('a declared length is reserved in full; past the byte bound nothing is admitted', () => {
    const budget = new RequestBudget(10, 1_000);
    const a = budget.admit(600);
    assert.ok(a);
    assert.equal(budget.bytes, 600);
    assert.equal(budget.admit(401), undefined, '600 + 401 > 1,000');
    const b = budget.admit(400);
    assert.ok(b);
    a.release();
    b.release();
    assert.equal(budget.bytes, 0);
  });

  test('a chunked body grows its reservation until the bound, and gives it all back', () => {
    const budget = new RequestBudget(10, 1_000);
    const a = budget.admit(0);
    assert.ok(a);
    assert.equal(a.grow(700), true);
    assert.equal(a.grow(301), false, 'nothing is taken when the bound would be passed');
    assert.equal(budget.bytes, 700);
    assert.equal(a.grow(300), true);
    a.release();
    assert.equal(budget.bytes, 0);
    assert.equal(a.grow(1), false, 'a released admission grows no more');
  });
});

describe('Slots', () => {
  test('never more than its size at once; a release returns the slot once', () => {
    const slots = new Slots(2);
    const a = slots.tryAcquire();
    const b = slots.tryAcquire();
    assert.ok(a && b);
    assert.equal(slots.tryAcquire(), undefined);
    a();
    a();
    assert.equal(slots.inUse, 1);
    assert.ok(slots.tryAcquire());
    assert.equal(slots.tryAcquire(), undefined);
  });
});
