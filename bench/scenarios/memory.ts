/**
 * memory: the aggregator's RSS per distinct user held in open windows. A topic with N events of N
 * distinct users, all in one window kept open (WINDOW_SEC and ALLOWED_LATENESS_SEC of an hour);
 * RSS once assigned and idle, then once every user is held (`aggregator_held_user_ids` = N) and
 * a flush has run.
 */
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
  heldRss: number;
  held: number;
  bytesPerUser: number;
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
      let idleHeap = 0;
      let heldHeap = 0;
      let held = 0;
      await aggregatorCatchup(context, {
        topic,
        records,
        workers: 2,
        capSec: 300,
        env: { WINDOW_SEC: '3600', ALLOWED_LATENESS_SEC: '3600' },
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
        },
      });
      return {
        idleHeap,
        heldHeap,
        idleRss,
        heldRss,
        held,
        bytesPerUser: (heldRss - idleRss) / Math.max(1, held),
      };
    };
    const results = await alternate(
      config.runs,
      [{ name: 'aggregator', run: measure }],
      log,
      (run) =>
        `${num(run.held)} users held, RSS ${num(run.idleRss / 2 ** 20)} MiB idle → ${num(run.heldRss / 2 ** 20)} MiB: ${num(run.bytesPerUser)} bytes/user`,
    );
    const runs = results.get('aggregator') ?? [];
    const perUser = figure(
      runs.map((run) => run.bytesPerUser),
      'bytes of RSS per user',
    );
    const warnings = runs
      .filter((run) => run.held < records)
      .map((run) => `a run held only ${num(run.held)} of ${num(records)} users`);
    return {
      scenario: 'memory',
      method: `${num(records)} events of ${num(records)} distinct users in one open window (WINDOW_SEC=3600, ALLOWED_LATENESS_SEC=3600, WORKERS=2, the default), read from a pre-filled topic; bytes/user = (RSS with every user held, after two flush intervals − RSS when /healthz first answers, before any record is read) ÷ aggregator_held_user_ids; RSS from /proc (main thread, worker threads, librdkafka, everything); ${config.runs} runs`,
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
              'MiB',
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
