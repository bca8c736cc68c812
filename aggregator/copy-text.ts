/**
 * PostgreSQL COPY text format, built as bytes: rows of numbers, timestamps and UTF-8 ids go
 * straight from the aggregator's byte sets into the chunks a COPY stream sends, without a V8
 * string per id.
 */

const CHUNK_BYTES = 256 * 1024;
const TAB = 0x09;
const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;
const BACKSLASH = 0x5c;
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
