import type { ClientBase } from 'pg';
import { sealSketchesBefore } from './rollups.js';

/**
 * What the aggregator keeps, and for how long: each tier of figures for its own time, and the
 * membership (`window_users`, `window_events`, `period_users`) only as long as a late event can
 * still arrive for it. One instance at a time enforces it (a session advisory lock), hourly.
 *
 * Membership lives in daily partitions (UTC days), so forgetting a day is dropping its tables:
 * no long DELETE, no table bloat, and a lock on the parent only for the moment of the drop (or
 * of a creation), bounded by a short `lock_timeout` (a drop that cannot get it at once is tried
 * again the next hour). Figures are few rows per window or hour, deleted in small batches.
 *
 * The membership of a window is needed while an event for it can be valid: up to
 * `maxEventAgeMs` after its end, by the event's receive time, plus a day for a consumer that
 * lags behind. An event for a window older than that (`membershipHorizon`) is dead-lettered as
 * `late` rather than counted against a membership that may be gone; partitions are dropped a day
 * after that, so an instance whose clock is a little behind never counts against a dropped day.
 */

export interface RetentionSettings {
  maxEventAgeMs: number;
  /** How long minute rows are kept; at least `maxEventAgeMs` plus two days. */
  minuteRowsMs: number;
  /** How long hour rows are kept. */
  hourRowsMs: number;
  /** How long day rows are kept; `null` keeps them forever. */
  dayRowsMs: number | null;
}

const DAY_MS = 86_400_000;
/** Time allowed beyond the age bound for a consumer lagging behind its topic. */
const CONSUMER_LAG_ALLOWANCE_MS = DAY_MS;
/** Partitions are dropped this long after their windows stop taking events. */
const DROP_DELAY_MS = DAY_MS;
/** Days of partitions created ahead of today. */
const DAYS_AHEAD = 2;
/** Rows deleted per statement: each holds its row locks for a moment only. */
const DELETE_BATCH = 5_000;
/** The longest a drop or a creation waits for a lock before giving up (see their callers). */
const LOCK_TIMEOUT = '500ms';
/** Attempts at a day's partitions in one run, and the pause between them. */
const CREATE_ATTEMPTS = 5;
const CREATE_RETRY_MS = 1_000;
/** PostgreSQL's code for a lock not granted within `lock_timeout`. */
const LOCK_NOT_AVAILABLE = '55P03';
const CHECK_VIOLATION = '23514';
const DEADLOCK_DETECTED = '40P01';
const MEMBERSHIP_TABLES = ['window_users', 'window_events', 'period_users'] as const;

/**
 * Windows starting before this may have lost their membership: their events are dead-lettered
 * as `late` (see the module comment). A whole UTC day, so that it moves once a day.
 */
export function membershipHorizon(nowMs: number, maxEventAgeMs: number): number {
  return utcDay(nowMs - maxEventAgeMs - CONSUMER_LAG_ALLOWANCE_MS);
}

/** What one run did. */
export interface RetentionOutcome {
  partitionsCreated: number;
  partitionsDropped: number;
  rowsDeleted: number;
}

/**
 * Creates the daily membership partitions of today and the next days, where missing; one
 * instance at a time (a transaction lock), each day in a transaction of its own.
 *
 * A day's three partitions are created in one transaction, each holding its parent's lock until
 * COMMIT, while a flush locks the same parents in another order: waiting on a flush while holding
 * a parent it needs would be a deadlock. So each lock waits at most `lock_timeout` (shorter than
 * PostgreSQL's deadlock_timeout, 1 s by default), and a day that could not get them is tried again
 * a little later, then left to the next run: the days ahead are created two days early.
 */
