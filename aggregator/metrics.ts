import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** The aggregator's own metrics, registered once, in the main thread. */
export function createAggregatorMetrics(registry: Registry) {
  const registers = [registry];
  return {
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
      help: 'Valid records for a window that was already final.',
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
      help: 'User ids held in open windows.',
      registers,
    }),
  };
}

export type AggregatorMetrics = ReturnType<typeof createAggregatorMetrics>;
