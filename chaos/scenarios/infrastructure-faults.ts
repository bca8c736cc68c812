/**
 * Faults of ingest (scenario 4), the broker (scenario 5) and PostgreSQL (scenario 6).
 */
import type { AggregatorProcess } from '../../e2e/aggregator-process.js';
import { sleep } from '../../shared/lifecycle.js';
import type { RequestRecord } from '../load-generator.js';
import type { ChaosContext, Scenario } from '../scenario.js';
import { actInCommitGap, COMMIT_PAUSE_MS } from './aggregator-faults.js';

/** Ingest's ACK_TIMEOUT_SEC and REQUEST_TIMEOUT_SEC in the chaos pipeline (see pipeline.ts). */
const ACK_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 8_000;
/** A 503 during an outage must arrive within ingest's own deadline, plus slack for a busy box. */
const ANSWER_WITHIN_MS = REQUEST_TIMEOUT_MS + 2_000;

/** Watches the answers given while the broker is down: prompt 503s with Retry-After, no 2xx. */
function watchOutage(context: ChaosContext, downAt: number): () => { upAt: (at: number) => void } {
  const seen: RequestRecord[] = [];
  const stop = context.pipeline.load.onRequest((record) => seen.push(record));
  return () => ({
    upAt: (upAt) => {
      stop();
      let prompt = 0;
      for (const r of seen) {
        // Sent after the broker went and answered before it came back: nothing can have acked it.
        if (r.startedAt < downAt + 500 || r.endedAt >= upAt) continue;
        if (r.status >= 200 && r.status < 300) {
          context.problem(`${r.status} answered while the broker was down (${r.events} events)`);
        } else if (r.status === 503) {
          if (!r.retryAfter) context.problem(`503 ${r.code} without Retry-After`);
          if (r.endedAt - r.startedAt > ANSWER_WITHIN_MS) {
            context.problem(`503 ${r.code} after ${r.endedAt - r.startedAt} ms`);
          } else prompt++;
        } else if (r.status === 0) {
          context.problem(`no answer while the broker was down (${r.code})`);
        }
      }
      if (prompt === 0) context.problem('no 503 seen while the broker was down');
      else context.count('prompt 503 + Retry-After during outages');
    },
  });
}

export function brokerStall(stallMs: number): Scenario {
  return {
    name: 'broker-stall',
    fault: `broker SIGSTOP ${stallMs / 1000} s, SIGCONT`,
    defaultCycles: 20,
    aggregators: 1,
    async cycle(context) {
      context.stack.freezeBroker(true);
      const downAt = Date.now();
      const outage = watchOutage(context, downAt);
      await sleep(stallMs);
      const upAt = Date.now();
      context.stack.freezeBroker(false);
      outage().upAt(upAt);
      return upAt;
    },
  };
}

export const brokerKill: Scenario = {
  name: 'broker-kill',
  fault: 'broker SIGKILL + restart',
  defaultCycles: 20,
  aggregators: 1,
  async cycle(context) {
    await context.stack.killBroker();
    const downAt = Date.now();
    const outage = watchOutage(context, downAt);
    // Long enough for requests sent after the kill to meet ingest's deadline with the broker gone.
    await sleep(ACK_TIMEOUT_MS + 4_000);
    const restartAt = Date.now();
    await context.stack.startBroker();
    outage().upAt(restartAt);
    return Date.now();
  },
};

/** Requests that a SIGKILL of ingest left without an answer (the kill landed mid-request). */
let requestsCutByKill = 0;

/**
 * SIGKILL of ingest while a request is in flight: the load generator's oldest request has been
 * waiting at least this long, so ingest has read it and is producing it or awaiting the broker's
 * acknowledgement. A kill at a random moment of a 15-request/s load finds none in flight most of
 * the time, and then proves nothing about in-flight events.
 */
const KILL_AFTER_IN_FLIGHT_MS = 2;

/** Waits (up to `timeoutMs`) until a request has been in flight at least `minMs`. */
async function untilRequestInFlight(
  context: ChaosContext,
  minMs: number,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (context.pipeline.load.oldestInFlightMs(Date.now()) >= minMs) return true;
    await new Promise((resolve) => setImmediate(resolve));
  }
  return false;
}

export const ingestKill: Scenario = {
  name: 'ingest-kill',
  fault: 'ingest SIGKILL (mid-request) and SIGTERM under load',
  defaultCycles: 20,
  aggregators: 1,
  async cycle(context, index) {
    const ingest = context.pipeline.ingest;
    await sleep(context.random.int(2000));
    const seen: RequestRecord[] = [];
    const stop = context.pipeline.load.onRequest((record) => seen.push(record));
    if (index % 2 === 0) {
      const inFlight = await untilRequestInFlight(context, KILL_AFTER_IN_FLIGHT_MS, 10_000);
      const killAt = Date.now();
      await ingest.signal('SIGKILL');
      context.count(inFlight ? 'SIGKILL with a request in flight' : 'SIGKILL, nothing in flight');
      ingest.start();
      await ingest.waitReady(30_000);
      stop();
      // Sent before the kill and never answered: their events' outcome is unknown to the client
      // (the ledger counts them so) and the oracle allows each to be counted at most once.
      const cut = seen.filter(
        (r) => r.startedAt <= killAt && r.status === 0 && r.code !== 'ECONNREFUSED',
      ).length;
      requestsCutByKill += cut;
      if (cut > 0) context.count('SIGKILL cut requests in flight');
    } else {
      const termAt = Date.now();
      await ingest.signal('SIGTERM', 20_000);
      stop();
      if (ingest.exitCode !== 0)
        context.problem(`ingest exited with ${ingest.exitCode} on SIGTERM`);
      // Requests sent well before the signal were accepted and must all be answered.
      const dropped = seen.filter((r) => r.startedAt < termAt - 200 && r.status === 0);
      if (dropped.length > 0) {
        context.problem(
          `SIGTERM: ${dropped.length} in-flight request(s) got no answer (${dropped[0]?.code})`,
        );
      }
      context.count('SIGTERM, exit 0, in-flight answered');
      ingest.start();
      await ingest.waitReady(30_000);
    }
    return Date.now();
  },
  async finish() {
    // The scenario must have exercised what it claims: a kill with events in flight.
    return requestsCutByKill > 0
      ? []
      : ['no SIGKILL of ingest landed while a request was in flight'];
  },
};