export async function ensureDailyPartitions(client: ClientBase, nowMs: number): Promise<number> {
  let created = 0;
  const schema = await currentSchema(client);
  for (let day = 0; day <= DAYS_AHEAD; day++) {
    const date = isoDate(utcDay(nowMs) + day * DAY_MS);
    for (let attempt = 1; ; attempt++) {
      await client.query('BEGIN');
      try {
        await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`partitions:${schema}`]);
        await client.query(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
        const before = await countPartitions(client);
        await client.query('SELECT activity_ensure_day_partitions($1::date)', [date]);
        created += (await countPartitions(client)) - before;
        await client.query('COMMIT');
        break;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        const code = (err as { code?: string }).code;
        // Rows of that day already in the default partition (it had no partition of its own in
        // time): the day stays there, counted as any other, and retention deletes it from there.
        if (code === CHECK_VIOLATION) break;
        // A deadlock_timeout set below lock_timeout makes the creation lose the deadlock instead.
        if (code !== LOCK_NOT_AVAILABLE && code !== DEADLOCK_DETECTED) throw err;
        if (attempt >= CREATE_ATTEMPTS) break;
        await new Promise((resolve) => setTimeout(resolve, CREATE_RETRY_MS));
      }
    }
  }
  return created;
}

/**
 * One instance's retention runs: at most one instance at a time runs one (a session lock held
 * for the run; the others skip theirs). Returns undefined when another instance was running one.
 */
export async function enforceRetentionOnce(
  client: ClientBase,
  settings: RetentionSettings,
  nowMs: number,
): Promise<RetentionOutcome | undefined> {
  const key = `retention:${await currentSchema(client)}`;
  const locked = await client.query<{ locked: boolean }>(
    'SELECT pg_try_advisory_lock(hashtext($1)) AS locked',
    [key],
  );
  if (locked.rows[0]?.locked !== true) return undefined;
  try {
    return await enforceRetention(client, settings, nowMs);
  } finally {
    await client.query('SELECT pg_advisory_unlock(hashtext($1))', [key]);
  }
}

async function currentSchema(client: ClientBase): Promise<string> {
  const result = await client.query<{ schema: string }>('SELECT current_schema() AS schema');
  return result.rows[0]?.schema ?? 'public';
}

/** One retention run: partitions ahead, old partitions dropped, old rows deleted. */
export async function enforceRetention(
  client: ClientBase,
  settings: RetentionSettings,
  nowMs: number,
): Promise<RetentionOutcome> {
  const outcome: RetentionOutcome = { partitionsCreated: 0, partitionsDropped: 0, rowsDeleted: 0 };
  outcome.partitionsCreated = await ensureDailyPartitions(client, nowMs);
  const dropBefore = membershipHorizon(nowMs, settings.maxEventAgeMs) - DROP_DELAY_MS;
  // Periods not sealed in a flush (a partition that went quiet): their sketches from their users
  // before those go. Sealing early is never wrong: later users grow a sealed sketch.
  await sealSketchesBefore(client, nowMs - DAY_MS);
  outcome.partitionsDropped = await dropMembershipBefore(client, dropBefore);
  // What the default partitions caught of those days (windows that had no partition yet).
  for (const table of ['window_users_default', 'window_events_default']) {
    outcome.rowsDeleted += await deleteInBatches(
      client,
      `DELETE FROM ${table} WHERE ctid IN (
         SELECT ctid FROM ${table} WHERE window_start < $1 LIMIT ${DELETE_BATCH})`,
      [new Date(dropBefore).toISOString()],
    );
  }
  outcome.rowsDeleted += await deleteInBatches(
    client,
    `DELETE FROM period_users_default WHERE ctid IN (
       SELECT ctid FROM period_users_default WHERE period_start < $1 LIMIT ${DELETE_BATCH})`,
    [new Date(dropBefore - 2 * DAY_MS).toISOString()],
  );
  // Minute rows, except each partition's newest: it holds the partition's position.
  outcome.rowsDeleted += await deleteInBatches(
    client,
    `DELETE FROM user_activity_metrics WHERE id IN (
       SELECT m.id FROM user_activity_metrics m
        WHERE m."timestamp" < $1
          AND m.through_offset < (SELECT max(through_offset) FROM user_activity_metrics n
                                   WHERE n.source_partition = m.source_partition
                                     AND n.window_seconds = m.window_seconds)
        LIMIT ${DELETE_BATCH})`,
    [new Date(nowMs - settings.minuteRowsMs).toISOString()],
  );
  const periods: Array<[string, number | null]> = [
    ['hour', settings.hourRowsMs],
    ['day', settings.dayRowsMs],
  ];
  for (const [period, keepMs] of periods) {
    if (keepMs === null) continue;
    outcome.rowsDeleted += await deleteInBatches(
      client,
      `DELETE FROM period_metrics WHERE ctid IN (
         SELECT ctid FROM period_metrics WHERE period = $2 AND period_start < $1
          LIMIT ${DELETE_BATCH})`,
      [new Date(nowMs - keepMs).toISOString(), period],
    );
  }
  return outcome;
}

