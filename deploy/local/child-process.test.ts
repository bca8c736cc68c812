import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { serviceAllocatorEnv } from './child-process.js';

test('services are started on jemalloc, and it really is in the process', () => {
  const env = serviceAllocatorEnv({});
  // `make install` installs libjemalloc2: a machine that ran it has the library.
  assert.ok(env.LD_PRELOAD !== undefined, 'jemalloc found (apt-get install -y libjemalloc2)');
  assert.equal(env.MALLOC_CONF, 'background_thread:true');
  const probe = spawnSync(
    process.execPath,
    [
      '-e',
      "process.stdout.write(String(require('fs').readFileSync('/proc/self/maps', 'utf8').includes('libjemalloc')))",
    ],
    { env: { ...process.env, ...env }, encoding: 'utf8' },
  );
  assert.equal(probe.stdout, 'true', probe.stderr);
});

test('a preload chosen by the caller, even an empty one, is left alone', () => {
  assert.deepEqual(serviceAllocatorEnv({ LD_PRELOAD: '' }), {});
  assert.deepEqual(serviceAllocatorEnv({ LD_PRELOAD: '/opt/other.so' }), {});
});

test('a MALLOC_CONF of the caller is kept', () => {
  assert.equal(serviceAllocatorEnv({ MALLOC_CONF: 'narenas:2' }).MALLOC_CONF, 'narenas:2');
});
