import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { hasCode } from './errors.js';
import {
  decodeSketch,
  decodeSketchHeader,
  estimateCardinality,
  improvedRawEstimate,
  sketchBytesFromText,
} from './hll-estimator.js';
import { seededRandom } from './testing.js';

const bytes = (hex: string): Uint8Array => Buffer.from(hex, 'hex');

/** Version 1 and a type, then log2m and regwidth, then sparseon and expthresh -1 (auto). */
const header = (type: number, log2m: number, regwidth: number): string =>
  Buffer.from([0x10 | type, ((regwidth - 1) << 5) | log2m, 0x40 | 63]).toString('hex');

/**
 * A full sketch's register histogram for `n` distinct random hashes, drawn as the extension
 * fills registers: a uniform register, and min(1 + trailing zero bits, 2^regwidth - 1).
 */
function simulatedCounts(n: number, log2m: number, seed: number): number[] {
  const random = seededRandom(seed);
  const registers = new Uint8Array(2 ** log2m);
  for (let i = 0; i < n; i++) {
    const index = Math.floor(random() * registers.length);
    // P(value ≥ k) = 2^-(k-1); 1 - random() is in (0, 1].
    const value = Math.min(1 + Math.floor(-Math.log2(1 - random())), 31);
    if (value > (registers[index] ?? 0)) registers[index] = value;
  }
  const counts = new Array<number>(32).fill(0);
  for (const value of registers) counts[value] = (counts[value] ?? 0) + 1;
  return counts;
}

describe('decodeSketch', () => {
  test("reads the header of the pipeline's empty sketch, as PostgreSQL prints it", () => {
    const sketch = sketchBytesFromText('\\x11917f');
    assert.deepEqual(decodeSketchHeader(sketch), {
      representation: 'empty',
      log2m: 17,
      regwidth: 5,
      expthresh: -1,
      sparseon: true,
    });
    assert.deepEqual(estimateCardinality(sketch), {
      value: 0,
      exact: true,
      relativeStandardError: 0,
      header: decodeSketchHeader(sketch),
    });
  });

  test('an explicit sketch holds one 8-byte hash per value', () => {
    const sketch = bytes(`${header(2, 17, 5)}${'cba79700677cdeaa'}${'0000000000000001'}`);
    assert.equal(decodeSketch(sketch).explicitCount, 2);
    assert.deepEqual(
      { ...estimateCardinality(sketch), header: undefined },
      { value: 2, exact: true, relativeStandardError: 0, header: undefined },
    );
  });

  test("a sparse sketch: the storage specification's example, (11, 6) and (1099, 19)", () => {
    // The bytes of its binary line; its hex line has a typo (5B for B4).
    const counts = decodeSketch(bytes(`${header(3, 11, 6)}016344b4c0`)).registerCounts;
    const expected = new Array<number>(64).fill(0);
    expected[0] = 2048 - 2;
    expected[6] = 1;
    expected[19] = 1;
    assert.deepEqual(counts, expected);
  });

  test("a full sketch: the storage specification's example, registers 0, 1, 2, 3", () => {
    // 4 registers are fewer than the extension allows, but the packing is the same.
    const counts = decodeSketch(bytes(`${header(4, 2, 5)}004430`)).registerCounts;
    assert.deepEqual(counts?.slice(0, 5), [1, 1, 1, 1, 0]);
  });

  test('refuses what is not a sketch, naming the problem', () => {
    const refused = (input: Uint8Array | string, pattern: RegExp) =>
      assert.throws(
        () =>
          typeof input === 'string'
            ? estimateCardinality(sketchBytesFromText(input))
            : estimateCardinality(input),
        (err: unknown) => hasCode(err, 'sketch_invalid') && pattern.test(err.message),
      );
    refused('11917f', /text form/);
    refused(bytes('1191'), /at least 3/);
    refused(bytes('21917f'), /schema version 2/);
    refused(bytes('10917f'), /undefined/);
    refused(bytes(`${header(2, 17, 5)}00000000`), /multiple of 8/);
    refused(bytes(`${header(4, 17, 5)}0000`), /full data of 2 bytes, 81920 expected/);
  });
});

describe('improvedRawEstimate', () => {
  test('no values: 0; one register set among many: about 1', () => {
    assert.equal(improvedRawEstimate([2 ** 17, ...new Array<number>(31).fill(0)], 30), 0);
    const one = improvedRawEstimate([2 ** 17 - 1, 1, ...new Array<number>(30).fill(0)], 30);
    assert.ok(Math.abs(one - 1) < 0.01, `${one}`);
  });

  test('within 1 % of simulated sets from 1,000 to 2,000,000, across the linear-counting switch', () => {
    // With 2^17 registers the extension's hll_cardinality() changes estimators at 327,680.
    for (const [n, seed] of [
      [1_000, 1],
      [50_000, 2],
      [327_680, 3],
      [400_000, 4],
      [2_000_000, 5],
    ] as const) {
      const estimate = improvedRawEstimate(simulatedCounts(n, 17, seed), 30);
      const error = Math.abs(estimate - n) / n;
      assert.ok(error < 0.01, `n=${n}: estimate ${estimate.toFixed(0)}`);
    }
  });
});
