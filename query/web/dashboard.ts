/**
 * The dashboard page (docs/QUERY-API.md#dashboard): today's figures, the live per-minute chart
 * fed by the event stream, a chosen range beside its previous period, and the activity types.
 * The site and read key come from the URL (`?site=&key=`) or the form.
 */
import {
  ApiError,
  type Credentials,
  type Metric,
  QueryApi,
  type RangeName,
  type Realtime,
  type StreamedWindow,
} from './api-client.js';
import {
  accuracyNote,
  formatChange,
  formatCount,
  formatDay,
  formatEstimate,
  formatMoment,
  formatTime,
} from './format.js';
import { LiveWindows } from './live-windows.js';
import { drawBarChart } from './svg-chart.js';

/** Windows on the live chart: the current one and the 30 before it, as /v1/realtime sends. */
const LIVE_WINDOWS = 31;
/** Today's figures, the range and the types are read again this often while the page shows. */
const REFRESH_MS = 30_000;
/** After the stream closes for good (a refused key, a restart), it is opened again after this. */
const STREAM_RETRY_MS = 10_000;

const RANGES: Record<RangeName, { interval: 'hour' | 'day'; label: string }> = {
  today: { interval: 'hour', label: 'Today' },
  yesterday: { interval: 'hour', label: 'Yesterday' },
  last_24_hours: { interval: 'hour', label: 'Last 24 hours' },
  last_7_days: { interval: 'day', label: 'Last 7 days' },
  last_30_days: { interval: 'day', label: 'Last 30 days' },
};
const METRIC_WORDS: Record<Metric, string> = {
  events: 'events',
  page_views: 'page views',
  unique_users: 'unique users',
};

function byId<T extends Element = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`the page has no #${id}`);
  return found as unknown as T;
}

/** One message per part of the page, shown together in the alert area. */
class ErrorArea {
  private readonly messages = new Map<string, string>();

  constructor(private readonly area: HTMLElement) {}

  set(part: string, err: unknown): void {
    const text =
      err instanceof ApiError ? err.message : `Something went wrong on this page: ${String(err)}`;
    if (this.messages.get(part) === text) return;
    this.messages.set(part, text);
    this.render();
  }

  clear(part: string): void {
    if (this.messages.delete(part)) this.render();
  }

  private render(): void {
    // A refused key fails every part alike: one line says it.
    this.area.replaceChildren(
      ...[...new Set(this.messages.values())].map((text) => {
        const line = document.createElement('p');
        line.textContent = text;
        return line;
      }),
    );
  }
}

class Dashboard {
  private api: QueryApi;
  private timeZone = 'UTC';
  private live = new LiveWindows(60_000, LIVE_WINDOWS);
  private stream: EventSource | undefined;
  private streamRetry: number | undefined;
  private readonly errors = new ErrorArea(byId('errors'));
  /** Bumped by every reload: answers of an older one are dropped. */
  private generation = 0;

  constructor(credentials: Credentials) {
    this.api = new QueryApi(credentials);
  }

  start(): void {
    byId<HTMLFormElement>('settings').addEventListener('submit', (event) => {
      event.preventDefault();
      const site = byId<HTMLInputElement>('site').value.trim();
      const key = byId<HTMLInputElement>('key').value.trim();
      const url = new URL(window.location.href);
      for (const [name, value] of [
        ['site', site],
        ['key', key],
      ] as const) {
        if (value === '') url.searchParams.delete(name);
        else url.searchParams.set(name, value);
      }
      window.history.replaceState(null, '', url);
      this.api = new QueryApi({ site, key });
      void this.reload();
    });
    byId<HTMLFormElement>('range-form').addEventListener('change', () => void this.loadRange());
    byId<HTMLFormElement>('range-form').addEventListener('submit', (event) => {
      event.preventDefault();
    });
    window.setInterval(() => {
      if (document.visibilityState === 'visible') void this.refresh();
    }, REFRESH_MS);
    // The chart moves on with the clock, also through minutes without events.
    window.setInterval(() => {
      if (this.live.newest !== undefined && this.live.advanceTo(Date.now())) this.drawLive();
    }, 1_000);
    const resized = new ResizeObserver(() => this.redraw());
    for (const chart of document.querySelectorAll('figure.chart')) resized.observe(chart);
    void this.reload();
  }

  private async reload(): Promise<void> {
    this.generation++;
    this.stopStream();
    await Promise.all([this.loadLive(), this.refresh()]);
  }

  private async refresh(): Promise<void> {
    await Promise.all([this.loadToday(), this.loadRange()]);
  }

  private current(generation: number): boolean {
    return generation === this.generation;
  }

