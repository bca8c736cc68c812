/**
 * Scratch schemas for the aggregator's database tests: connections whose unqualified names
 * resolve in a schema of the test's own (as the aggregator's do), optionally migrated, all
 * dropped and closed by `dropAll` (call it from `after`), each close under a deadline.
 */
import pg from 'pg';
import { withDeadline } from '../shared/lifecycle.js';
import { uniqueName } from '../shared/testing.js';
import { SESSION_OPTIONS } from './database.js';
import { migrate } from './migrations.js';

export class TestSchemas {
  private readonly schemas: string[] = [];
  private readonly clients: pg.Client[] = [];

  constructor(
    private readonly databaseUrl: string,
    private readonly prefix: string,
  ) {}

  /** A new schema's name, dropped by `dropAll`. */
  name(): string {
    const schema = uniqueName(this.prefix);
    this.schemas.push(schema);
    return schema;
  }

  /** A connection to `schema`, closed by `dropAll`. */
  async connect(schema: string): Promise<pg.Client> {
    const client = new pg.Client({
      connectionString: this.databaseUrl,
      // As the aggregator's own connections: the flush code runs on these in-process.
      options: `-c search_path=${schema},public ${SESSION_OPTIONS}`,
      query_timeout: 20_000,
    });
    client.on('error', () => {});
    await client.connect();
    this.clients.push(client);
    return client;
  }

  /** A fresh, migrated schema and a connection to it. */
  async fresh(): Promise<pg.Client> {
    const schema = this.name();
    const client = await this.connect(schema);
    await migrate(client, schema);
    return client;
  }

  async dropAll(): Promise<void> {
    const admin = new pg.Client({ connectionString: this.databaseUrl });
    await admin.connect();
    try {
      for (const schema of this.schemas) {
        await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      }
    } finally {
      await admin.end();
      await Promise.allSettled(
        this.clients.map((client) =>
          withDeadline(client.end(), 5_000, 'closing a test connection'),
        ),
      );
    }
  }
}
