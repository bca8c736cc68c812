import { PipelineError } from './errors.js';

/**
 * Reads and validates environment variables, collecting every problem before failing, so that a
 * misconfigured process reports all bad values at once and refuses to start.
 *
 * Each process builds its whole config in one `config.ts` with one reader and calls `finish()`.
 */
export class ConfigReader {
  private readonly problems: string[] = [];

  constructor(private readonly env: NodeJS.ProcessEnv) {}

  /** A non-empty string. */
  string(name: string, fallback: string): string {
    const raw = this.raw(name);
    return raw ?? fallback;
  }

  /** An optional string: `undefined` when unset or empty. */
  optionalString(name: string): string | undefined {
    return this.raw(name);
  }

  /** An integer within `[min, max]`. */
  int(name: string, fallback: number, range: { min: number; max: number }): number {
    const raw = this.raw(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^-?\d+$/.test(raw) || !Number.isSafeInteger(value)) {
      this.problems.push(`${name}=${JSON.stringify(raw)}: expected a whole number`);
      return fallback;
    }
    if (value < range.min || value > range.max) {
      this.problems.push(
        `${name}=${value}: expected a whole number from ${range.min} to ${range.max}`,
      );
      return fallback;
    }
    return value;
  }

  /** A TCP port (1-65535). */
  port(name: string, fallback: number): number {
    return this.int(name, fallback, { min: 1, max: 65535 });
  }

  /** A duration given in seconds (decimals allowed), returned in milliseconds. */
  secondsAsMs(name: string, fallbackSec: number, range: { min: number; max: number }): number {
    const raw = this.raw(name);
    if (raw === undefined) return Math.round(fallbackSec * 1000);
    const value = Number(raw);
    if (!/^\d+(\.\d+)?$/.test(raw) || value < range.min || value > range.max) {
      this.problems.push(
        `${name}=${JSON.stringify(raw)}: expected seconds from ${range.min} to ${range.max}`,
      );
      return Math.round(fallbackSec * 1000);
    }
    return Math.round(value * 1000);
  }

  /** `true/false`, `1/0`, `yes/no`. */
  bool(name: string, fallback: boolean): boolean {
    const raw = this.raw(name)?.toLowerCase();
    if (raw === undefined) return fallback;
    if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
    if (['0', 'false', 'no', 'off'].includes(raw)) return false;
    this.problems.push(`${name}=${JSON.stringify(raw)}: expected true or false`);
    return fallback;
  }

  /** A comma-separated list of non-empty items. */
  list(name: string, fallback: readonly string[]): string[] {
    const raw = this.raw(name);
    if (raw === undefined) return [...fallback];
    const items = raw
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item.length > 0);
    if (items.length === 0) this.problems.push(`${name}: expected a comma-separated list`);
    return items;
  }

  /** One of a fixed set of values. */
  oneOf<T extends string>(name: string, fallback: T, allowed: readonly T[]): T {
    const raw = this.raw(name);
    if (raw === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(raw)) {
      this.problems.push(`${name}=${JSON.stringify(raw)}: expected one of ${allowed.join(', ')}`);
      return fallback;
    }
    return raw as T;
  }

  /** Records a problem found by a cross-field check. */
  problem(message: string): void {
    this.problems.push(message);
  }

  /** Throws one `config_invalid` error listing every problem found. */
  finish(): void {
    if (this.problems.length === 0) return;
    throw new PipelineError(
      'config_invalid',
      `invalid configuration:\n  - ${this.problems.join('\n  - ')}\nFix the environment variables above (see docs/CONFIGURATION.md) and start again.`,
    );
  }

  private raw(name: string): string | undefined {
    const value = this.env[name]?.trim();
    return value === undefined || value === '' ? undefined : value;
  }
}

/**
 * Runs a process's config reader; on `config_invalid` prints every problem and exits 2, so a
 * misconfigured process refuses to start with a readable message instead of a stack trace.
 */
export function loadConfigOrExit<T>(read: () => T): T {
  try {
    return read();
  } catch (err) {
    if (err instanceof PipelineError && err.code === 'config_invalid') {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}
