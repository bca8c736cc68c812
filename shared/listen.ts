import type { Server } from 'node:http';

/**
 * Starts `server` on `port` and `host`. A taken port is an error that names the setting to
 * change (`portSetting`, e.g. `QUERY_PORT`), not a bare EADDRINUSE.
 */
export async function listen(
  server: Server,
  port: number,
  host: string,
  portSetting: string,
): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? new Error(`port ${port} is taken; set ${portSetting} to a free port`, { cause: err })
          : err,
      ),
    );
    server.listen(port, host, resolve);
  });
}
