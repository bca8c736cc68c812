/**
 * Ingest as a child process (`node dist/ingest/main.js`), for tests that kill it for real
 * (SIGKILL under load, SIGTERM with requests in flight); see `ServiceProcess`.
 */
import { fileURLToPath } from 'node:url';
import { ServiceProcess } from './service-process.js';

const MAIN = fileURLToPath(new URL('../ingest/main.js', import.meta.url));

export class IngestProcess extends ServiceProcess {
  /** `env` is ingest's whole configuration; it must include INGEST_PORT. */
  constructor(env: Record<string, string>) {
    super('ingest', MAIN, env, 'INGEST_PORT');
  }
}
