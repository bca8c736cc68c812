/**
 * memory: the aggregator's RSS per distinct user held in open windows. A topic with N events of N
 * distinct users, all in one window kept open (WINDOW_SEC of 15 minutes, the longest rollups allow,
 * and ALLOWED_LATENESS_SEC of an hour);
 * RSS once assigned and idle, then once every user is held (`aggregator_held_user_ids` = N) and
 * a flush has run, and again once it has settled: the catch-up's own garbage (a million record
 * objects and buffers, freed) is returned to the system over the next seconds, and what is left
 * is what holding the users costs.
 */
import { serviceAllocatorEnv } from '../../deploy/local/child-process.js';
import { sleep } from '../../shared/lifecycle.js';
import { aggregatorCatchup } from '../aggregator-run.js';
import { atMost, type ScenarioResult } from '../bench-result.js';
import { producedEvents } from '../event-generator.js';
import { rssBytes } from '../process-sampler.js';
import { alternate, type BenchContext, num, type Scenario } from '../scenario.js';
import { readMetric } from '../service-processes.js';
import { figure } from '../statistics.js';

interface MemoryRun {
  /** The main thread's V8 heap in use (`nodejs_heap_size_used_bytes`), idle and with every user held. */
  idleHeap: number;
  heldHeap: number;
  idleRss: number;
  /** Right after the catch-up (two flush intervals after the last user): its garbage included. */
  heldRss: number;
  /** Once RSS stopped falling (see `settledRss`). */
  settledRss: number;
  settleSec: number;
  held: number;
  bytesPerUser: number;
  bytesPerUserAfterCatchup: number;
}

/**
 * RSS counts as settled once 5 samples a second apart lie within 1 % of each other, and not
 * before 30 s: the catch-up's garbage is freed by V8's next full collection, which its memory
 * reducer starts only once allocation has been quiet for a while, and the allocator then returns
 * the pages over its decay time (jemalloc: 10 s).
 */
const SETTLE_SAMPLES = 5;
const SETTLE_MIN_MS = 30_000;
const SETTLE_LIMIT_MS = 90_000;

/** Samples RSS every second until it no longer falls (or 90 s passed); returns the last. */
async function settledRss(pid: number): Promise<{ rss: number; seconds: number }> {
  const startedAt = Date.now();
  const samples: number[] = [];
  for (;;) {
    samples.push(rssBytes(pid) ?? 0);
    const recent = samples.slice(-SETTLE_SAMPLES);
    const elapsed = Date.now() - startedAt;
    const stable =
      elapsed >= SETTLE_MIN_MS &&
      recent.length === SETTLE_SAMPLES &&
      Math.max(...recent) <= Math.min(...recent) * 1.01;
    if (stable || elapsed > SETTLE_LIMIT_MS) {
      return { rss: samples.at(-1) ?? 0, seconds: (Date.now() - startedAt) / 1000 };
    }
    await sleep(1_000);
  }
}

