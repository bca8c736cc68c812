import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import { SERVICE_STATES, type StateHolder } from './lifecycle.js';

/**
 * A metrics registry with Node's process metrics and a `<prefix>_state` gauge (1 for the current
 * state, 0 for the others). Each service registers its own metrics on it, once, in the main thread.
 */
export function createServiceRegistry(prefix: string, state: StateHolder): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
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
