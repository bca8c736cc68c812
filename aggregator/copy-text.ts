/**
 * PostgreSQL COPY text format, built as bytes: rows of numbers, timestamps and UTF-8 ids go
 * straight from the aggregator's byte sets into the chunks a COPY stream sends, without a V8
 * string per id; and the encoders of what a flush copies (`copy-writer.ts`).
 */
import type { PartitionFlush, WindowMembership, WindowRow } from './window-state.js';

const CHUNK_BYTES = 256 * 1024;
const TAB = 0x09;
const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;
const BACKSLASH = 0x5c;
const QUOTE = 0x22;
const COMMA = 0x2c;
const encoder = new TextEncoder();

/** Accumulates COPY text; `take()` hands over the full chunks, `finish()` the rest. */
export class CopyTextBuilder {
  private chunk = new Uint8Array(CHUNK_BYTES);
  private used = 0;
  private readonly done: Uint8Array[] = [];

  /** An ASCII field (a number, a timestamp, `t`/`f`, `\N`) followed by a tab. */
  field(text: string): this {
    this.room(text.length * 3 + 1);
    this.used += encoder.encodeInto(text, this.chunk.subarray(this.used)).written;
    this.chunk[this.used++] = TAB;
    return this;
  }

  /** Pre-encoded bytes as they are (a prefix of fields shared by many rows). */
  raw(bytes: Uint8Array): this {
    this.room(bytes.length);
    this.chunk.set(bytes, this.used);
    this.used += bytes.length;
    return this;
  }

  /** A text field from UTF-8 bytes, escaped, ending the row. */
  lastTextField(source: Uint8Array, start: number, end: number): this {
    this.room((end - start) * 2 + 1);
    const chunk = this.chunk;
    let used = this.used;
    for (let i = start; i < end; i++) {
      const byte = source[i] as number;
      if (byte === BACKSLASH || byte === TAB || byte === NEWLINE || byte === CARRIAGE_RETURN) {
        chunk[used++] = BACKSLASH;
        chunk[used++] =
          byte === BACKSLASH ? BACKSLASH : byte === TAB ? 0x74 : byte === NEWLINE ? 0x6e : 0x72;
      } else {
        chunk[used++] = byte;
      }
    }
    this.used = used;
    return this;
  }

  /**
   * One element of an array field from UTF-8 bytes: quoted and escaped for the array syntax,
   * then for COPY; elements after the first are preceded by a comma. The caller writes the
   * braces around them (`raw`).
   */
  arrayElement(source: Uint8Array, start: number, end: number, first: boolean): this {
    this.room((end - start) * 4 + 3);
    const chunk = this.chunk;
    let used = this.used;
    if (!first) chunk[used++] = COMMA;
    chunk[used++] = QUOTE;
    for (let i = start; i < end; i++) {
      const byte = source[i] as number;
      if (byte === QUOTE || byte === BACKSLASH) {
        // The array syntax's backslash, itself escaped for COPY.
        chunk[used++] = BACKSLASH;
        chunk[used++] = BACKSLASH;
        if (byte === BACKSLASH) {
          chunk[used++] = BACKSLASH;
          chunk[used++] = BACKSLASH;
        } else {
          chunk[used++] = QUOTE;
        }
      } else if (byte === TAB || byte === NEWLINE || byte === CARRIAGE_RETURN) {
        chunk[used++] = BACKSLASH;
        chunk[used++] = byte === TAB ? 0x74 : byte === NEWLINE ? 0x6e : 0x72;
      } else {
        chunk[used++] = byte;
      }
    }
    chunk[used++] = QUOTE;
    this.used = used;
    return this;
  }

  /** Ends a row (after `lastTextField`, or replacing the tab that `field` left). */
  endRow(afterField = false): this {
    if (afterField) this.used--;
    this.room(1);
    this.chunk[this.used++] = NEWLINE;
    return this;
  }

  /** The chunks filled so far (for streaming while building). */
  take(): Uint8Array[] {
    return this.done.splice(0);
  }

  /** Every chunk left, the last one trimmed. */
  finish(): Uint8Array[] {
    if (this.used > 0) this.done.push(this.chunk.subarray(0, this.used));
    this.chunk = new Uint8Array(0);
    this.used = 0;
    return this.done.splice(0);
  }

  private room(bytes: number): void {
    if (this.used + bytes <= this.chunk.length) return;
    if (this.used > 0) this.done.push(this.chunk.subarray(0, this.used));
    this.chunk = new Uint8Array(Math.max(CHUNK_BYTES, bytes));
    this.used = 0;
  }
}

/** Encodes `text` once, for use with `raw`. */
export function encodeFields(...fields: string[]): Uint8Array {
  return encoder.encode(fields.map((field) => `${field}\t`).join(''));
}

/**
 * COPY text of cumulative rows, one chunk per 1,000 rows. Numbers, booleans, site names and zone
 * names need no escaping (the schema allows no tab, newline or backslash in either).
 */
