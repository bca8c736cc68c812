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
    assert.deepEqual(taken, { redelivered: 0, stale: [], gaps: [] });
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
    // Until the seek is done, whatever comes is from the old position.
    assert.deepEqual(feeds.take([message(0, 102)], feeds.sequence, noGap).stale, [0]);
    feeds.sought(0, feed, 50);
    // Records of a call started after the seek are taken.
    feeds.take([message(0, 50)], feeds.sequence, noGap);
    assert.deepEqual([...(feeds.next(Date.now())?.packer.finish().offsets ?? [])], [50]);
  });

  test('a gap is never taken on first sight: the records are dropped and the partition sought back', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, 9, false);
    feeds.assign(1, -1, true);
    const taken = feeds.take(
      [message(0, 11), message(0, 20), message(1, 700), message(0, 21)],
      feeds.sequence,
      noGap,
    );
    assert.deepEqual(taken.stale, [0], 'one offset (a transaction marker) is no gap');
    const feed = feeds.get(0);
    assert.ok(feed !== undefined);
    assert.equal(feed.lastPacked, 11, 'nothing after the gap was packed');
    assert.equal(feeds.seekOffset(feed), 12);
    assert.deepEqual([...(feeds.next(Date.now())?.packer.finish().offsets ?? [])], [11]);
    assert.deepEqual(
      [...(feeds.next(Date.now())?.packer.finish().offsets ?? [])],
      [700],
      'a partition read from its beginning has no gap to check',
    );
  });

  test('records prefetched before a seek, handed out after it, leave no gap (the chaos failure)', () => {
    // Assigned with a replay from 1407 while a call was under way: the call's records are
    // dropped and the partition sought back. A call that ran before the seek took hold hands out
    // what librdkafka had prefetched past them: taking it would skip 1407..2183.
    const feeds = new PartitionFeeds();
    const before = feeds.sequence;
    feeds.assign(2, 1406, false);
    const stale = feeds.take(
      Array.from({ length: 777 }, (_, i) => message(2, 1407 + i)),
      before,
      noGap,
    );
    assert.deepEqual(stale.stale, [2]);
    const early = feeds.take([message(2, 2184), message(2, 2185)], feeds.sequence, noGap);
    assert.deepEqual(early.stale, [2], 'not taken while the seek back is pending');
    assert.equal(feeds.waitingBytes, 0);
    // Had the seek failed, and the pending mark been lost, the gap alone would keep it out.
    const lost = feeds.get(2);
    assert.ok(lost !== undefined);
    lost.seekPending = false;
    const gap = feeds.take([message(2, 2184)], feeds.sequence, noGap);
    assert.deepEqual(gap.gaps, [{ partition: 2, expected: 1407, offset: 2184 }]);
    assert.equal(feeds.waitingBytes, 0);
    const feed = feeds.get(2);
    assert.ok(feed !== undefined);
    feeds.sought(2, feed, feeds.seekOffset(feed));
    const replay = Array.from({ length: 779 }, (_, i) => message(2, 1407 + i));
    assert.deepEqual(feeds.take(replay, feeds.sequence, noGap), {
      redelivered: 0,
      stale: [],
      gaps: [],
    });
    const offsets = [...(feeds.next(Date.now())?.packer.finish().offsets ?? [])];
    assert.equal(offsets.length, 779);
    assert.equal(offsets[0], 1407);
    assert.equal(offsets.at(-1), 2185);
  });

  test("the same gap after a completed seek is the log's: reported and taken", () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, 9, false);
    const gaps: number[][] = [];
    const onGap = (partition: number, expected: number, offset: number): void => {
      gaps.push([partition, expected, offset]);
    };
    feeds.take([message(0, 30)], feeds.sequence, onGap);
    const feed = feeds.get(0);
    assert.ok(feed !== undefined);
    // A seek that failed (not `sought`) proves nothing: the gap is dropped again.
    assert.deepEqual(feeds.take([message(0, 30)], feeds.sequence, onGap).stale, [0]);
    // A seek elsewhere than the feed's next record proves nothing either.
    feeds.sought(0, feed, 5);
    assert.deepEqual(feeds.take([message(0, 30)], feeds.sequence, onGap).stale, [0]);
    feeds.sought(0, feed, feeds.seekOffset(feed));
    assert.deepEqual(feeds.take([message(0, 30), message(0, 31)], feeds.sequence, onGap), {
      redelivered: 0,
      stale: [],
      gaps: [],
    });
    assert.deepEqual(gaps, [[0, 10, 30]]);
    assert.deepEqual([...(feeds.next(Date.now())?.packer.finish().offsets ?? [])], [30, 31]);
    assert.equal(feed.gap, undefined);
  });

  test('a partition read from its beginning takes nothing until its seek back is done', () => {
    const feeds = new PartitionFeeds();
    const before = feeds.sequence;
    feeds.assign(0, -1, true);
    assert.deepEqual(feeds.take([message(0, 0), message(0, 1)], before, noGap).stale, [0]);
    // No gap to see without a position: the seek pending is what keeps 2 from being taken first.
    assert.deepEqual(feeds.take([message(0, 2)], feeds.sequence, noGap).stale, [0]);
    const feed = feeds.get(0);
    assert.ok(feed !== undefined);
    assert.equal(feeds.seekOffset(feed), OFFSET_BEGINNING);
    feeds.sought(0, feed, OFFSET_BEGINNING);
    feeds.take([message(0, 0), message(0, 1), message(0, 2)], feeds.sequence, noGap);
    assert.deepEqual([...(feeds.next(Date.now())?.packer.finish().offsets ?? [])], [0, 1, 2]);
  });

  test('a gap other than the one sought back to is dropped again', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, 9, false);
    feeds.take([message(0, 30)], feeds.sequence, noGap);
    const feed = feeds.get(0);
    assert.ok(feed !== undefined);
    feeds.sought(0, feed, feeds.seekOffset(feed));
    // Retention moved on meanwhile: the earliest record is now 40.
    assert.deepEqual(feeds.take([message(0, 40)], feeds.sequence, noGap).stale, [0]);
    assert.equal(feeds.waitingBytes, 0);
  });

  test('a failed batch is read again after what was applied, not before its retry time', () => {
    const feeds = new PartitionFeeds();
    feeds.assign(0, -1, true);
    feeds.take([message(0, 0), message(0, 1)], feeds.sequence, noGap);
    assert.equal(feeds.rewind(0, -1, Date.now() + 60_000), OFFSET_BEGINNING);
    assert.equal(feeds.waitingBytes, 0);
    const feed = feeds.get(0);
    assert.ok(feed !== undefined);
    feeds.sought(0, feed, OFFSET_BEGINNING);
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
