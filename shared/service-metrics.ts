import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import { SERVICE_STATES, type StateHolder } from './lifecycle.js';

/**
 * A metrics registry with Node's process metrics and a `<prefix>_state` gauge (1 for the current
 * state, 0 for the others). Each service registers its own metrics on it, once, in the main thread.
 */
export function createServiceRegistry(prefix: string, state: StateHolder): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // These three gauges end in `_total`, which Prometheus reserves for counters (promtool check
  // metrics rejects them); the per-type gauges without the suffix carry the same figures.
  for (const name of [
    'nodejs_active_handles_total',
    'nodejs_active_requests_total',
    'nodejs_active_resources_total',
  ]) {
    registry.removeSingleMetric(name);
  }
  const gauge = new Gauge({
    name: `${prefix}_state`,
    help: 'Service lifecycle state: 1 for the current state, 0 for the others.',
    labelNames: ['state'],
    registers: [registry],
  });
  state.onChange((current) => {
    for (const s of SERVICE_STATES) gauge.set({ state: s }, s === current ? 1 : 0);
  });
  return registry;
}
