import { loadConfigOrExit } from '../shared/config-reader.js';
import { runService } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { readQueryConfig } from './config.js';
import { startQuery } from './service.js';

const config = loadConfigOrExit(() => readQueryConfig(process.env));
const logger = createLogger('query', config.logLevel);
await runService({
  logger,
  graceMs: config.shutdownGraceMs,
  start: () => startQuery(config, logger),
});
