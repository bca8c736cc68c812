/**
 * The oracle of the fault-injection suite: every event a load generator sent, with what ingest
 * answered for it — acknowledged (2xx), rejected (4xx, or a 503 that says "not stored"), or
 * unknown (a 503 that says "outcome unknown", a reset connection, a timeout) — and, per window,
 * the bounds the view `user_activity_window_totals` must lie within: every acknowledged event
 * counted exactly once, an unknown one at most once, a rejected one never.
 *
 * The view holds counts, not events, so the verdict is per window and per figure: a count below
 * what was acknowledged is a loss, a count above acknowledged + unknown (+ still pending) is a
 * double count, and what lies between is unknown events that were stored.
 */
import { PAGE_VIEW } from '../shared/event-schema.js';
import { type ClientEvent, type WindowTotals, windowStartOf } from './activity-oracle.js';

export type Outcome = 'acknowledged' | 'rejected' | 'unknown';

interface WindowLedger {
  ackUsers: Set<string>;
  ackPageViews: number;
  ackEvents: number;
  /** Users of unknown or still pending events. */
  openUsers: Map<string, number>;
  unknownPageViews: number;
  unknownEvents: number;
  pendingPageViews: number;
  pendingEvents: number;
}

/** The verdict on one window, or on all of them added up. */
export interface Verdict {
  /** Shortfall below the acknowledged figures (the largest of events, page views, users). */
  lost: number;
  /** Excess above acknowledged + unknown + pending (the largest of the three figures). */
  doubleCounted: number;
  /** Events of unknown outcome that the view counts. */
  unknownCounted: number;
  /** The windows that are out of bounds, one line each. */
  problems: string[];
}

/** A handle for one sent event, resolved once with its outcome. */
export type Settle = (outcome: Outcome) => void;

export class OutcomeLedger {
  private readonly windows = new Map<number, WindowLedger>();
  /** Acknowledgement times, in order, for the lag probe. */
  private readonly ackTimes: number[] = [];
  /** When the newest acknowledged event was sent (not answered); 0 before the first. */
  private newestAckSentAt = 0;
  readonly totals = { sent: 0, acknowledged: 0, rejected: 0, unknown: 0, pending: 0 };

  constructor(readonly windowMs: number) {}

  /**
   * Records `event` as sent (pending) and returns how to settle it. Pending counts as "may be
   * stored" until settled, so that a view read while requests are in flight is judged fairly.
   */
  sent(event: ClientEvent): Settle {
    const ms = typeof event.timestamp === 'number' ? event.timestamp : Date.parse(event.timestamp);
    const window = this.window(windowStartOf(ms, this.windowMs));
    const user = String(event.user_id);
    const pageView = event.activity_type === PAGE_VIEW ? 1 : 0;
    const sentAt = Date.now();
    window.pendingEvents++;
    window.pendingPageViews += pageView;
    window.openUsers.set(user, (window.openUsers.get(user) ?? 0) + 1);
    this.totals.sent++;
    this.totals.pending++;
    let settled = false;
    return (outcome) => {
      if (settled) return;
      settled = true;
      window.pendingEvents--;
      window.pendingPageViews -= pageView;
      this.totals.pending--;
      this.totals[outcome]++;
      if (outcome === 'unknown') {
        window.unknownEvents++;
        window.unknownPageViews += pageView;
        return;
      }
      const left = (window.openUsers.get(user) ?? 1) - 1;
      if (left === 0) window.openUsers.delete(user);
      else window.openUsers.set(user, left);
      if (outcome === 'acknowledged') {
        window.ackEvents++;
        window.ackPageViews += pageView;
        window.ackUsers.add(user);
        this.ackTimes.push(Date.now());
        this.newestAckSentAt = Math.max(this.newestAckSentAt, sentAt);
      }
    };
  }

  /**
   * When the newest acknowledged event was sent; 0 before the first. Not when an answer last
   * came: a request held through a broker freeze can be acknowledged as the broker resumes while
   * every request sent after it fails (a stuck producer), and that is no recovery.
   */
  get newestAcknowledgedSentAt(): number {
    return this.newestAckSentAt;
  }

  /** Events acknowledged at or before `ms`. */
  acknowledgedBefore(ms: number): number {
    let low = 0;
    let high = this.ackTimes.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((this.ackTimes[mid] as number) <= ms) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  /** Judges the view's windows against the ledger. */
  judge(view: readonly WindowTotals[]): Verdict {
    const verdict: Verdict = { lost: 0, doubleCounted: 0, unknownCounted: 0, problems: [] };
    const seen = new Map(view.map((row) => [Date.parse(row.window_start), row]));
    const starts = [...new Set([...this.windows.keys(), ...seen.keys()])].sort((a, b) => a - b);
    for (const start of starts) {
      const w = this.windows.get(start) ?? emptyWindow();
      const v = seen.get(start) ?? {
        window_start: new Date(start).toISOString(),
        unique_users: 0,
        page_view_count: 0,
        event_count: 0,
      };
      let mayUsers = w.ackUsers.size;
      for (const user of w.openUsers.keys()) if (!w.ackUsers.has(user)) mayUsers++;
      const bounds: Array<[string, number, number, number]> = [
        ['events', v.event_count, w.ackEvents, w.ackEvents + w.unknownEvents + w.pendingEvents],
        [
          'page views',
          v.page_view_count,
          w.ackPageViews,
          w.ackPageViews + w.unknownPageViews + w.pendingPageViews,
        ],
        ['unique users', v.unique_users, w.ackUsers.size, mayUsers],
      ];
      let lost = 0;
      let excess = 0;
      for (const [what, value, low, high] of bounds) {
        if (value < low) {
          lost = Math.max(lost, low - value);
          verdict.problems.push(`${v.window_start} ${what}: view ${value} < acknowledged ${low}`);
        }
        if (value > high) {
          excess = Math.max(excess, value - high);
          verdict.problems.push(`${v.window_start} ${what}: view ${value} > at most ${high}`);
        }
      }
      verdict.lost += lost;
      verdict.doubleCounted += excess;
      verdict.unknownCounted += Math.min(
        Math.max(0, v.event_count - w.ackEvents),
        w.unknownEvents + w.pendingEvents,
      );
    }
    return verdict;
  }

  private window(start: number): WindowLedger {
    let window = this.windows.get(start);
    if (window === undefined) {
      window = emptyWindow();
      this.windows.set(start, window);
    }
    return window;
  }
}

function emptyWindow(): WindowLedger {
  return {
    ackUsers: new Set(),
    ackPageViews: 0,
    ackEvents: 0,
    openUsers: new Map(),
    unknownPageViews: 0,
    unknownEvents: 0,
    pendingPageViews: 0,
    pendingEvents: 0,
  };
}
