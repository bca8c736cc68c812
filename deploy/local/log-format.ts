/**
 * Turns one line of a service's pino JSON output into one readable line (plus an indented stack
 * for errors), for `make up`'s terminal:
 *
 *   10:45:33 ingest      INFO  [http] listening port=8080 host=0.0.0.0
 *
 * Lines that are not pino JSON (a crash before the logger exists, a native library's warning)
 * are passed through with the service name, so nothing a service prints is lost.
 */

export interface LogFormatOptions {
  /** Service name shown when the line has none (and for non-JSON lines). */
  service: string;
  /** Width the service name is padded to, so that columns line up across services. */
  serviceWidth?: number;
  /** ANSI colours (use when stdout is a TTY). */
  color?: boolean;
  /** Show times in UTC instead of local time (tests). */
  utc?: boolean;
}

const LEVELS: ReadonlyArray<{ min: number; label: string; color: string }> = [
  { min: 60, label: 'FATAL', color: '\x1b[35m' },
  { min: 50, label: 'ERROR', color: '\x1b[31m' },
  { min: 40, label: 'WARN', color: '\x1b[33m' },
  { min: 30, label: 'INFO', color: '\x1b[32m' },
  { min: 20, label: 'DEBUG', color: '\x1b[34m' },
  { min: 0, label: 'TRACE', color: '\x1b[90m' },
];
const RESET = '\x1b[0m';
const DIM = '\x1b[2m';
const CYAN = '\x1b[36m';
const ERROR_LEVEL = 50;

/** Fields shown in the fixed columns, or pino bookkeeping nobody reads in a terminal. */
const HIDDEN = new Set(['level', 'time', 'service', 'component', 'msg', 'pid', 'hostname', 'name']);

/** Formats one output line; the result may span several lines (an error's stack). */
export function formatLogLine(line: string, options: LogFormatOptions): string {
  const paint = (code: string, text: string): string =>
    options.color === true ? `${code}${text}${RESET}` : text;
  const record = parseRecord(line);
  if (record === null) {
    const service = paint(CYAN, pad(options.service, options.serviceWidth));
    return `${' '.repeat(8)} ${service} ${line}`;
  }

  const level = typeof record.level === 'number' ? record.level : 30;
  const levelInfo = LEVELS.find((entry) => level >= entry.min) ?? { label: '?', color: '' };
  const service = typeof record.service === 'string' ? record.service : options.service;
  const parts = [
    paint(DIM, formatTime(record.time, options.utc === true)),
    paint(CYAN, pad(service, options.serviceWidth)),
    paint(levelInfo.color, levelInfo.label.padEnd(5)),
  ];
  if (typeof record.component === 'string') parts.push(`[${record.component}]`);
  if (record.msg !== undefined) parts.push(String(record.msg));

  const stacks: string[] = [];
  for (const [key, value] of Object.entries(record)) {
    if (HIDDEN.has(key) || value === undefined) continue;
    if (isErrorLike(value)) {
      parts.push(`${key}=${quote(String(value.message))}`);
      if (value.code !== undefined) parts.push(`${key}.code=${formatValue(value.code)}`);
      if (level >= ERROR_LEVEL && typeof value.stack === 'string') stacks.push(value.stack);
      continue;
    }
    parts.push(`${key}=${formatValue(value)}`);
  }

  const head = parts.join(' ');
  if (stacks.length === 0) return head;
  const indented = stacks.flatMap((stack) => stack.split('\n')).map((text) => `    ${text.trim()}`);
  return [head, ...indented.map((text) => paint(DIM, text))].join('\n');
}

function parseRecord(line: string): Record<string, unknown> | null {
  if (!line.startsWith('{')) return null;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : null;
  } catch {
    return null;
  }
}

/** `HH:MM:SS` from pino's ISO time (or epoch ms); blanks when absent or unparseable. */
function formatTime(time: unknown, utc: boolean): string {
  const date =
    typeof time === 'string' || typeof time === 'number' ? new Date(time) : new Date(Number.NaN);
  if (Number.isNaN(date.getTime())) return ' '.repeat(8);
  const fields = utc
    ? [date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()]
    : [date.getHours(), date.getMinutes(), date.getSeconds()];
  return fields.map((field) => String(field).padStart(2, '0')).join(':');
}

function pad(text: string, width: number | undefined): string {
  return width === undefined ? text : text.padEnd(width);
}

interface ErrorLike {
  message: unknown;
  stack?: unknown;
  code?: unknown;
}

/** pino's error serializer output: an object with `message` and `stack` (or `type`). */
function isErrorLike(value: unknown): value is ErrorLike {
  return (
    typeof value === 'object' &&
    value !== null &&
    'message' in value &&
    ('stack' in value || 'type' in value)
  );
}

function formatValue(value: unknown): string {
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'object' && value !== null) return JSON.stringify(value);
  return String(value);
}

/** Strings stay bare unless they would be ambiguous: with spaces, quotes or `=`, or empty. */
function quote(text: string): string {
  return text === '' || /[\s"=]/.test(text) ? JSON.stringify(text) : text;
}
