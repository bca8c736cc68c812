/**
 * Baseline of ingest-single: the HTTP ceiling. A bare uWebSockets.js server (the library ingest
 * is built on) that reads the body, parses the JSON and answers 200 with ingest's body — no
 * validation, no broker. Whatever ingest does beyond this costs throughput against it.
 *
 *   PORT=... node bare-uws-server.js
 */
import uWS from 'uWebSockets.js';
import { ConfigReader } from '../../shared/config-reader.js';

const r = new ConfigReader(process.env);
const port = r.port('PORT', 8090);
r.finish();

const ACCEPTED = '{"status":"accepted"}';

const answer = (res: uWS.HttpResponse, status: string, body: string): void => {
  res.cork(() => {
    res.writeStatus(status).writeHeader('content-type', 'application/json').end(body);
  });
};

uWS
  .App()
  .get('/healthz', (res) => {
    res.end('ok');
  })
  .post('/*', (res) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    let body: Buffer | undefined;
    res.onData((chunk, isLast) => {
      const piece = Buffer.from(chunk);
      body = body === undefined ? Buffer.from(piece) : Buffer.concat([body, piece]);
      if (!isLast || aborted) return;
      try {
        JSON.parse(body.toString('utf8'));
        answer(res, '200 OK', ACCEPTED);
      } catch {
        answer(res, '400 Bad Request', '{"code":"invalid_json"}');
      }
    });
  })
  .listen('127.0.0.1', port, (socket) => {
    if (socket === false) {
      process.stderr.write(`cannot listen on ${port}\n`);
      process.exit(1);
    }
  });

process.on('SIGTERM', () => process.exit(0));
