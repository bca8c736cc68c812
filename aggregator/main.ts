import { loadConfigOrExit } from '../shared/config-reader.js';
import { runService } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { readAggregatorConfig } from './config.js';
import { startAggregator } from './service.js';

const config = loadConfigOrExit(() => readAggregatorConfig(process.env));
const logger = createLogger('aggregator', config.logLevel);
await runService({
  logger,
  graceMs: config.shutdownGraceMs,
  start: () => startAggregator(config, logger),
});
