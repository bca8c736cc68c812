/**
 * Piscina worker entry: aggregates one partition's batch off the main thread. Errors never cross
 * the thread boundary as exceptions: bad records are values in the result (see batch-aggregator).
 */
import { aggregateBatch, type BatchInput, type BatchResult } from './batch-aggregator.js';

export default function run(input: BatchInput): BatchResult {
  return aggregateBatch(input);
}
