import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigReader, loadConfigOrExit } from './config-reader.js';
import { PipelineError } from './errors.js';

/** The problems `finish()` reports, one per line, or [] when it does not throw. */
function problemsOf(reader: ConfigReader): string[] {
  try {
    reader.finish();
    return [];
  } catch (err) {
    assert.ok(err instanceof PipelineError);
    assert.equal(err.code, 'config_invalid');
    return err.message
      .split('\n')
      .filter((line) => line.startsWith('  - '))
      .map((line) => line.slice(4));
  }
}

describe('ConfigReader: defaults and parsing', () => {
  test('unset, empty and blank variables take the default', () => {
    for (const value of [undefined, '', '   ']) {
      const r = new ConfigReader({ V: value });
      assert.equal(r.string('V', 'fallback'), 'fallback');
      assert.equal(r.optionalString('V'), undefined);
      assert.equal(r.int('V', 7, { min: 0, max: 10 }), 7);
      assert.equal(r.port('V', 8080), 8080);
      assert.equal(r.secondsAsMs('V', 2.5, { min: 0, max: 10 }), 2500);
      assert.equal(r.bool('V', true), true);
      assert.deepEqual(r.list('V', ['a', 'b']), ['a', 'b']);
      assert.equal(r.oneOf('V', 'info', ['info', 'debug']), 'info');
      assert.deepEqual(problemsOf(r), []);
    }
  });

  test('strings are trimmed', () => {
    const r = new ConfigReader({ HOST: '  example.org \n', OPT: ' x ' });
    assert.equal(r.string('HOST', 'localhost'), 'example.org');
    assert.equal(r.optionalString('OPT'), 'x');
  });

  test('list defaults are copies: changing the result does not change the default', () => {
    const fallback = ['a'];
    const list = new ConfigReader({}).list('L', fallback);
    list.push('b');
    assert.deepEqual(fallback, ['a']);
  });

  test('int accepts whole numbers, including negative ones and the range ends', () => {
    const r = new ConfigReader({ A: '42', B: '-3', C: ' 10 ', D: '0', E: '007' });
    assert.equal(r.int('A', 0, { min: 0, max: 100 }), 42);
    assert.equal(r.int('B', 0, { min: -5, max: 5 }), -3);
    assert.equal(r.int('C', 0, { min: 0, max: 10 }), 10);
    assert.equal(r.int('D', 5, { min: 0, max: 10 }), 0);
    assert.equal(r.int('E', 0, { min: 0, max: 10 }), 7);
    assert.deepEqual(problemsOf(r), []);
  });

  test('int rejects decimals, exponents, signs, words and unsafe integers', () => {
    for (const raw of ['1.5', '1e3', '+5', '0x10', 'ten', '5 5', '9007199254740993']) {
      const r = new ConfigReader({ N: raw });
      assert.equal(r.int('N', 3, { min: 0, max: Number.MAX_SAFE_INTEGER }), 3, raw);
      assert.deepEqual(problemsOf(r), [`N=${JSON.stringify(raw)}: expected a whole number`]);
    }
  });

  test('int rejects values outside the range and names the range', () => {
    const r = new ConfigReader({ LOW: '0', HIGH: '11' });
    assert.equal(r.int('LOW', 5, { min: 1, max: 10 }), 5);
    assert.equal(r.int('HIGH', 5, { min: 1, max: 10 }), 5);
    assert.deepEqual(problemsOf(r), [
      'LOW=0: expected a whole number from 1 to 10',
      'HIGH=11: expected a whole number from 1 to 10',
    ]);
  });

  test('port accepts 1 to 65535 only', () => {
    const r = new ConfigReader({ A: '1', B: '65535', C: '0', D: '65536' });
    assert.equal(r.port('A', 80), 1);
    assert.equal(r.port('B', 80), 65535);
    assert.equal(r.port('C', 80), 80);
    assert.equal(r.port('D', 80), 80);
    assert.equal(problemsOf(r).length, 2);
  });

  test('secondsAsMs turns seconds, decimals included, into whole milliseconds', () => {
    const r = new ConfigReader({ A: '10', B: '0.25', C: '1.5', D: '0.0004', E: '0' });
    assert.equal(r.secondsAsMs('A', 1, { min: 0, max: 60 }), 10_000);
    assert.equal(r.secondsAsMs('B', 1, { min: 0, max: 60 }), 250);
    assert.equal(r.secondsAsMs('C', 1, { min: 0, max: 60 }), 1500);
    assert.equal(r.secondsAsMs('D', 1, { min: 0, max: 60 }), 0);
    assert.equal(r.secondsAsMs('E', 1, { min: 0, max: 60 }), 0);
    assert.equal(r.secondsAsMs('UNSET', 0.05, { min: 0, max: 60 }), 50);
    assert.deepEqual(problemsOf(r), []);
  });

  test('secondsAsMs rejects negative, malformed and out-of-range values', () => {
    for (const raw of ['-1', '1e2', '.5', '5.', '5s', 'PT5S', '0.09', '61']) {
      const r = new ConfigReader({ T: raw });
      assert.equal(r.secondsAsMs('T', 2, { min: 0.1, max: 60 }), 2000, raw);
      assert.deepEqual(problemsOf(r), [
        `T=${JSON.stringify(raw)}: expected seconds from 0.1 to 60`,
      ]);
    }
  });

  test('bool accepts true/false, 1/0, yes/no and on/off in any case', () => {
    const truthy = ['true', 'TRUE', '1', 'yes', 'Yes', 'on'];
    const falsy = ['false', 'False', '0', 'no', 'NO', 'off'];
    for (const raw of truthy) assert.equal(new ConfigReader({ B: raw }).bool('B', false), true);
    for (const raw of falsy) assert.equal(new ConfigReader({ B: raw }).bool('B', true), false);
  });

  test('bool rejects anything else and keeps the default', () => {
    const r = new ConfigReader({ B: 'maybe' });
    assert.equal(r.bool('B', true), true);
    assert.deepEqual(problemsOf(r), ['B="maybe": expected true or false']);
  });

  test('list splits on commas, trims items and drops empty ones', () => {
    const r = new ConfigReader({ L: ' a:1 , b:2,,c:3 , ' });
    assert.deepEqual(r.list('L', []), ['a:1', 'b:2', 'c:3']);
    assert.deepEqual(problemsOf(r), []);
  });

  test('a list with no items is a problem', () => {
    const r = new ConfigReader({ L: ' , ,' });
    r.list('L', ['x']);
    assert.deepEqual(problemsOf(r), ['L: expected a comma-separated list']);
  });

  test('oneOf accepts only the listed values, case-sensitively', () => {
    const levels = ['debug', 'info'] as const;
    assert.equal(new ConfigReader({ L: 'debug' }).oneOf('L', 'info', levels), 'debug');
    const r = new ConfigReader({ L: 'DEBUG' });
    assert.equal(r.oneOf('L', 'info', levels), 'info');
    assert.deepEqual(problemsOf(r), ['L="DEBUG": expected one of debug, info']);
  });
});

