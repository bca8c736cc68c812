/** How the page writes numbers, times and accuracy, in the site's time zone. */
import type { Accuracy } from './api-client.js';

const numbers = new Intl.NumberFormat('en');
const percent = new Intl.NumberFormat('en', {
  maximumFractionDigits: 1,
  signDisplay: 'exceptZero',
});

export function formatCount(value: number): string {
  return numbers.format(value);
}

/** A count with `≈` in front when it is an estimate. */
export function formatEstimate(value: number, accuracy: Accuracy): string {
  return accuracy.kind === 'exact' ? formatCount(value) : `≈${formatCount(value)}`;
}

/** The change from `previous` to `current`, or `new` when there was nothing before. */
export function formatChange(current: number, previous: number): string {
  if (previous === 0) return current === 0 ? 'no change' : 'new';
  return `${percent.format(((current - previous) / previous) * 100)} %`;
}

export function accuracyNote(accuracy: Accuracy): string {
  if (accuracy.kind === 'exact') return '';
  const bound = (accuracy.relative_error_bound * 100).toFixed(1);
  return `Unique users are an estimate (within ±${bound} %).`;
}

/** `10:05` in `timeZone`. */
export function formatTime(iso: string, timeZone: string): string {
  return new Intl.DateTimeFormat('en-GB', { timeZone, hour: '2-digit', minute: '2-digit' }).format(
    new Date(iso),
  );
}

/** `7 Dec` in `timeZone`. */
export function formatDay(iso: string, timeZone: string): string {
  return new Intl.DateTimeFormat('en-GB', { timeZone, day: 'numeric', month: 'short' }).format(
    new Date(iso),
  );
}

/** `Mon 7 Dec, 10:05` in `timeZone`. */
export function formatMoment(iso: string, timeZone: string): string {
  return new Intl.DateTimeFormat('en-GB', {
    timeZone,
    weekday: 'short',
    day: 'numeric',
    month: 'short',
    hour: '2-digit',
    minute: '2-digit',
  }).format(new Date(iso));
}
