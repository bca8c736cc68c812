import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatLogLine } from './log-format.js';

const options = { service: 'ingest', utc: true } as const;

function pinoLine(fields: Record<string, unknown>): string {
  return JSON.stringify({
    level: 30,
    time: '2026-03-01T10:45:33.120Z',
    pid: 4242,
    hostname: 'box',
    service: 'ingest',
    ...fields,
  });
}

describe('formatLogLine', () => {
  test('shows time, service, level, component, message and the remaining fields', () => {
    const line = pinoLine({ component: 'http', msg: 'listening', port: 8080, host: '0.0.0.0' });
    assert.equal(
      formatLogLine(line, options),
      '10:45:33 ingest INFO  [http] listening port=8080 host=0.0.0.0',
    );
  });

  test('pads the service name so that columns line up', () => {
    const line = pinoLine({ component: 'http', msg: 'listening' });
    assert.equal(
      formatLogLine(line, { ...options, serviceWidth: 10 }),
      '10:45:33 ingest     INFO  [http] listening',
    );
  });

  test('maps every pino level to its label', () => {
    const labels = [10, 20, 30, 40, 50, 60].map(
      (level) => formatLogLine(pinoLine({ level, msg: 'm' }), options).split(' ')[2],
    );
    assert.deepEqual(labels, ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL']);
  });

  test('quotes strings with spaces and prints objects as JSON', () => {
    const line = pinoLine({ msg: 'batch', reason: 'queue full', topic: 'activity', p: { a: 1 } });
    assert.equal(
      formatLogLine(line, options),
      '10:45:33 ingest INFO  batch reason="queue full" topic=activity p={"a":1}',
    );
  });

  test('uses the service from the record over the default', () => {
    const line = pinoLine({ service: 'aggregator', msg: 'up' });
    assert.equal(formatLogLine(line, options), '10:45:33 aggregator INFO  up');
  });

  test('an error at level error shows its message, code and indented stack', () => {
    const err = {
      type: 'PipelineError',
      message: 'connect ECONNREFUSED',
      code: 'database_unavailable',
      stack:
        'PipelineError: connect ECONNREFUSED\n    at connect (db.js:1:1)\n    at main (main.js:2:2)',
    };
    const line = pinoLine({ level: 50, component: 'db', msg: 'flush failed', err });
    assert.deepEqual(formatLogLine(line, options).split('\n'), [
      '10:45:33 ingest ERROR [db] flush failed err="connect ECONNREFUSED" err.code=database_unavailable',
      '    PipelineError: connect ECONNREFUSED',
      '    at connect (db.js:1:1)',
      '    at main (main.js:2:2)',
    ]);
  });

  test('an error below level error shows only its message', () => {
    const err = {
      type: 'Error',
      message: 'retrying',
      stack: 'Error: retrying\n    at x (x.js:1:1)',
    };
    const line = pinoLine({ level: 40, msg: 'produce failed', err });
    assert.equal(formatLogLine(line, options), '10:45:33 ingest WARN  produce failed err=retrying');
  });

  test('passes non-JSON lines through with the service name', () => {
    assert.equal(
      formatLogLine('Segmentation fault (core dumped)', { ...options, serviceWidth: 10 }),
      '         ingest     Segmentation fault (core dumped)',
    );
    assert.equal(formatLogLine('{not json', options), '         ingest {not json');
    assert.equal(formatLogLine('[1,2]', options), '         ingest [1,2]');
  });

  test('accepts epoch-millisecond times and tolerates a missing time', () => {
    const epoch = JSON.stringify({ level: 30, time: Date.UTC(2026, 0, 1, 7, 8, 9), msg: 'x' });
    assert.equal(formatLogLine(epoch, options), '07:08:09 ingest INFO  x');
    const none = JSON.stringify({ level: 30, msg: 'x' });
    assert.equal(formatLogLine(none, options), '         ingest INFO  x');
  });

  test('adds ANSI colours only when asked', () => {
    const line = pinoLine({ level: 50, msg: 'boom' });
    const ansi = '\u001b[';
    assert.ok(formatLogLine(line, { ...options, color: true }).includes(`${ansi}31mERROR`));
    assert.ok(!formatLogLine(line, options).includes(ansi));
  });
});