/** Drops the daily membership partitions of days that end at or before `beforeMs`. */
async function dropMembershipBefore(client: ClientBase, beforeMs: number): Promise<number> {
  const partitions = await client.query<{ name: string }>(
    `SELECT c.relname AS name
       FROM pg_inherits i
       JOIN pg_class c ON c.oid = i.inhrelid
       JOIN pg_class p ON p.oid = i.inhparent
      WHERE p.relname = ANY($1::text[]) AND p.relnamespace = to_regnamespace(current_schema())
        AND c.relname ~ '_p[0-9]{8}$'
      ORDER BY 1`,
    [MEMBERSHIP_TABLES],
  );
  let dropped = 0;
  for (const { name } of partitions.rows) {
    const day = name.slice(-8);
    const dayEnd = Date.UTC(
      Number(day.slice(0, 4)),
      Number(day.slice(4, 6)) - 1,
      Number(day.slice(6)) + 1,
    );
    // A day's periods (site zones reach 14 hours west) take events a little longer than its windows.
    const end = name.startsWith('period_users') ? dayEnd + 2 * DAY_MS : dayEnd;
    if (end > beforeMs) continue;
    try {
      await client.query('BEGIN');
      await client.query(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
      await client.query(`DROP TABLE IF EXISTS ${name}`);
      await client.query('COMMIT');
      dropped++;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw err;
    }
  }
  return dropped;
}

async function deleteInBatches(
  client: ClientBase,
  sql: string,
  params: unknown[],
): Promise<number> {
  let total = 0;
  for (;;) {
    const result = await client.query(sql, params);
    const deleted = result.rowCount ?? 0;
    total += deleted;
    if (deleted < DELETE_BATCH) return total;
  }
}

async function countPartitions(client: ClientBase): Promise<number> {
  const result = await client.query<{ count: string }>(
    `SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
      WHERE p.relname = ANY($1::text[]) AND p.relnamespace = to_regnamespace(current_schema())`,
    [MEMBERSHIP_TABLES],
  );
  return Number(result.rows[0]?.count ?? 0);
}

function utcDay(ms: number): number {
  return ms - (((ms % DAY_MS) + DAY_MS) % DAY_MS);
}

function isoDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The hourly runs, on a connection of their own (flushes hold theirs for transactions). */
export class RetentionJob {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly db: {
      use<T>(work: (client: ClientBase) => Promise<T>, attempts?: number): Promise<T>;
    },
    private readonly settings: RetentionSettings,
    private readonly report: {
      ran: (outcome: RetentionOutcome | undefined) => void;
      failed: (err: unknown) => void;
    },
    private readonly intervalMs = 3_600_000,
  ) {}

  /** Creates today's and the next days' partitions now, then runs every interval. */
  async start(): Promise<void> {
    await this.db.use((client) => ensureDailyPartitions(client, Date.now()));
    const tick = (delayMs: number) => {
      this.timer = setTimeout(() => {
        this.running = this.runOnce().finally(() => tick(this.intervalMs));
      }, delayMs);
      this.timer.unref();
    };
    // The first full run a minute after start: a restart does not delete before it consumes.
    tick(Math.min(60_000, this.intervalMs));
  }

  async runOnce(): Promise<void> {
    try {
      const outcome = await this.db.use((client) =>
        enforceRetentionOnce(client, this.settings, Date.now()),
      );
      this.report.ran(outcome);
    } catch (err) {
      this.report.failed(err);
    }
  }

  async close(): Promise<void> {
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.running;
  }
}
