import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import kafkaJavascript from '@confluentinc/kafka-javascript';
import { classifyDeliveryError } from './event-producer.js';

const { ERRORS } = kafkaJavascript.CODES;
const classify = (code: number): string =>
  classifyDeliveryError({ code, message: `error ${code}` }).code;

describe('classifyDeliveryError', () => {
  test('a timeout is broker_timeout: given up, maybe written', () => {
    assert.equal(classify(ERRORS.ERR__MSG_TIMED_OUT), 'broker_timeout');
  });

  test('errors of messages never sent or refused as invalid are not stored', () => {
    for (const code of [
      ERRORS.ERR__UNKNOWN_PARTITION,
      ERRORS.ERR__UNKNOWN_TOPIC,
      ERRORS.ERR__PURGE_QUEUE,
      ERRORS.ERR_MSG_SIZE_TOO_LARGE,
      ERRORS.ERR_INVALID_RECORD,
    ]) {
      assert.equal(classify(code), 'broker_unavailable', String(code));
    }
    assert.equal(classify(ERRORS.ERR__QUEUE_FULL), 'queue_full');
  });

  test('anything that may have been written is an unknown outcome, never not stored', () => {
    for (const code of [
      ERRORS.ERR__FATAL,
      ERRORS.ERR__PURGE_INFLIGHT,
      ERRORS.ERR__TRANSPORT,
      ERRORS.ERR__GAPLESS_GUARANTEE,
      ERRORS.ERR_NOT_LEADER_FOR_PARTITION,
      ERRORS.ERR_REQUEST_TIMED_OUT,
      -1,
    ]) {
      const error = classifyDeliveryError({ code, message: 'x' });
      assert.equal(error.code, 'broker_outcome_unknown', String(code));
      assert.equal(error.retryable, true);
    }
  });
});
