/**
 * The live chart's data: the last `count` windows, oldest first, zero-filled, updated in place
 * by the windows the event stream pushes and moved along by the clock when a minute passes
 * without events.
 */
import type { LiveWindow } from './api-client.js';

export class LiveWindows {
  private windows: LiveWindow[] = [];

  constructor(
    readonly windowMs: number,
    private readonly count: number,
  ) {}

  /** Starts over from /v1/realtime's windows (oldest first). */
  reset(windows: readonly LiveWindow[]): void {
    this.windows = windows.slice(-this.count);
  }

  get list(): readonly LiveWindow[] {
    return this.windows;
  }

  get newest(): LiveWindow | undefined {
    return this.windows[this.windows.length - 1];
  }

  /**
   * Applies a pushed window: replaces the one with its start, or, when newer than all, moves the
   * chart on to it. Older than the chart: ignored. True when the chart changed.
   */
  apply(window: LiveWindow): boolean {
    const startMs = Date.parse(window.start);
    if (!Number.isFinite(startMs)) return false;
    const index = this.windows.findIndex((shown) => Date.parse(shown.start) === startMs);
    const copy: LiveWindow = {
      start: window.start,
      unique_users: window.unique_users,
      page_views: window.page_views,
      events: window.events,
      complete: window.complete,
    };
    if (index >= 0) {
      this.windows[index] = copy;
      return true;
    }
    const newest = this.newest;
    if (newest !== undefined && startMs < Date.parse(newest.start)) return false;
    this.advanceTo(startMs - this.windowMs);
    this.windows.push(copy);
    this.trim();
    return true;
  }

  /** Moves the chart on so that the window holding `nowMs` is the newest. True when it moved. */
  advanceTo(nowMs: number): boolean {
    const target = nowMs - (nowMs % this.windowMs);
    const newest = this.newest;
    let next = newest === undefined ? target : Date.parse(newest.start) + this.windowMs;
    if (next > target) return false;
    // Never more than the chart holds: a page woken after hours starts from the present.
    next = Math.max(next, target - (this.count - 1) * this.windowMs);
    for (; next <= target; next += this.windowMs) {
      this.windows.push({
        start: new Date(next).toISOString(),
        unique_users: 0,
        page_views: 0,
        events: 0,
        complete: false,
      });
    }
    this.trim();
    return true;
  }

  private trim(): void {
    if (this.windows.length > this.count) this.windows.splice(0, this.windows.length - this.count);
  }
}
