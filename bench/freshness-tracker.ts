/**
 * Freshness as a user sees it: from ingest receiving an event (its Kafka record timestamp) to the
 * moment its figures are visible in PostgreSQL. While the load runs, the rows' `through_offset`
 * per partition is polled every 100 ms; afterwards every record of the topic is read back with
 * kcat (partition, offset, timestamp) and given the time of the first poll that saw its offset
 * covered. Polling adds up to 100 ms, and the receive time precedes the 200 by the broker's
 * acknowledgement: both make the figure a little worse, never better.
 */
import { spawn } from 'node:child_process';
import pg from 'pg';
import { sleep } from '../shared/lifecycle.js';

const POLL_MS = 100;

export class FreshnessTracker {
  /** Per partition: (time, through_offset) whenever it moved. */
  private readonly timeline = new Map<number, Array<{ atMs: number; through: number }>>();
  private readonly db: pg.Client;
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    databaseUrl: string,
    private readonly schema: string,
  ) {
    this.db = new pg.Client({ connectionString: databaseUrl });
  }

  async start(): Promise<void> {
    await this.db.connect();
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        await this.poll().catch(() => {});
        await sleep(POLL_MS);
      }
    })();
  }

  /** Per partition the highest offset visible in PostgreSQL (-1: nothing yet). */
  visible(): Map<number, number> {
    const out = new Map<number, number>();
    for (const [partition, points] of this.timeline)
      out.set(partition, points.at(-1)?.through ?? -1);
    return out;
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await this.db.end().catch(() => {});
  }

  private async poll(): Promise<void> {
    const result = await this.db.query<{ p: number; through: string }>(
      `SELECT source_partition AS p, max(through_offset)::text AS through
         FROM ${this.schema}.user_activity_metrics GROUP BY source_partition`,
    );
    const atMs = Date.now();
    for (const row of result.rows) {
      const through = Number(row.through);
      let points = this.timeline.get(row.p);
      if (points === undefined) {
        points = [];
        this.timeline.set(row.p, points);
      }
      if ((points.at(-1)?.through ?? -1) < through) points.push({ atMs, through });
    }
  }

  /** When `offset` of `partition` first showed, or undefined if it never did. */
  visibleAt(partition: number, offset: number): number | undefined {
    const points = this.timeline.get(partition);
    if (points === undefined) return undefined;
    let lo = 0;
    let hi = points.length - 1;
    let found: number | undefined;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const point = points[mid] as { atMs: number; through: number };
      if (point.through >= offset) {
        found = point.atMs;
        hi = mid - 1;
      } else lo = mid + 1;
    }
    return found;
  }

  /**
   * Reads every record of `topic` with kcat and returns each one's freshness in ms (records never
   * seen in PostgreSQL are counted in `unseen`).
   */
  async freshnessOf(brokers: string, topic: string): Promise<{ values: number[]; unseen: number }> {
    const values: number[] = [];
    let unseen = 0;
    let rest = '';
    const kcat = spawn(
      'kcat',
      ['-C', '-b', brokers, '-t', topic, '-o', 'beginning', '-e', '-q', '-f', '%p %o %T\n'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    kcat.stdout.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk.toString('utf8')).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        const [p, o, t] = line.split(' ').map(Number) as [number, number, number];
        const at = this.visibleAt(p, o);
        if (at === undefined) unseen++;
        else values.push(Math.max(0, at - t));
      }
    });
    await new Promise<void>((resolve, reject) => {
      kcat.once('error', reject);
      kcat.once('close', (code) =>
        code === 0 ? resolve() : reject(new Error(`kcat exited with code ${code}`)),
      );
    });
    return { values, unseen };
  }
}