  private async loadToday(): Promise<void> {
    const generation = this.generation;
    const figures = byId('today');
    try {
      const today = await this.api.summary({ range: 'today' });
      if (!this.current(generation)) return;
      this.errors.clear('today');
      this.timeZone = today.time_zone;
      byId('site-name').textContent = today.site;
      byId('today-zone').textContent = `(${today.time_zone})`;
      setFigure(
        'today-unique-users',
        today.unique_users,
        formatEstimate(today.unique_users, today.accuracy),
      );
      setFigure('today-page-views', today.page_views, formatCount(today.page_views));
      setFigure('today-events', today.events, formatCount(today.events));
      figures.setAttribute('aria-busy', 'false');
      const note = accuracyNote(today.accuracy);
      if (note !== '') byId('today-note').textContent = note;
    } catch (err) {
      if (this.current(generation)) this.errors.set('today', err);
    }
  }

  private async loadRange(): Promise<void> {
    const generation = this.generation;
    const range = byId<HTMLSelectElement>('range').value as RangeName;
    const metric = byId<HTMLSelectElement>('metric').value as Metric;
    const { interval, label } = RANGES[range] ?? RANGES.today;
    try {
      const [summary, breakdown, series] = await Promise.all([
        this.api.summary({ range, compare: 'previous_period' }),
        this.api.breakdown({ range }),
        this.api.timeseries({ metric, range, interval }),
      ]);
      const before = summary.previous_period;
      const previous =
        before === undefined
          ? undefined
          : await this.api.timeseries({ metric, interval, from: before.from, to: before.to });
      if (!this.current(generation)) return;
      this.errors.clear('range');
      this.timeZone = series.time_zone;

      const now = summary[metric];
      const then = before?.[metric];
      const words = METRIC_WORDS[metric];
      const shown =
        metric === 'unique_users' ? formatEstimate(now, summary.accuracy) : formatCount(now);
      byId('range-totals').textContent =
        then === undefined
          ? `${label}: ${shown} ${words}.`
          : `${label}: ${shown} ${words}. The period before: ${formatCount(then)} (${formatChange(now, then)}).`;

      const tick = (start: string): string =>
        interval === 'day' ? formatDay(start, this.timeZone) : formatTime(start, this.timeZone);
      this.rangeChart = {
        bars: series.buckets.map((bucket) => ({
          start: bucket.start,
          value: bucket.value,
          complete: bucket.complete,
          title: `${formatMoment(bucket.start, this.timeZone)}: ${formatCount(bucket.value)} ${words}${bucket.complete ? '' : ' (so far)'}`,
        })),
        ...(previous === undefined
          ? {}
          : { previous: previous.buckets.map((bucket) => bucket.value) }),
        tick,
        value: formatCount,
      };
      this.drawRange();
      const rows = series.buckets.map((bucket, index) => {
        const row = document.createElement('tr');
        const before = previous?.buckets[index]?.value;
        for (const text of [
          formatMoment(bucket.start, this.timeZone),
          formatCount(bucket.value),
          before === undefined ? '–' : formatCount(before),
        ]) {
          const cell = document.createElement('td');
          cell.textContent = text;
          row.append(cell);
        }
        return row;
      });
      byId('range-table')
        .querySelector('tbody')
        ?.replaceChildren(...rows);

      byId('types-range').textContent = `(${label.toLowerCase()})`;
      const typeRows = breakdown.rows.map((entry) => {
        const row = document.createElement('tr');
        row.dataset.type = entry.activity_type;
        const cells: Array<[string, number | undefined]> = [
          [entry.activity_type, undefined],
          [formatCount(entry.events), entry.events],
          [formatCount(entry.page_views), entry.page_views],
          [formatEstimate(entry.unique_users, entry.accuracy), entry.unique_users],
        ];
        for (const [text, value] of cells) {
          const cell = document.createElement(value === undefined ? 'th' : 'td');
          if (value === undefined) cell.setAttribute('scope', 'row');
          else cell.dataset.value = String(value);
          cell.textContent = text;
          row.append(cell);
        }
        return row;
      });
      byId('types-table')
        .querySelector('tbody')
        ?.replaceChildren(...typeRows);
      byId('types-empty').hidden = typeRows.length > 0;
    } catch (err) {
      if (this.current(generation)) this.errors.set('range', err);
    }
  }

  private rangeChart: Parameters<typeof drawBarChart>[1] | undefined;

  private drawRange(): void {
    if (this.rangeChart !== undefined) drawBarChart(byId('range-chart'), this.rangeChart);
  }

