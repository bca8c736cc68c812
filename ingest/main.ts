import { loadConfigOrExit } from '../shared/config-reader.js';
import { runService } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { readIngestConfig } from './config.js';
import { startIngest } from './service.js';

const config = loadConfigOrExit(() => readIngestConfig(process.env));
const logger = createLogger('ingest', config.logLevel);
await runService({
  logger,
  graceMs: config.shutdownGraceMs,
  start: () => startIngest(config, logger),
});
