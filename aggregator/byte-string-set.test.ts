import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { seededRandom } from '../shared/testing.js';
import { ByteStringSet, hashBytes } from './byte-string-set.js';
import { PackedStringsBuilder, packStrings, unpackStrings } from './packed-strings.js';

const utf8 = (value: string): Uint8Array => Buffer.from(value, 'utf8');

describe('ByteStringSet', () => {
  test('counts each distinct id once, exactly like a Set<string>, through many growths', () => {
    const random = seededRandom(7);
    const set = new ByteStringSet();
    const reference = new Set<string>();
    for (let i = 0; i < 50_000; i++) {
      // Repeats, prefixes of each other, the empty id, non-ASCII: all must stay distinct.
      const n = Math.floor(random() * 20_000);
      const id = n % 97 === 0 ? `ü-${n}-€` : n % 89 === 0 ? '' : `user-${n}`;
      const added = set.addBytes(utf8(id));
      assert.equal(added, !reference.has(id), `add(${JSON.stringify(id)})`);
      reference.add(id);
    }
    assert.equal(set.size, reference.size);
  });

  test('ids of every length up to hundreds of bytes, short and long copies alike, read back whole', () => {
    const set = new ByteStringSet(4);
    const ids = Array.from({ length: 300 }, (_, n) => 'abcdefghij'.repeat(30).slice(0, n));
    for (const id of ids) assert.equal(set.addBytes(utf8(`${id}!`)), true);
    for (const id of ids)
      assert.equal(set.addBytes(utf8(`${id}!`)), false, `${id.length + 1} bytes`);
    const read: string[] = [];
    set.forEach((arena, start, end) => {
      read.push(Buffer.from(arena.subarray(start, end)).toString());
    });
    assert.deepEqual(
      read,
      ids.map((id) => `${id}!`),
    );
  });

  test('ids that share a hash are still two ids: equality is decided by the bytes', () => {
    // A full 32-bit hash collision between two different ids (the birthday bound finds one
    // within a few hundred thousand ids).
    const byHash = new Map<number, string>();
    let pair: [string, string] | undefined;
    for (let i = 0; pair === undefined; i++) {
      const id = `id-${i}`;
      const bytes = utf8(id);
      const hash = hashBytes(bytes, 0, bytes.length);
      const other = byHash.get(hash);
      if (other !== undefined) pair = [other, id];
      byHash.set(hash, id);
    }
    const set = new ByteStringSet();
    assert.equal(set.addBytes(utf8(pair[0])), true);
    assert.equal(set.addBytes(utf8(pair[1])), true);
    assert.equal(set.addBytes(utf8(pair[0])), false);
    assert.equal(set.addBytes(utf8(pair[1])), false);
    assert.equal(set.size, 2);
  });

  test('a slice of a larger buffer is compared by its own bytes only', () => {
    const buffer = utf8('abcabc');
    const set = new ByteStringSet();
    assert.equal(set.add(buffer, 0, 3), true);
    assert.equal(set.add(buffer, 3, 6), false);
    assert.equal(set.add(buffer, 0, 2), true);
    assert.equal(set.add(buffer, 1, 3), true);
    assert.equal(set.size, 3);
  });

  test('holds a million ids in a few tens of bytes each', () => {
    const set = new ByteStringSet();
    for (let i = 0; i < 1_000_000; i++) set.addBytes(utf8(`user-${i}`));
    assert.equal(set.size, 1_000_000);
    // ~12 bytes of id, 2 of length, 8 per slot at a load between 0.35 and 0.7, arena slack.
    const perId = set.allocatedBytes / set.size;
    assert.ok(perId < 64, `${perId.toFixed(1)} bytes per id`);
  });

  test('refuses an entry longer than its 2-byte length can say', () => {
    const set = new ByteStringSet();
    assert.throws(() => set.addBytes(new Uint8Array(70_000)), RangeError);
  });
});

describe('PackedStrings', () => {
  test('round-trips strings of any Unicode, the empty one included', () => {
    const values = ['a', '', 'ü€', '😀 emoji', 'x'.repeat(5_000), 'last'];
    assert.deepEqual(unpackStrings(packStrings(values)), values);
  });

  test('the builder grows past its first buffers and trims what it returns', () => {
    const builder = new PackedStringsBuilder();
    const values = Array.from({ length: 3_000 }, (_, i) => `event-${i}`);
    for (const value of values) builder.push(value);
    const packed = builder.finish();
    assert.equal(builder.length, values.length);
    assert.equal(packed.ends.length, values.length);
    assert.equal(packed.bytes.length, Buffer.byteLength(values.join('')));
    assert.deepEqual(unpackStrings(packed), values);
  });
});
