/**
 * Hours and days of an IANA zone, computed with `Intl`: where a local hour or day starts, as an
 * instant. An hour of Asia/Kathmandu starts at a quarter past the UTC hour; a day with a
 * daylight-saving change lasts 23 or 25 hours.
 */

const HOUR_MS = 3_600_000;

const formats = new Map<string, Intl.DateTimeFormat>();
/** Formats are costly to build; a request names a handful of zones. */
const FORMATS_MAX = 256;

interface WallClock {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
}

function wallClock(ms: number, zone: string): WallClock {
  let format = formats.get(zone);
  if (format === undefined) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    if (formats.size >= FORMATS_MAX) formats.clear();
    formats.set(zone, format);
  }
  const fields: Record<string, number> = {};
  for (const part of format.formatToParts(new Date(ms))) {
    if (part.type !== 'literal') fields[part.type] = Number(part.value);
  }
  return fields as unknown as WallClock;
}

/** `zone`'s offset from UTC at instant `ms` (Kathmandu: +5:45), in ms. */
export function zoneOffsetMs(ms: number, zone: string): number {
  const p = wallClock(ms, zone);
  const wall = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
  return wall - (ms - (((ms % 1000) + 1000) % 1000));
}

/** The instant the local hour holding `ms` began in `zone`. */
export function hourStart(ms: number, zone: string): number {
  const p = wallClock(ms, zone);
  return ms - (((ms % 1000) + 1000) % 1000) - (p.minute * 60 + p.second) * 1000;
}

/** The instant the local day holding `ms` began (the zone's midnight). */
export function dayStart(ms: number, zone: string): number {
  const p = wallClock(ms, zone);
  return midnight(p.year, p.month, p.day, zone);
}

/** The instant of midnight starting local date `year-month-day` in `zone`. */
export function midnight(year: number, month: number, day: number, zone: string): number {
  const wall = Date.UTC(year, month - 1, day);
  // Midnight's own offset: a day with a daylight-saving change has another one at its end.
  const guess = wall - zoneOffsetMs(wall, zone);
  return wall - zoneOffsetMs(guess, zone);
}

export type Period = 'hour' | 'day';

/** The start of the period after the one starting at `start` (a period start of `zone`). */
export function nextPeriodStart(start: number, period: Period, zone: string): number {
  if (period === 'hour') {
    const next = hourStart(start + HOUR_MS, zone);
    return next > start ? next : start + HOUR_MS;
  }
  // Days last 23 to 25 hours: 26 hours on is always inside the next day.
  return dayStart(start + 26 * HOUR_MS, zone);
}

/** The start of the period before the one starting at `start`. */
export function previousPeriodStart(start: number, period: Period, zone: string): number {
  return period === 'hour' ? hourStart(start - 1, zone) : dayStart(start - 1, zone);
}

/** True when `ms` is where an hour (a day) of `zone` begins. */
export function isPeriodStart(ms: number, period: Period, zone: string): boolean {
  return (period === 'hour' ? hourStart(ms, zone) : dayStart(ms, zone)) === ms;
}

/**
 * The starts of `zone`'s periods from `fromMs` (a period start) up to `toMs`; undefined when
 * `toMs` is not a period start. Stops after `limit` periods (returns what it has, then
 * `exceeded`), so a bad range costs little.
 */
export function periodStarts(
  fromMs: number,
  toMs: number,
  period: Period,
  zone: string,
  limit: number,
): { starts: number[]; aligned: boolean; exceeded: boolean } {
  const starts: number[] = [];
  let at = fromMs;
  while (at < toMs) {
    if (starts.length >= limit) return { starts, aligned: false, exceeded: true };
    starts.push(at);
    at = nextPeriodStart(at, period, zone);
  }
  return { starts, aligned: at === toMs, exceeded: false };
}
