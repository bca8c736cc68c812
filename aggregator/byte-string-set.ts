/**
 * An exact set of short byte strings — the user ids and event ids of an open window — in two
 * typed arrays instead of V8 objects.
 *
 * A `Set<string>` costs 50–80 bytes per id (a string object and a hash-table entry on the V8
 * heap, which also grows with every batch's garbage). Here each id is its UTF-8 bytes behind a
 * 2-byte length in one arena, plus one slot in an open-addressing table (linear probing) that
 * holds its arena position and its 32-bit hash: about the id's length + 2 + 8 / load bytes.
 * Hashes only narrow the search; membership is decided by comparing the bytes, so the set is
 * exact: two ids that share a hash are still two ids. Comparing UTF-8 bytes is comparing the
 * strings, because the schema refuses lone surrogates (the one case where two JavaScript strings
 * encode to the same bytes).
 */

/** The table doubles when more than this share of its slots is taken. */
const MAX_LOAD = 0.7;
/** Arena bytes before each entry: its length, little-endian. */
const LENGTH_BYTES = 2;
/** Entries up to this long are copied byte by byte (see `append`). */
const SHORT_COPY_BYTES = 64;
const MAX_ENTRY_BYTES = 0xffff;

export class ByteStringSet {
  private arena: Uint8Array;
  private used = 0;
  /** Arena position + 1 of the entry in each slot; 0 marks a free slot. */
  private slots: Int32Array;
  private hashes: Uint32Array;
  private count = 0;

  constructor(expected = 8) {
    let capacity = 16;
    while (capacity * MAX_LOAD < expected) capacity *= 2;
    this.slots = new Int32Array(capacity);
    this.hashes = new Uint32Array(capacity);
    this.arena = new Uint8Array(Math.max(256, expected * 24));
  }

  get size(): number {
    return this.count;
  }

  /** Bytes allocated for the table and the arena. */
  get allocatedBytes(): number {
    return this.slots.byteLength + this.hashes.byteLength + this.arena.byteLength;
  }

  /**
   * Adds `source[start..end)`; returns false when the set already held those bytes.
   * Throws a RangeError for more than 65,535 bytes (the schema allows far less).
   */
  add(source: Uint8Array, start: number, end: number, hash?: number): boolean {
    return this.insert(source, start, end, hash) > 0;
  }

  /**
   * Adds `source[start..end)` like `add`, and says where the entry is: its arena position + 1
   * when it was added now, minus that when the set held it already. An entry's position never
   * changes (`arenaBytes`, `entryEnd`). `hash`, when given, must be `hashBytes` of those bytes:
   * the workers compute it, so that the main thread only probes and compares.
   */
  insert(
    source: Uint8Array,
    start: number,
    end: number,
    hash = hashBytes(source, start, end),
  ): number {
    const length = end - start;
    if (length > MAX_ENTRY_BYTES) throw new RangeError(`an entry of ${length} bytes is too long`);
    let mask = this.slots.length - 1;
    let slot = hash & mask;
    for (;;) {
      const position = this.slots[slot] as number;
      if (position === 0) break;
      if (this.hashes[slot] === hash && this.holds(position - 1, source, start, length)) {
        return -position;
      }
      slot = (slot + 1) & mask;
    }
    if (this.count + 1 > this.slots.length * MAX_LOAD) {
      this.growTable();
      mask = this.slots.length - 1;
      slot = hash & mask;
      while (this.slots[slot] !== 0) slot = (slot + 1) & mask;
    }
    const position = this.append(source, start, length) + 1;
    this.slots[slot] = position;
    this.hashes[slot] = hash;
    this.count++;
    return position;
  }

  /** The arena as it is now: the bytes at an entry's position are never moved or changed. */
  get arenaBytes(): Uint8Array {
    return this.arena;
  }

  /** The bytes of the entry at arena `position`: `arenaBytes[entryStart .. entryEnd)`. */
  entryStart(position: number): number {
    return position + LENGTH_BYTES;
  }

  /** Where the bytes of the entry at arena `position` end (see `entryStart`). */
  entryEnd(position: number): number {
    const arena = this.arena;
    const length = (arena[position] as number) | ((arena[position + 1] as number) << 8);
    return position + LENGTH_BYTES + length;
  }

  /**
   * Calls `visit` with each entry's bytes (`arena[start..end)`), in the order they were added:
   * the first `limit` entries (all by default), so that a snapshot sees the set as it was.
   */
  forEach(
    visit: (arena: Uint8Array, start: number, end: number) => void,
    limit = this.count,
  ): void {
    const arena = this.arena;
    let position = 0;
    for (let visited = 0; visited < limit && position < this.used; visited++) {
      const length = (arena[position] as number) | ((arena[position + 1] as number) << 8);
      const start = position + LENGTH_BYTES;
      visit(arena, start, start + length);
      position = start + length;
    }
  }

  /** The whole of `source` (tests and callers holding one id). */
  addBytes(source: Uint8Array): boolean {
    return this.add(source, 0, source.length);
  }

  private holds(position: number, source: Uint8Array, start: number, length: number): boolean {
    const arena = this.arena;
    if (((arena[position] as number) | ((arena[position + 1] as number) << 8)) !== length) {
      return false;
    }
    const from = position + LENGTH_BYTES;
    for (let i = 0; i < length; i++) {
      if (arena[from + i] !== source[start + i]) return false;
    }
    return true;
  }

  /** Copies an entry into the arena; returns its position. */
  private append(source: Uint8Array, start: number, length: number): number {
    const needed = this.used + LENGTH_BYTES + length;
    if (needed > this.arena.length) {
      // 1.5×: the arena is most of the memory, and an untouched tail costs no resident pages.
      const grown = new Uint8Array(Math.max(needed, Math.floor(this.arena.length * 1.5)));
      grown.set(this.arena.subarray(0, this.used));
      this.arena = grown;
    }
    const position = this.used;
    const arena = this.arena;
    arena[position] = length & 0xff;
    arena[position + 1] = length >>> 8;
    if (length <= SHORT_COPY_BYTES) {
      // Ids are short: a loop beats making a subarray view for `set`.
      const to = position + LENGTH_BYTES - start;
      for (let i = start; i < start + length; i++) arena[to + i] = source[i] as number;
    } else {
      arena.set(source.subarray(start, start + length), position + LENGTH_BYTES);
    }
    this.used = needed;
    return position;
  }

  /** Doubles the table, placing entries by their stored hashes (the bytes are not read). */
  private growTable(): void {
    const oldSlots = this.slots;
    const oldHashes = this.hashes;
    const capacity = oldSlots.length * 2;
    const mask = capacity - 1;
    this.slots = new Int32Array(capacity);
    this.hashes = new Uint32Array(capacity);
    for (let i = 0; i < oldSlots.length; i++) {
      const position = oldSlots[i] as number;
      if (position === 0) continue;
      const hash = oldHashes[i] as number;
      let slot = hash & mask;
      while (this.slots[slot] !== 0) slot = (slot + 1) & mask;
      this.slots[slot] = position;
      this.hashes[slot] = hash;
    }
  }
}

/** FNV-1a over the bytes, then murmur3's finaliser so that linear probing sees spread bits. */
export function hashBytes(source: Uint8Array, start: number, end: number): number {
  let hash = 0x811c9dc5;
  for (let i = start; i < end; i++) {
    hash = Math.imul(hash ^ (source[i] as number), 0x01000193);
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}
