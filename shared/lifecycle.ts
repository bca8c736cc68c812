import { PipelineError } from './errors.js';
import type { Logger } from './logger.js';

/** The explicit state of a service, exposed on `/readyz` and as a metric. */
export type ServiceState = 'starting' | 'running' | 'draining' | 'stopped' | 'failed';
export const SERVICE_STATES: readonly ServiceState[] = [
  'starting',
  'running',
  'draining',
  'stopped',
  'failed',
];

/** Holds a service's state and tells listeners when it changes. */
export class StateHolder {
  private current: ServiceState = 'starting';
  private readonly listeners: Array<(state: ServiceState) => void> = [];

  get state(): ServiceState {
    return this.current;
  }

  set(state: ServiceState): void {
    if (state === this.current) return;
    this.current = state;
    for (const listener of this.listeners) listener(state);
  }

  onChange(listener: (state: ServiceState) => void): void {
    this.listeners.push(listener);
    listener(this.current);
  }
}

/** Resolves with `promise`, or rejects with `deadline_exceeded` after `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(new PipelineError('deadline_exceeded', `${what} did not finish within ${ms} ms`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** A running service as `main.ts` sees it. */
export interface Service {
  readonly state: StateHolder;
  /** Runs the shutdown sequence once; later calls return the same promise. */
  close(): Promise<void>;
}

/**
 * Runs a service until SIGTERM or SIGINT: the first signal starts the service's own shutdown with
 * a deadline of `graceMs`; a second signal, or the deadline, forces exit 1. A failure to start,
 * or an uncaught error, is logged and exits 1 so that a supervisor restarts the process.
 */
export async function runService(options: {
  logger: Logger;
  graceMs: number;
  start: () => Promise<Service>;
}): Promise<void> {
  const { logger, graceMs } = options;
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception; exiting');
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err }, 'unhandled rejection; exiting');
    process.exit(1);
  });

  let service: Service | undefined;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: forcing exit');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal, graceMs }, 'shutting down');
    // Nothing was accepted yet while starting, so there is nothing to drain.
    if (service === undefined) process.exit(0);
    withDeadline(service.close(), graceMs, 'graceful shutdown')
      .then(() => {
        logger.info('stopped');
        process.exit(0);
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'shutdown did not complete cleanly');
        process.exit(1);
      });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    service = await options.start();
  } catch (err) {
    logger.fatal({ err }, 'failed to start');
    process.exit(1);
  }
}