  private async loadLive(): Promise<void> {
    const generation = this.generation;
    let realtime: Realtime;
    try {
      realtime = await this.api.realtime();
    } catch (err) {
      if (!this.current(generation)) return;
      this.live = new LiveWindows(this.live.windowMs, LIVE_WINDOWS);
      this.errors.set('live', err);
      byId('live-figures').textContent = 'Live figures are not available.';
      this.retryStream(generation);
      return;
    }
    if (!this.current(generation)) return;
    this.errors.clear('live');
    this.timeZone = realtime.time_zone;
    this.live = new LiveWindows(realtime.window_seconds * 1000, LIVE_WINDOWS);
    this.live.reset(realtime.windows);
    this.live.advanceTo(Date.now());
    this.showFreshness(realtime);
    this.drawLive();
    this.openStream(generation);
  }

  private openStream(generation: number): void {
    this.stopStream();
    const stream = new EventSource(this.api.streamUrl());
    this.stream = stream;
    stream.addEventListener('open', () => {
      byId('live-status').textContent = 'Live: updates arrive as the pipeline writes them.';
      this.errors.clear('stream');
    });
    stream.addEventListener('window', (event) => {
      let window: StreamedWindow;
      try {
        window = JSON.parse((event as MessageEvent<string>).data) as StreamedWindow;
      } catch {
        return;
      }
      if (this.live.apply(window)) this.drawLive();
    });
    stream.addEventListener('error', () => {
      if (stream.readyState === EventSource.CLOSED) {
        // A refusal (401, 404, 503 too_many_streams) closes an EventSource for good, without
        // saying why: the figures above tell, and the stream is tried again a little later.
        byId('live-status').textContent =
          `Live updates stopped; trying again in ${STREAM_RETRY_MS / 1000} seconds.`;
        this.errors.set(
          'stream',
          new ApiError(
            0,
            'stream_closed',
            'Live updates were refused or cut off; retrying shortly.',
          ),
        );
        this.retryStream(generation);
      } else {
        byId('live-status').textContent = 'Live updates interrupted; reconnecting…';
      }
    });
  }

  private retryStream(generation: number): void {
    window.clearTimeout(this.streamRetry);
    this.streamRetry = window.setTimeout(() => {
      if (this.current(generation)) void this.loadLive();
    }, STREAM_RETRY_MS);
  }

  private stopStream(): void {
    window.clearTimeout(this.streamRetry);
    this.stream?.close();
    this.stream = undefined;
  }

  private showFreshness(realtime: Realtime): void {
    const { newest_window_with_events: newest, consumer_lag_records: lag } = realtime.freshness;
    const parts = [
      newest === null
        ? 'No events yet in the last 30 minutes.'
        : `Newest events: the minute of ${formatTime(newest, realtime.time_zone)}.`,
    ];
    if (lag !== null) parts.push(`Records waiting to be counted: ${formatCount(lag)}.`);
    byId('live-status').textContent = parts.join(' ');
  }

  private drawLive(): void {
    const windows = this.live.list;
    const newest = this.live.newest;
    const figures = byId('live-figures');
    if (newest !== undefined) {
      const total = windows.reduce((sum, window) => sum + window.events, 0);
      const text = `This minute (${formatTime(newest.start, this.timeZone)}): ${formatCount(newest.events)} events, ${formatCount(newest.unique_users)} users, ${formatCount(newest.page_views)} page views. Last ${windows.length} minutes: ${formatCount(total)} events.`;
      if (figures.textContent !== text) figures.textContent = text;
      figures.dataset.events = String(newest.events);
      figures.dataset.total = String(total);
    }
    drawBarChart(byId('live-chart'), {
      bars: windows.map((window) => ({
        start: window.start,
        value: window.events,
        complete: window.complete,
        title: `${formatTime(window.start, this.timeZone)}: ${formatCount(window.events)} events, ${formatCount(window.unique_users)} users, ${formatCount(window.page_views)} page views`,
      })),
      tick: (start) => formatTime(start, this.timeZone),
      value: formatCount,
    });
  }

  private redraw(): void {
    this.drawLive();
    this.drawRange();
  }
}

function setFigure(id: string, value: number, text: string): void {
  const figure = byId(id);
  figure.textContent = text;
  figure.dataset.value = String(value);
}

const params = new URLSearchParams(window.location.search);
const credentials: Credentials = {
  site: params.get('site')?.trim() ?? '',
  key: params.get('key')?.trim() ?? '',
};
byId<HTMLInputElement>('site').value = credentials.site;
byId<HTMLInputElement>('key').value = credentials.key;
new Dashboard(credentials).start();
