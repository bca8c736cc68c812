import { type Logger, pino } from 'pino';

export type { Logger };

/**
 * The process's root logger: JSON lines on stdout, one `child({ component })` per component.
 * Errors are logged as `{ err }` so that pino keeps their stack and cause.
 */
export function createLogger(service: string, level: string): Logger {
  return pino({
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
