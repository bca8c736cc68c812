import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { EVENT_REJECT_CODES } from '../shared/event-schema.js';
import { REPLACEMENT_REASONS } from './consumer-watchdog.js';

/**
 * Label values known in advance get their series at 0 from the start, so that `rate()` and
 * `increase()` see the first flush failure or invalid record (a series born at 1 hides it).
 */
const INVALID_REASONS = [...EVENT_REJECT_CODES, 'invalid_utf8', 'invalid_json', 'empty_record'];

/** The aggregator's own metrics, registered once, in the main thread. */
export function createAggregatorMetrics(registry: Registry) {
  const registers = [registry];
  const metrics = {
    recordsConsumed: new Counter({
      name: 'aggregator_records_consumed_total',
      help: 'Records read from the topic.',
      registers,
    }),
    recordsInvalid: new Counter({
      name: 'aggregator_records_invalid_total',
      help: 'Records that failed validation, by reason code.',
      labelNames: ['reason'],
      registers,
    }),
    recordsLate: new Counter({
      name: 'aggregator_records_late_total',
      help: 'Valid records for a window closed by a version that stored no membership: dead-lettered, not counted.',
      registers,
    }),
    closedWindowRecords: new Counter({
      name: 'aggregator_closed_window_records_total',
      help: 'Events that arrived after their window closed (late, or memory ran short), counted through its stored membership.',
      registers,
    }),
    closedWindowCounted: new Counter({
      name: 'aggregator_closed_window_counted_total',
      help: 'Events for closed windows that their stored membership did not hold yet: counted (the rest were repeats).',
      registers,
    }),
    rolledUp: new Counter({
      name: 'aggregator_rollup_events_total',
      help: 'Events added to the hour and day figures (as their windows closed, or late).',
      registers,
    }),
    otherTyped: new Counter({
      name: 'aggregator_rollup_other_typed_total',
      help: 'Of the events added to the hour and day figures, those whose activity type was past their site\'s MAX_ACTIVITY_TYPES: counted as "other".',
      registers,
    }),
    retentionRuns: new Counter({
      name: 'aggregator_retention_runs_total',
      help: 'Retention runs by result: ok, skipped (another instance was running one) or error.',
      labelNames: ['result'] as const,
      registers,
    }),
    retentionRowsDeleted: new Counter({
      name: 'aggregator_retention_rows_deleted_total',
      help: 'Rows past their retention deleted: minute, hour and day figures, and stray membership rows.',
      registers,
    }),
    retentionPartitionsDropped: new Counter({
      name: 'aggregator_retention_partitions_dropped_total',
      help: 'Daily membership partitions dropped: their windows take no more events.',
      registers,
    }),
    retentionLastSuccess: new Gauge({
      name: 'aggregator_retention_last_success_timestamp_seconds',
      help: 'When this instance last finished a retention run (0: not yet since it started).',
      registers,
    }),
    windowsClosedEarly: new Counter({
      name: 'aggregator_windows_closed_early_total',
      help: 'Windows written with their membership and dropped from memory before they were final, because held ids passed MAX_HELD_USER_IDS.',
      registers,
    }),
    fenceRefused: new Counter({
      name: 'aggregator_fence_refused_rows_total',
      help: 'Window rows PostgreSQL refused because it holds figures from further in the partition (another instance got further, or the topic was recreated).',
      registers,
    }),
    offsetsMissing: new Gauge({
      name: 'aggregator_partition_offsets_missing',
      help: '1 while a partition is stopped because its stored position is no longer in the topic (retention passed, or the topic was recreated): see OFFSET_RESET.',
      labelNames: ['partition'],
      registers,
    }),
    offsetsSkipped: new Counter({
      name: 'aggregator_offsets_skipped_total',
      help: 'Offsets skipped past a stored position that was no longer in the topic, with OFFSET_RESET=earliest.',
      labelNames: ['partition'],
      registers,
    }),
    batchSize: new Histogram({
      name: 'aggregator_batch_records',
      help: 'Records per consumed batch.',
      buckets: [1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
      registers,
    }),
    flushes: new Counter({
      name: 'aggregator_flushes_total',
      help: 'Flushes to PostgreSQL, by result.',
      labelNames: ['result'],
      registers,
    }),
    flushDuration: new Histogram({
      name: 'aggregator_flush_duration_seconds',
      help: 'Time to write one flush (COPY, upsert, commit).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    flushRows: new Counter({
      name: 'aggregator_flush_rows_total',
      help: 'Window rows written to PostgreSQL.',
      registers,
    }),
    openWindows: new Gauge({
      name: 'aggregator_open_windows',
      help: 'Windows (per partition) held in memory.',
      registers,
    }),
    heldUsers: new Gauge({
      name: 'aggregator_held_user_ids',
      help: 'User ids held in memory: open windows, and events waiting for closed windows (with the event ids, bounded by MAX_HELD_USER_IDS).',
      registers,
    }),
    heldEventIds: new Gauge({
      name: 'aggregator_held_event_ids',
      help: 'Event ids held in memory to skip repeated events: open windows, and events waiting for closed windows (with the user ids, bounded by MAX_HELD_USER_IDS).',
      registers,
    }),
    heldPeriodUsers: new Gauge({
      name: 'aggregator_held_period_users',
      help: 'Users of the hours and days being rolled up held in memory (bounded by MAX_HELD_PERIOD_USERS).',
      registers,
    }),
    heldUsersLimit: new Gauge({
      name: 'aggregator_held_user_ids_limit',
      help: 'MAX_HELD_USER_IDS: above it the oldest windows are written with their membership and leave memory.',
      registers,
    }),
    workerTaskDuration: new Histogram({
      name: 'aggregator_worker_task_duration_seconds',
      help: 'Time to aggregate one batch in a worker, queueing included.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    }),
    deadLettered: new Counter({
      name: 'aggregator_dead_lettered_total',
      help: 'Records sent to the dead-letter topic (invalid, or late for a window closed before membership was stored).',
      registers,
    }),
    replaySkipped: new Counter({
      name: 'aggregator_replay_skipped_total',
      help: 'Replayed records not counted again after an assignment (already reflected).',
      registers,
    }),
    duplicates: new Counter({
      name: 'aggregator_records_duplicate_total',
      help: 'Events not counted because their window had counted their event_id already (a producer retry or a client resend), in memory or in its stored membership.',
      registers,
    }),
    redelivered: new Counter({
      name: 'aggregator_records_redelivered_total',
      help: 'Records the consumer delivered again after they were applied (a fetch restarted after a pause or seek); ignored.',
      registers,
    }),
    freshness: new Histogram({
      name: 'aggregator_freshness_seconds',
      help: 'Time from ingest receiving the newest flushed record to the flush committing.',
      buckets: [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300],
      registers,
    }),
    assignedPartitions: new Gauge({
      name: 'aggregator_assigned_partitions',
      help: 'Partitions assigned to this instance.',
      registers,
    }),
    partitionLag: new Gauge({
      name: 'aggregator_partition_lag_records',
      help: 'Records between the last consumed offset and the partition end, per partition.',
      labelNames: ['partition'],
      registers,
    }),
    consumerReplacements: new Counter({
      name: 'aggregator_consumer_replacements_total',
      help: 'Kafka consumers replaced, by reason: stalled (delivered nothing for CONSUMER_STALL_TIMEOUT_SEC while records waited) or unread (held no partitions while records waited unread in a partition whose stored offset did not move).',
      labelNames: ['reason'],
      registers,
    }),
    rebalances: new Counter({
      name: 'aggregator_rebalances_total',
      help: 'Partition assignments and revocations seen, by type.',
      labelNames: ['type'],
      registers,
    }),
    databaseRetries: new Counter({
      name: 'aggregator_database_retries_total',
      help: 'Database operations retried, by operation.',
      labelNames: ['operation'],
      registers,
    }),
    consumptionPaused: new Gauge({
      name: 'aggregator_consumption_paused',
      help: '1 while consumption is paused (the database keeps failing).',
      registers,
    }),
  };
  for (const reason of INVALID_REASONS) metrics.recordsInvalid.inc({ reason }, 0);
  for (const result of ['ok', 'error']) metrics.flushes.inc({ result }, 0);
  for (const operation of ['connect', 'flush', 'checkpoint'])
    metrics.databaseRetries.inc({ operation }, 0);
  for (const type of ['assign', 'revoke']) metrics.rebalances.inc({ type }, 0);
  for (const result of ['ok', 'skipped', 'error']) metrics.retentionRuns.inc({ result }, 0);
  for (const reason of REPLACEMENT_REASONS) metrics.consumerReplacements.inc({ reason }, 0);
  return metrics;
}

export type AggregatorMetrics = ReturnType<typeof createAggregatorMetrics>;