export function* encodeRows(rows: readonly WindowRow[]): Generator<string> {
  let chunk = '';
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as WindowRow;
    chunk += `${new Date(r.windowStart).toISOString()}\t${r.windowSeconds}\t${r.partition}\t${r.site}\t${r.timeZone}\t${r.uniqueUsers}\t${r.pageViews}\t${r.events}\t${r.firstOffset}\t${r.throughOffset}\t${Number.isFinite(r.watermark) ? r.watermark : '\\N'}\t${r.isFinal ? 't' : 'f'}\t${r.membershipStored ? 't' : 'f'}\n`;
    if (i % 1000 === 999) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk.length > 0) yield chunk;
}

/**
 * COPY text of each window's users — (window, window seconds, partition, site, user) — or of its
 * events — (window, window seconds, partition, site, page view, user, activity type, event id).
 */
export function* encodeMembership(
  entries: ReadonlyArray<{ row: WindowRow; membership: WindowMembership }>,
  eventIds: boolean,
): Generator<Uint8Array> {
  const out = new CopyTextBuilder();
  for (const { row, membership } of entries) {
    const prefix = encodeFields(
      new Date(row.windowStart).toISOString(),
      String(row.windowSeconds),
      String(row.partition),
      row.site,
    );
    if (eventIds) {
      const viewed = encodeFields('t');
      const notViewed = encodeFields('f');
      const types = membership.typeNames.map(encodeTextField);
      const users = membership.users;
      const arena = users.arenaBytes;
      let i = 0;
      membership.eventIds.forEach((ids, start, end) => {
        const user = membership.eventUsers[i] as number;
        out
          .raw(prefix)
          .raw(membership.pageViews[i] === 1 ? viewed : notViewed)
          .lastTextField(arena, users.entryStart(user), users.entryEnd(user))
          .raw(TAB_BYTES)
          .raw(types[membership.eventTypes[i] as number] as Uint8Array)
          .lastTextField(ids, start, end)
          .endRow();
        i++;
      }, membership.pageViews.length);
    } else {
      membership.users.forEach((arena, start, end) => {
        out.raw(prefix).lastTextField(arena, start, end).endRow();
      }, membership.userCount);
    }
    yield* out.take();
  }
  yield* out.finish();
}

/** A text field, escaped for COPY, followed by a tab: for `raw`. */
export function encodeTextField(text: string): Uint8Array {
  const bytes = encoder.encode(text);
  const out = new CopyTextBuilder();
  out.lastTextField(bytes, 0, bytes.length).raw(TAB_BYTES);
  return concat(out.finish());
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  const joined = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    joined.set(chunk, at);
    at += chunk.length;
  }
  return joined;
}

/**
 * COPY text of the events for closed windows: (ord, window, partition, site, page view, user,
 * activity type, event id).
 */
export function* encodeClosedEvents(flushes: readonly PartitionFlush[]): Generator<Uint8Array> {
  const out = new CopyTextBuilder();
  let ord = 0;
  for (const flush of flushes) {
    for (const pending of flush.closedWindowEvents) {
      const window = encodeFields(
        new Date(pending.windowStart).toISOString(),
        String(flush.partition),
        pending.site,
      );
      for (const part of pending.parts) {
        const types = part.types.map(encodeTextField);
        let idStart = 0;
        let userStart = 0;
        for (let i = 0; i < part.eventIds.ends.length; i++) {
          const idEnd = part.eventIds.ends[i] as number;
          const userEnd = part.eventIdUsers.ends[i] as number;
          out
            .field(String(ord++))
            .raw(window)
            .field(String(part.eventIdPageViews[i]))
            .lastTextField(part.eventIdUsers.bytes, userStart, userEnd)
            .raw(TAB_BYTES)
            .raw(types[part.eventIdTypes[i] as number] as Uint8Array)
            .lastTextField(part.eventIds.bytes, idStart, idEnd)
            .endRow();
          idStart = idEnd;
          userStart = userEnd;
        }
        yield* out.take();
      }
    }
  }
  yield* out.finish();
}

const TAB_BYTES = new Uint8Array([0x09]);

/**
 * COPY text of the closed windows that have events waiting: (window, partition, site, time zone,
 * first offset, through offset, watermark, final).
 */
export function encodeClosedWindows(flushes: readonly PartitionFlush[]): Uint8Array[] {
  const out = new CopyTextBuilder();
  for (const flush of flushes) {
    for (const pending of flush.closedWindowEvents) {
      out
        .field(new Date(pending.windowStart).toISOString())
        .field(String(flush.partition))
        .field(pending.site)
        .field(pending.timeZone)
        .field(String(pending.firstOffset))
        .field(String(flush.throughOffset))
        .field(Number.isFinite(flush.watermark) ? String(flush.watermark) : '\\N')
        .field(pending.isFinal ? 't' : 'f')
        .endRow(true);
    }
  }
  return out.finish();
}
