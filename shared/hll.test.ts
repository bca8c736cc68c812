import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { hasCode } from './errors.js';
import {
  HLL_COLUMN_TYPE_SQL,
  HLL_EXACT_UP_TO,
  HLL_RELATIVE_STANDARD_ERROR,
  hllAddAggSql,
  hllUnionAggTextSql,
  uniqueUsersAnswer,
} from './hll.js';

describe('hll parameters', () => {
  test('one parameter list in every piece of SQL', () => {
    assert.equal(HLL_COLUMN_TYPE_SQL, 'hll(17, 5, -1, 1)');
    assert.equal(hllAddAggSql('user_id'), 'hll_add_agg(hll_hash_text(user_id), 17, 5, -1, 1)');
    assert.equal(
      hllUnionAggTextSql('users'),
      'coalesce(hll_union_agg(users), hll_empty(17, 5, -1, 1))::text',
    );
  });

  test('exact up to 10,240 users, then a standard error of 0.29 %', () => {
    assert.equal(HLL_EXACT_UP_TO, 10_240);
    assert.ok(Math.abs(HLL_RELATIVE_STANDARD_ERROR - 0.002873) < 1e-6);
  });
});

describe('uniqueUsersAnswer', () => {
  test('an empty range: no users, exactly', () => {
    assert.deepEqual(uniqueUsersAnswer('\\x11917f'), {
      uniqueUsers: 0,
      exact: true,
      relativeStandardError: 0,
      relativeErrorBound: 0,
    });
  });

  test('refuses a sketch built with other parameters', () => {
    // The extension's defaults: 2^11 registers.
    assert.throws(
      () => uniqueUsersAnswer('\\x118b7f'),
      (err: unknown) => hasCode(err, 'sketch_invalid') && /not \(17, 5, -1, 1\)/.test(err.message),
    );
  });
});
