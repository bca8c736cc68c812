/**
 * Lists of short strings (user ids, event ids) as UTF-8 bytes in one buffer: how a worker hands
 * them to the main thread. A `string[]` crosses the thread boundary as one V8 string per item,
 * built again on the main thread and left there as garbage once merged; two typed arrays are two
 * `memcpy`s, and the main thread merges them without creating a single string.
 */

/**
 * String `i` is `bytes[ends[i - 1] ?? 0 .. ends[i])`; `hashes[i]` is `hashBytes` of those bytes,
 * computed where the strings were packed (a worker), so the main thread merging them into its
 * `ByteStringSet`s hashes nothing.
 */
export interface PackedStrings {
  bytes: Uint8Array;
  ends: Uint32Array;
  hashes: Uint32Array;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

import { hashBytes } from './byte-string-set.js';

type GrowableArray = Uint8Array | Int32Array | Uint32Array | Float64Array;

/**
 * A new array of `array`'s type with room for `capacity` items, holding its first `used` items
 * (all of them by default): how the packers and window aggregates grow their buffers.
 */
export function withCapacity<T extends GrowableArray>(
  array: T,
  capacity: number,
  used: number = array.length,
): T {
  const next = new (array.constructor as new (length: number) => T)(capacity);
  (next as { set(items: ArrayLike<number>): void }).set(array.subarray(0, used));
  return next;
}

/** Appends strings as UTF-8; `finish()` returns them packed, trimmed to their size. */
export class PackedStringsBuilder {
  private bytes = new Uint8Array(1024);
  private ends = new Uint32Array(64);
  private hashes = new Uint32Array(64);
  private used = 0;
  private count = 0;

  get length(): number {
    return this.count;
  }

  push(value: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    const room = value.length * 3;
    if (this.used + room > this.bytes.length) {
      this.bytes = withCapacity(
        this.bytes,
        Math.max(this.bytes.length * 2, this.used + room),
        this.used,
      );
    }
    const start = this.used;
    this.used += encoder.encodeInto(value, this.bytes.subarray(this.used)).written;
    if (this.count === this.ends.length) {
      this.ends = withCapacity(this.ends, this.ends.length * 2);
      this.hashes = withCapacity(this.hashes, this.hashes.length * 2);
    }
    this.hashes[this.count] = hashBytes(this.bytes, start, this.used);
    this.ends[this.count++] = this.used;
  }

  finish(): PackedStrings {
    return {
      bytes: this.bytes.slice(0, this.used),
      ends: this.ends.slice(0, this.count),
      hashes: this.hashes.slice(0, this.count),
    };
  }
}

/** Packs `values` (tests, and callers that already hold strings). */
export function packStrings(values: Iterable<string>): PackedStrings {
  const builder = new PackedStringsBuilder();
  for (const value of values) builder.push(value);
  return builder.finish();
}

/** The strings back, in order (tests and diagnostics; the data path never decodes them). */
export function unpackStrings(packed: PackedStrings): string[] {
  const values: string[] = [];
  let start = 0;
  for (const end of packed.ends) {
    values.push(decoder.decode(packed.bytes.subarray(start, end)));
    start = end;
  }
  return values;
}
