import type { ClientBase } from 'pg';

/**
 * Each partition's first offset not yet reflected in PostgreSQL, or `'beginning'` when it has no
 * rows: where the group as a whole stands, whoever consumes each partition. One index lookup
 * per partition (`user_activity_metrics_partition_offset`), so it is cheap to ask every few
 * seconds.
 */
export async function loadStoredPositions(
  client: ClientBase,
  partitions: readonly number[],
  windowSeconds: number,
): Promise<Map<number, number | 'beginning'>> {
  const result = await client.query<{ partition: number; through: string | null }>(
    `SELECT p AS partition,
            (SELECT max(through_offset) FROM user_activity_metrics
              WHERE source_partition = p AND window_seconds = $2) AS through
       FROM unnest($1::int[]) AS p`,
    [partitions, windowSeconds],
  );
  return new Map(
    result.rows.map((row) => [
      row.partition,
      row.through === null ? 'beginning' : Number(row.through) + 1,
    ]),
  );
}