export const memory: Scenario = {
  name: 'memory',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { config, log } = context;
    const startedAt = new Date();
    const users = config.memoryUsers;
    const topic = context.topics.name('memory');
    await context.topics.create(topic);
    log(`  filling ${topic} with ${num(users)} events of distinct users`);
    await context.topics.fill(
      topic,
      producedEvents({ count: users, endMs: Date.now(), spanMs: 1_000, distinct: true }),
      () => {},
    );
    const records = await context.topics.totalRecords(topic);
    const measure = async (): Promise<MemoryRun> => {
      let idleRss = 0;
      let heldRss = 0;
      let settled = { rss: 0, seconds: 0 };
      let idleHeap = 0;
      let heldHeap = 0;
      let held = 0;
      await aggregatorCatchup(context, {
        topic,
        records,
        workers: 2,
        capSec: 300,
        // What is measured is memory per user *held*: the window must stay in memory for the
        // whole run, even one that crosses the hour's end (a closed window leaves memory). No
        // count depends on it.
        env: { WINDOW_SEC: '900', ALLOWED_LATENESS_SEC: '3600' },
        whenStarted: async (service) => {
          idleRss = rssBytes(service.process.pid) ?? 0;
          idleHeap = (await readMetric(service.url, 'nodejs_heap_size_used_bytes')) ?? 0;
        },
        whenCaughtUp: async (service) => {
          const deadline = Date.now() + 30_000;
          while (Date.now() < deadline) {
            held = (await readMetric(service.url, 'aggregator_held_user_ids')) ?? 0;
            if (held >= records) break;
            await sleep(200);
          }
          // Two flush intervals: the batches in hand are merged and the changed windows written.
          await sleep(config.flushIntervalSec * 2000 + 500);
          held = (await readMetric(service.url, 'aggregator_held_user_ids')) ?? held;
          heldRss = rssBytes(service.process.pid) ?? 0;
          heldHeap = (await readMetric(service.url, 'nodejs_heap_size_used_bytes')) ?? 0;
          settled = await settledRss(service.process.pid);
          held = (await readMetric(service.url, 'aggregator_held_user_ids')) ?? held;
        },
      });
      return {
        idleHeap,
        heldHeap,
        idleRss,
        heldRss,
        settledRss: settled.rss,
        settleSec: settled.seconds,
        held,
        bytesPerUser: (settled.rss - idleRss) / Math.max(1, held),
        bytesPerUserAfterCatchup: (heldRss - idleRss) / Math.max(1, held),
      };
    };
    const results = await alternate(
      config.runs,
      [{ name: 'aggregator', run: measure }],
      log,
      (run) =>
        `${num(run.held)} users held, RSS ${num(run.idleRss / 2 ** 20)} MiB idle → ${num(run.heldRss / 2 ** 20)} MiB after the catch-up → ${num(run.settledRss / 2 ** 20)} MiB settled (${run.settleSec.toFixed(0)} s later): ${num(run.bytesPerUser)} bytes/user`,
    );
    const runs = results.get('aggregator') ?? [];
    const perUser = figure(
      runs.map((run) => run.bytesPerUser),
      'bytes of RSS per user',
    );
    const warnings = runs
      .filter((run) => run.held < records)
      .map((run) => `a run held only ${num(run.held)} of ${num(records)} users`);
    if (serviceAllocatorEnv().LD_PRELOAD === undefined) {
      warnings.push(
        "the aggregator ran on glibc's malloc, not on jemalloc as it ships (apt-get install -y libjemalloc2): its freed catch-up buffers stay resident",
      );
    }
    return {
      scenario: 'memory',
      method: `${num(records)} events of ${num(records)} distinct users in one open window (WINDOW_SEC=900, ALLOWED_LATENESS_SEC=3600, WORKERS=2, the default), read from a pre-filled topic; bytes/user = (RSS with every user held, once settled − RSS when /healthz first answers, before any record is read) ÷ aggregator_held_user_ids. Settled: sampled every second from two flush intervals after the last user, for at least ${SETTLE_MIN_MS / 1000} s and until ${SETTLE_SAMPLES} samples in a row lie within 1 % (at most ${SETTLE_LIMIT_MS / 1000} s), so that the catch-up's freed garbage is not counted as user state; the figure right after the catch-up is reported beside it. RSS from /proc (main thread, worker threads, librdkafka, everything), the service on the allocator it ships with (jemalloc where installed); ${config.runs} runs`,
      startedAt: startedAt.toISOString(),
      durationSec: (Date.now() - startedAt.getTime()) / 1000,
      contenders: [
        {
          name: 'aggregator',
          role: 'target',
          throughput: perUser,
          extra: {
            idleRssMiB: figure(
              runs.map((run) => run.idleRss / 2 ** 20),
              'MiB',
            ),
            heldRssMiB: figure(
              runs.map((run) => run.heldRss / 2 ** 20),
              'MiB right after the catch-up',
            ),
            settledRssMiB: figure(
              runs.map((run) => run.settledRss / 2 ** 20),
              'MiB once settled',
            ),
            settleSec: figure(
              runs.map((run) => run.settleSec),
              's from the first sample to settled',
            ),
            bytesPerUserAfterCatchup: figure(
              runs.map((run) => run.bytesPerUserAfterCatchup),
              'bytes of RSS per user right after the catch-up, its garbage included (not the target)',
            ),
            mainHeapBytesPerUser: figure(
              runs.map((run) => (run.heldHeap - run.idleHeap) / Math.max(1, run.held)),
              'bytes of main-thread V8 heap in use per user (not a target; where the RSS goes)',
            ),
            usersHeld: figure(
              runs.map((run) => run.held),
              'users',
            ),
          },
        },
      ],
      ratios: [
        atMost('memory per distinct user', 'bytes of RSS per user held', perUser.median, 200),
      ],
      warnings,
    };
  },
};