/** The aggregator's backend pid, once it has one. */
async function aggregatorBackend(
  context: ChaosContext,
  where: (backend: { state: string; query: string }) => boolean,
  timeoutMs: number,
): Promise<number | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const backend = (await context.pipeline.aggregatorBackends().catch(() => [])).find(where);
    if (backend !== undefined) return backend.pid;
    await sleep(10);
  }
  return undefined;
}

async function terminate(context: ChaosContext, pid: number): Promise<void> {
  await context.pipeline.query('SELECT pg_terminate_backend($1)', [pid]);
}

/** No session of the aggregator left idle in a transaction once the run has settled. */
async function noLeakedTransaction(context: ChaosContext): Promise<string[]> {
  const leaked = await context.pipeline.idleInTransaction();
  return leaked.map((line) => `session left idle in transaction: ${line}`);
}

export const postgresTerminate: Scenario = {
  name: 'postgres-terminate',
  fault: 'pg_terminate_backend mid-COPY / before COMMIT',
  defaultCycles: 20,
  aggregators: 1,
  pipeline: { aggregatorEnv: { CHAOS_PAUSE_BEFORE_COMMIT_MS: COMMIT_PAUSE_MS } },
  async cycle(context, index) {
    const aggregator = context.pipeline.aggregators[0] as AggregatorProcess;
    if (index % 2 === 0) {
      // While a COPY runs: the backend seen executing it.
      const pid = await aggregatorBackend(
        context,
        (b) => b.state === 'active' && b.query.startsWith('COPY'),
        5_000,
      );
      if (pid !== undefined) {
        await terminate(context, pid);
        context.count('terminated while COPY ran');
        return Date.now();
      }
    }
    // Inside the transaction, after COPY and the upsert, before COMMIT.
    let pid: number | undefined;
    const paused = actInCommitGap(aggregator, 15_000, () => {});
    if ((await paused) !== 'none')
      pid = await aggregatorBackend(context, (b) => b.state.startsWith('idle in'), 150);
    if (pid === undefined) {
      pid = await aggregatorBackend(context, () => true, 5_000);
      context.count('terminated at a random moment');
    } else context.count('terminated when seen idle in transaction, between COPY and COMMIT');
    if (pid === undefined) context.problem('the aggregator has no backend to terminate');
    else await terminate(context, pid);
    return Date.now();
  },
  finish: noLeakedTransaction,
};

export const postgresCrash: Scenario = {
  name: 'postgres-crash',
  fault: 'PostgreSQL immediate shutdown + restart',
  defaultCycles: 20,
  aggregators: 1,
  async cycle(context) {
    await context.stack.crashPostgres();
    await sleep(2_000 + context.random.int(2_000));
    await context.stack.startPostgres();
    context.pipeline.resources.db.on('error', () => {});
    return Date.now();
  },
  finish: noLeakedTransaction,
};

export const postgresHang: Scenario = {
  name: 'postgres-hang',
  fault: 'PostgreSQL backend SIGSTOP (hang), SIGCONT',
  defaultCycles: 20,
  aggregators: 1,
  async cycle(context) {
    const aggregator = context.pipeline.aggregators[0] as AggregatorProcess;
    const pid = await aggregatorBackend(context, () => true, 10_000);
    if (pid === undefined) {
      context.problem('the aggregator has no backend to freeze');
      return Date.now();
    }
    const timeoutsBefore = (await aggregator.metric('aggregator_flushes_total')) ?? 0;
    process.kill(pid, 'SIGSTOP');
    // Past DATABASE_QUERY_TIMEOUT_SEC (3 s): the client must give the query up on its own.
    await sleep(7_000);
    const readyWhileHung = await fetch(`http://127.0.0.1:${aggregator.port}/readyz`, {
      signal: AbortSignal.timeout(2_000),
    }).then(
      (r) => r.status,
      () => 0,
    );
    process.kill(pid, 'SIGCONT');
    const clearedAt = Date.now();
    const flushesAfter = (await aggregator.metric('aggregator_flushes_total')) ?? 0;
    if (flushesAfter <= timeoutsBefore) {
      context.problem('no flush attempt finished while the backend hung: no client-side timeout');
    }
    context.count(`readyz ${readyWhileHung} while hung`);
    return clearedAt;
  },
  finish: noLeakedTransaction,
};
