import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { sleep } from '../shared/lifecycle.js';
import { startCpuMeter } from './process-sampler.js';

test('the CPU of processes is measured by command name, whatever their pids', async () => {
  // `yes` spins on a core; it is found by its name, as the broker (java) and PostgreSQL are.
  const busy = spawn('yes', [], { stdio: 'ignore' });
  try {
    await new Promise((resolve) => busy.once('spawn', resolve));
    const meter = startCpuMeter([], ['yes', 'no-such-command']);
    await sleep(1_200);
    const cpu = meter.stop();
    assert.ok((cpu.byCommand.get('yes') ?? 0) > 0, `yes used ${cpu.byCommand.get('yes')} %`);
    assert.equal(cpu.byCommand.get('no-such-command'), 0);
    assert.ok(cpu.machine >= (cpu.byCommand.get('yes') ?? 0) * 0.5);
  } finally {
    busy.kill('SIGKILL');
  }
});

test('a process that ends during the measure counts up to its last sample', async () => {
  const meter = startCpuMeter([], ['yes']);
  const busy = spawn('yes', [], { stdio: 'ignore' });
  await sleep(1_200);
  busy.kill('SIGKILL');
  await new Promise((resolve) => busy.once('exit', resolve));
  await sleep(200);
  const cpu = meter.stop();
  assert.ok((cpu.byCommand.get('yes') ?? 0) > 0, `yes used ${cpu.byCommand.get('yes')} %`);
});
