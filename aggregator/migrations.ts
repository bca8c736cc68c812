import type { ClientBase } from 'pg';
import { HLL_COLUMN_TYPE_SQL } from '../shared/hll.js';

/**
 * Versioned schema migrations, applied in order at start-up. Safe to run from many instances at
 * once: a transaction-scoped advisory lock serialises them, and each applied version is recorded
 * in `schema_migrations` (the schema's only non-analytics table, holding one row per version).
 */
const MIGRATIONS: ReadonlyArray<{ version: number; name: string; sql: string }> = [
  {
    version: 1,
    name: 'user_activity_metrics',
    sql: `
      CREATE TABLE user_activity_metrics (
        id               BIGSERIAL PRIMARY KEY,
        "timestamp"      TIMESTAMPTZ NOT NULL,
        window_seconds   INTEGER     NOT NULL,
        source_partition INTEGER     NOT NULL,
        unique_users     INTEGER     NOT NULL,
        page_view_count  BIGINT      NOT NULL,
        event_count      BIGINT      NOT NULL,
        first_offset     BIGINT      NOT NULL,
        through_offset   BIGINT      NOT NULL,
        is_final         BOOLEAN     NOT NULL DEFAULT false,
        created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        CONSTRAINT user_activity_metrics_window_partition
          UNIQUE ("timestamp", window_seconds, source_partition)
      );
      COMMENT ON TABLE user_activity_metrics IS
        'One row per (event-time window, source partition): exact figures for that partition, which covers a disjoint set of users.';
      COMMENT ON COLUMN user_activity_metrics."timestamp" IS 'Window start (UTC).';
      COMMENT ON COLUMN user_activity_metrics.first_offset IS 'First partition offset that contributed to this window.';
      COMMENT ON COLUMN user_activity_metrics.through_offset IS 'The figures reflect the partition consumed through this offset.';
      CREATE INDEX user_activity_metrics_partition_offset
        ON user_activity_metrics (source_partition, through_offset);

      CREATE VIEW user_activity_window_totals AS
        SELECT "timestamp"            AS window_start,
               window_seconds,
               sum(unique_users)::bigint    AS unique_users,
               sum(page_view_count)::bigint AS page_view_count,
               sum(event_count)::bigint     AS event_count,
               bool_and(is_final)           AS is_final,
               max(updated_at)              AS updated_at
          FROM user_activity_metrics
         GROUP BY "timestamp", window_seconds;
      COMMENT ON VIEW user_activity_window_totals IS
        'Per-window totals: unique users add up across partitions because ingest keys every event by user_id.';
    `,
  },
  {
    version: 2,
    name: 'partition_watermark',
    sql: `
      ALTER TABLE user_activity_metrics ADD COLUMN watermark_ms BIGINT;
      COMMENT ON COLUMN user_activity_metrics.watermark_ms IS
        'The partition''s event-time watermark (epoch ms) at through_offset: restored with the position on assignment.';
    `,
  },
  {
    version: 3,
    name: 'durable_window_membership',
    sql: `
      ALTER TABLE user_activity_metrics
        ADD COLUMN membership_stored BOOLEAN NOT NULL DEFAULT false;
      COMMENT ON COLUMN user_activity_metrics.membership_stored IS
        'The window''s users and event ids are in window_users and window_events, and this row''s figures are their counts: later events update it through them (never rebuilt from the topic).';
      COMMENT ON COLUMN user_activity_metrics.is_final IS
        'The partition''s watermark (or, idle, the clock) passed the window''s end plus the allowed lateness. Late events may still update the row.';

      CREATE TABLE window_users (
        window_start     TIMESTAMPTZ NOT NULL,
        window_seconds   INTEGER     NOT NULL,
        source_partition INTEGER     NOT NULL,
        user_id          TEXT        NOT NULL,
        PRIMARY KEY (source_partition, window_seconds, window_start, user_id)
      );
      COMMENT ON TABLE window_users IS
        'The distinct users of each closed (window, partition): what a late event''s user is checked against. Unions across windows and partitions give exact uniques over any range still held.';

      CREATE TABLE window_events (
        window_start     TIMESTAMPTZ NOT NULL,
        window_seconds   INTEGER     NOT NULL,
        source_partition INTEGER     NOT NULL,
        page_view        BOOLEAN     NOT NULL,
        event_id         TEXT        NOT NULL,
        PRIMARY KEY (source_partition, window_seconds, window_start, event_id)
      );
      COMMENT ON TABLE window_events IS
        'The event ids counted in each closed (window, partition): a repeated event (producer retry, client resend) is counted once however late it comes. Events sent without an id are listed by a synthetic id longer than any client id.';

      CREATE TABLE partition_epochs (
        window_seconds   INTEGER NOT NULL,
        source_partition INTEGER NOT NULL,
        epoch            BIGINT  NOT NULL,
        claimed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (window_seconds, source_partition)
      );
      COMMENT ON TABLE partition_epochs IS
        'Who may write a partition''s rows: each assignment takes the next epoch, and a flush writes a partition only while the epoch is still its own (a stalled instance that wakes up after its partitions moved writes nothing).';
    `,
  },
  {
    version: 4,
    name: 'sites_and_rollups',
    sql: `
      ALTER TABLE user_activity_metrics
        ADD COLUMN site      TEXT NOT NULL DEFAULT 'default',
        ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';
      COMMENT ON COLUMN user_activity_metrics.site IS
        'The site (write key) the figures are for: each site''s users are its own.';
      COMMENT ON COLUMN user_activity_metrics.time_zone IS
        'The site''s IANA time zone when the window was counted: its hour and day rollups follow it.';
      ALTER TABLE user_activity_metrics DROP CONSTRAINT user_activity_metrics_window_partition;
      ALTER TABLE user_activity_metrics ADD CONSTRAINT user_activity_metrics_window_partition
        UNIQUE ("timestamp", window_seconds, source_partition, site);
      COMMENT ON TABLE user_activity_metrics IS
        'One row per (event-time window, source partition, site): exact figures for that partition, which covers a disjoint set of users.';

      -- Membership and period users in daily partitions (UTC days), so that retention drops
      -- whole days. Rows for a day without a partition (the aggregator creates them ahead) go
      -- to the default partition.
      CREATE FUNCTION activity_ensure_day_partitions(day DATE) RETURNS void
      LANGUAGE plpgsql AS $f$
      DECLARE
        low  TIMESTAMPTZ := day::timestamp AT TIME ZONE 'UTC';
        high TIMESTAMPTZ := (day + 1)::timestamp AT TIME ZONE 'UTC';
        parent TEXT;
        child TEXT;
      BEGIN
        FOREACH parent IN ARRAY ARRAY['window_users', 'window_events', 'period_users'] LOOP
          child := parent || '_p' || to_char(day, 'YYYYMMDD');
          IF to_regclass(child) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           child, parent, low, high);
          END IF;
        END LOOP;
      END $f$;
      COMMENT ON FUNCTION activity_ensure_day_partitions(DATE) IS
        'Creates the membership and period-user partitions of one UTC day, where missing.';

      ALTER TABLE window_users RENAME TO window_users_v3;
      ALTER INDEX window_users_pkey RENAME TO window_users_v3_pkey;
      ALTER TABLE window_events RENAME TO window_events_v3;
      ALTER INDEX window_events_pkey RENAME TO window_events_v3_pkey;
      CREATE TABLE window_users (
        window_start     TIMESTAMPTZ NOT NULL,
        window_seconds   INTEGER     NOT NULL,
        source_partition INTEGER     NOT NULL,
        site             TEXT        NOT NULL,
        user_id          TEXT        NOT NULL,
        PRIMARY KEY (source_partition, window_seconds, window_start, site, user_id)
      ) PARTITION BY RANGE (window_start);
      COMMENT ON TABLE window_users IS
        'The distinct users of each closed (window, partition, site): what a late event''s user is checked against.';
      CREATE TABLE window_users_default PARTITION OF window_users DEFAULT;
      CREATE TABLE window_events (
        window_start     TIMESTAMPTZ NOT NULL,
        window_seconds   INTEGER     NOT NULL,
        source_partition INTEGER     NOT NULL,
        site             TEXT        NOT NULL,
        page_view        BOOLEAN     NOT NULL,
        user_id          TEXT,
        activity_type    TEXT,
        event_id         TEXT        NOT NULL,
        PRIMARY KEY (source_partition, window_seconds, window_start, site, event_id)
      ) PARTITION BY RANGE (window_start);
      COMMENT ON TABLE window_events IS
        'The events counted in each closed (window, partition, site), by id: a repeated event is counted once however late it comes. user_id and activity_type are NULL for events stored before version 4.';
      CREATE TABLE window_events_default PARTITION OF window_events DEFAULT;

      CREATE TABLE period_metrics (
        site             TEXT        NOT NULL,
        period           TEXT        NOT NULL CHECK (period IN ('hour', 'day')),
        period_start     TIMESTAMPTZ NOT NULL,
        activity_type    TEXT        NOT NULL,
        source_partition INTEGER     NOT NULL,
        time_zone        TEXT        NOT NULL,
        unique_users     BIGINT      NOT NULL,
        page_view_count  BIGINT      NOT NULL,
        event_count      BIGINT      NOT NULL,
        updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (site, period, period_start, activity_type, source_partition)
      );
      COMMENT ON TABLE period_metrics IS
        'Hour and day figures per site and source partition, in the site''s time zone; activity_type '''' is every type. A window''s events are added when it closes, a late event when it is counted: once, in the transaction that stores their membership.';
      CREATE TABLE period_users (
        source_partition INTEGER     NOT NULL,
        site             TEXT        NOT NULL,
        period           TEXT        NOT NULL,
        period_start     TIMESTAMPTZ NOT NULL,
        activity_type    TEXT        NOT NULL,
        user_id          TEXT        NOT NULL,
        PRIMARY KEY (source_partition, site, period, period_start, activity_type, user_id)
      ) PARTITION BY RANGE (period_start);
      COMMENT ON TABLE period_users IS
        'The distinct users of each period_metrics row, kept while late events can still arrive: what makes an hour''s or a day''s unique count exact.';
      CREATE TABLE period_users_default PARTITION OF period_users DEFAULT;
      CREATE TABLE activity_types (
        site          TEXT        NOT NULL,
        activity_type TEXT        NOT NULL,
        first_seen    TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (site, activity_type)
      );
      COMMENT ON TABLE activity_types IS
        'The activity types each site''s rollups count by name: at most MAX_ACTIVITY_TYPES per site, first come; the rest count as ''other''.';

      CREATE VIEW site_window_totals AS
        SELECT site,
               "timestamp"                  AS window_start,
               window_seconds,
               min(time_zone)               AS time_zone,
               sum(unique_users)::bigint    AS unique_users,
               sum(page_view_count)::bigint AS page_view_count,
               sum(event_count)::bigint     AS event_count,
               bool_and(is_final)           AS is_final,
               max(updated_at)              AS updated_at
          FROM user_activity_metrics
         GROUP BY site, "timestamp", window_seconds;
      COMMENT ON VIEW site_window_totals IS
        'Per-site window figures: unique users add up across partitions because ingest keys every event by site and user.';
      CREATE VIEW site_period_totals AS
        SELECT site, period, period_start, activity_type,
               min(time_zone)               AS time_zone,
               sum(unique_users)::bigint    AS unique_users,
               sum(page_view_count)::bigint AS page_view_count,
               sum(event_count)::bigint     AS event_count,
               max(updated_at)              AS updated_at
          FROM period_metrics
         GROUP BY site, period, period_start, activity_type;
      COMMENT ON VIEW site_period_totals IS
        'Per-site hour and day figures in the site''s time zone, per activity type ('''' for every type): the windows closed so far.';

      -- The membership stored so far, into partitions of its own days.
      SELECT activity_ensure_day_partitions(day)
        FROM (SELECT DISTINCT (window_start AT TIME ZONE 'UTC')::date AS day FROM window_users_v3
              UNION
              SELECT DISTINCT (window_start AT TIME ZONE 'UTC')::date FROM window_events_v3) days;
      INSERT INTO window_users (window_start, window_seconds, source_partition, site, user_id)
        SELECT window_start, window_seconds, source_partition, 'default', user_id
          FROM window_users_v3;
      INSERT INTO window_events
          (window_start, window_seconds, source_partition, site, page_view, event_id)
        SELECT window_start, window_seconds, source_partition, 'default', page_view, event_id
          FROM window_events_v3;
      DROP TABLE window_users_v3, window_events_v3;
    `,
  },
  {
    version: 5,
    name: 'period_sketches',
    sql: `
      -- hll is not a trusted extension: creating it takes a superuser (or an admin's
      -- CREATE EXTENSION hll beforehand). It lives in public, on every connection's search_path.
      CREATE EXTENSION IF NOT EXISTS hll WITH SCHEMA public;
      ALTER TABLE period_metrics
        ADD COLUMN period_end TIMESTAMPTZ,
        ADD COLUMN users_hll ${HLL_COLUMN_TYPE_SQL};
      UPDATE period_metrics
         SET period_end = CASE period
               WHEN 'hour' THEN period_start + interval '1 hour'
               ELSE ((period_start AT TIME ZONE time_zone)::date + 1)::timestamp AT TIME ZONE time_zone
             END;
      ALTER TABLE period_metrics ALTER COLUMN period_end SET NOT NULL;
      COMMENT ON COLUMN period_metrics.users_hll IS
        'The period''s users as a mergeable sketch (shared/hll.ts), for unique users over ranges: set once every window of the period has closed in its partition, then grown by late events. NULL until then.';
    `,
  },
  {
    version: 6,
    name: 'period_user_lists',
    sql: `
      -- One row per period and flush holding the users new to the period, instead of one row
      -- per user: the aggregator decides which users are new from the lists it holds, so a
      -- flush writes a few rows without a unique-index entry per user.
      ALTER TABLE period_users RENAME TO period_users_v5;
      DO $r$
      DECLARE child TEXT;
      BEGIN
        FOR child IN SELECT c.relname FROM pg_inherits i
                       JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = 'period_users_v5'::regclass LOOP
          EXECUTE format('ALTER TABLE %I RENAME TO %I', child, child || '_v5');
        END LOOP;
      END $r$;
      CREATE TABLE period_users (
        source_partition INTEGER     NOT NULL,
        site             TEXT        NOT NULL,
        period           TEXT        NOT NULL,
        period_start     TIMESTAMPTZ NOT NULL,
        activity_type    TEXT        NOT NULL,
        -- lz4: a flush's large lists are compressed several times faster than with pglz.
        user_ids         TEXT[]      COMPRESSION lz4 NOT NULL
      ) PARTITION BY RANGE (period_start);
      CREATE INDEX period_users_period
        ON period_users (source_partition, site, period, period_start, activity_type);
      COMMENT ON TABLE period_users IS
        'The distinct users of each period_metrics row, kept while late events can still arrive: what makes an hour''s or a day''s unique count exact. Each row lists users new to the period in one flush; a user is in one row of its period.';
      CREATE TABLE period_users_default PARTITION OF period_users DEFAULT;
      SELECT activity_ensure_day_partitions(day)
        FROM (SELECT DISTINCT (period_start AT TIME ZONE 'UTC')::date AS day
                FROM period_users_v5) days;
      INSERT INTO period_users
        SELECT source_partition, site, period, period_start, activity_type,
               array_agg(user_id ORDER BY user_id)
          FROM period_users_v5 GROUP BY 1, 2, 3, 4, 5;
      DROP TABLE period_users_v5;
    `,
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS.at(-1)?.version ?? 0;

/** Which migrations `migrate` applies. */
export interface MigrateOptions {
  /**
   * Apply none past this version: a database as an older release left it, for the tests of an
   * upgrade. Start-up always applies every version.
   */
  through?: number;
}

/**
 * Creates `schema` if needed and applies every migration it has not seen yet (up to
 * `options.through`). Returns the versions it applied.
 */
export async function migrate(
  client: ClientBase,
  schema: string,
  options: MigrateOptions = {},
): Promise<number[]> {
  const through = options.through ?? LATEST_SCHEMA_VERSION;
  const applied: number[] = [];
  await client.query('BEGIN');
  try {
    // One lock for every instance migrating this schema; released at COMMIT.
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`migrate:${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
    // public holds the hll extension's type and functions.
    await client.query(`SET LOCAL search_path TO ${schema}, public`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS schema_migrations (
         version INTEGER PRIMARY KEY,
         name TEXT NOT NULL,
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
    );
    const done = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
    const seen = new Set(done.rows.map((row) => row.version));
    for (const migration of MIGRATIONS) {
      if (seen.has(migration.version) || migration.version > through) continue;
      await client.query(migration.sql);
      await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [
        migration.version,
        migration.name,
      ]);
      applied.push(migration.version);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return applied;
}