describe('ConfigReader.finish', () => {
  test('does nothing when every value is valid', () => {
    const r = new ConfigReader({ PORT: '9000' });
    r.port('PORT', 1);
    assert.doesNotThrow(() => r.finish());
  });

  test('reports every problem at once in one config_invalid error', () => {
    const r = new ConfigReader({
      PORT: '99999',
      COUNT: 'many',
      TIMEOUT: '-2',
      VERBOSE: 'perhaps',
      BROKERS: ',',
      LEVEL: 'loud',
    });
    r.port('PORT', 1);
    r.int('COUNT', 1, { min: 1, max: 10 });
    r.secondsAsMs('TIMEOUT', 1, { min: 0, max: 10 });
    r.bool('VERBOSE', false);
    r.list('BROKERS', ['b']);
    r.oneOf('LEVEL', 'info', ['info']);
    r.problem('A must be less than B');

    let thrown: unknown;
    try {
      r.finish();
    } catch (err) {
      thrown = err;
    }
    assert.ok(thrown instanceof PipelineError);
    assert.equal(thrown.code, 'config_invalid');
    assert.equal(thrown.retryable, false);
    for (const name of ['PORT', 'COUNT', 'TIMEOUT', 'VERBOSE', 'BROKERS', 'LEVEL']) {
      assert.match(thrown.message, new RegExp(`^  - ${name}\\b`, 'm'));
    }
    assert.match(thrown.message, /^ {2}- A must be less than B$/m);
    assert.equal(problemsOf(r).length, 7);
  });
});

describe('loadConfigOrExit', () => {
  test('returns the config when it is valid', () => {
    assert.deepEqual(
      loadConfigOrExit(() => ({ port: 1 })),
      { port: 1 },
    );
  });

  test('prints every problem and exits 2 on config_invalid', (t) => {
    const exited = new Error('process.exit called');
    // Mocked: a real exit would end the test run.
    const exit = t.mock.method(process, 'exit', () => {
      throw exited;
    });
    const written: string[] = [];
    t.mock.method(process.stderr, 'write', (chunk: string) => {
      written.push(chunk);
      return true;
    });
    assert.throws(
      () =>
        loadConfigOrExit(() => {
          const r = new ConfigReader({ A: 'x', B: 'y' });
          r.int('A', 1, { min: 0, max: 1 });
          r.bool('B', false);
          r.finish();
        }),
      exited,
    );
    t.mock.restoreAll();
    assert.deepEqual(
      exit.mock.calls.map((call) => call.arguments),
      [[2]],
    );
    assert.match(written.join(''), /A="x"/);
    assert.match(written.join(''), /B="y"/);
  });

  test('rethrows any other error untouched', () => {
    const other = new PipelineError('broker_unavailable', 'no broker');
    assert.throws(
      () =>
        loadConfigOrExit(() => {
          throw other;
        }),
      (err) => err === other,
    );
  });
});
