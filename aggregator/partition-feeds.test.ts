/**
 * The feeds between `consume` and the workers: records are packed per partition, contiguous and
 * in offset order; records delivered again, records of partitions not assigned and records
 * fetched before a partition's position was set anew are never packed.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Message } from '@confluentinc/kafka-javascript';
import { OFFSET_BEGINNING, PartitionFeeds } from './partition-feeds.js';

const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);

function message(partition: number, offset: number, value = `v${offset}`): Message {
  return {
    topic: 't',
    partition,
    offset,
    value: Buffer.from(value),
    key: Buffer.from(`k${offset}`),
    size: value.length,
    timestamp: T0 + offset,
  };
}

const noGap = (): void => assert.fail('no gap expected');

describe('PartitionFeeds', () => {
  test('packs each partition apart, in offset order, and counts the bytes waiting', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, -1, true);
    feeds.assign(1, 9, false);
    const taken = feeds.take(
      [message(0, 0), message(1, 10), message(0, 1), message(1, 11), message(2, 5)],
      feeds.sequence,
      noGap,
    );
    assert.deepEqual(taken, { redelivered: 0, stale: [] });
    // Keys and values: "k0" "v0" "k1" "v1" on 0, "k10" "v10" "k11" "v11" on 1; partition 2 is not ours.
    assert.equal(feeds.waitingBytes, 8 + 12);
    const first = feeds.next(Date.now());
    assert.equal(first?.partition, 0, 'the feed that waited longest goes first');
    const packed = first?.packer.finish();
    assert.deepEqual([...(packed?.offsets ?? [])], [0, 1]);
    assert.equal(Buffer.from(packed?.values ?? []).toString(), 'v0v1');
    assert.equal(Buffer.from(packed?.keys ?? []).toString(), 'k0k1');
    assert.equal(feeds.waitingBytes, 12);
  });

  test('records delivered again are dropped; one batch per partition at a time', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, 4, false);
    feeds.take([message(0, 5), message(0, 6)], feeds.sequence, noGap);
    const taken = feeds.take([message(0, 5), message(0, 6), message(0, 7)], feeds.sequence, noGap);
    assert.equal(taken.redelivered, 2);
    const next = feeds.next(Date.now());
    assert.deepEqual([...(next?.packer.finish().offsets ?? [])], [5, 6, 7]);
    if (next !== undefined) next.feed.inHand = Promise.resolve();
    feeds.take([message(0, 8)], feeds.sequence, noGap);
    assert.equal(feeds.next(Date.now()), undefined, 'the partition has a batch in hand');
  });

  test('records fetched before a partition was assigned anew are dropped and it is sought back', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, 99, false);
    const before = feeds.sequence;
    // Revoked and assigned again while the call was under way, from an older position.
    feeds.delete(0);
    feeds.assign(0, 49, false);
    const taken = feeds.take([message(0, 100), message(0, 101)], before, noGap);
    assert.deepEqual(taken.stale, [0]);
    assert.equal(feeds.waitingBytes, 0);
    const feed = feeds.get(0);
    assert.ok(feed !== undefined);
    assert.equal(feeds.seekOffset(feed), 50, 'read again right after what was applied');
    // Records of a call started after the seek are taken.
    feeds.take([message(0, 50)], feeds.sequence, noGap);
    assert.deepEqual([...(feeds.next(Date.now())?.packer.finish().offsets ?? [])], [50]);
  });

  test('a gap of more than one offset is reported; a partition read from its beginning is not', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, 9, false);
    feeds.assign(1, -1, true);
    const gaps: number[][] = [];
    const onGap = (partition: number, expected: number, offset: number): void => {
      gaps.push([partition, expected, offset]);
    };
    feeds.take([message(0, 11), message(0, 20), message(1, 700)], feeds.sequence, onGap);
    assert.deepEqual(gaps, [[0, 12, 20]], 'one offset (a transaction marker) is no gap');
  });

  test('a failed batch is read again after what was applied, not before its retry time', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, -1, true);
    feeds.take([message(0, 0), message(0, 1)], feeds.sequence, noGap);
    assert.equal(feeds.rewind(0, -1, Date.now() + 60_000), OFFSET_BEGINNING);
    assert.equal(feeds.waitingBytes, 0);
    feeds.take([message(0, 0)], feeds.sequence, noGap);
    assert.equal(feeds.next(Date.now()), undefined, 'waits for its retry time');
    assert.equal(feeds.next(Date.now() + 61_000)?.partition, 0);
  });

  test("a partition's next batch is sized from its last, and a batch hands over its records only", () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, -1, true);
    const big = Array.from({ length: 2_000 }, (_, i) =>
      message(0, i, `value-${i}`.padEnd(100, '.')),
    );
    feeds.take(big, feeds.sequence, noGap);
    const first = feeds.next(Date.now());
    const packed = first?.packer.finish();
    assert.equal(packed?.offsets.length, 2_000);
    assert.equal(packed?.values.length, 200_000);
    assert.deepEqual(first?.feed.lastBatch, {
      records: 2_000,
      valueBytes: 200_000,
      keyBytes: big.reduce((sum, m) => sum + (m.key?.length ?? 0), 0),
    });
    feeds.take([message(0, 2_000), message(0, 2_001)], feeds.sequence, noGap);
    const second = feeds.next(Date.now())?.packer.finish();
    // Views of the records' size over buffers sized for a batch like the last.
    assert.deepEqual([...(second?.offsets ?? [])], [2_000, 2_001]);
    assert.equal(Buffer.from(second?.values ?? []).toString(), 'v2000v2001');
    assert.deepEqual([...(second?.valueEnds ?? [])], [5, 10]);
    assert.ok((second?.values.buffer.byteLength ?? 0) >= 200_000);
  });
});
