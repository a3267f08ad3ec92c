// Schema migrations, run by every service on start. Replicas start together, so the whole
// run (including kysely's own bookkeeping tables, which it creates before taking its lock)
// happens under a per-schema session advisory lock held on one dedicated connection: the
// first replica migrates, the others wait, then find nothing left to do.
import { createHash } from "node:crypto";
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from "kysely";
import { assertIdentifier } from "./db.js";
import type { Logger } from "./log.js";

export type { Migration };

export interface RunMigrationsOptions {
  schema: string;
  /** Applied in the order of their names: prefix them, e.g. `0001_users`, `0002_sessions`. */
  migrations: Record<string, Migration>;
  log: Logger;
}

/** A stable signed 64-bit advisory lock key for `name` (as a decimal string for pg's int8). */
export function advisoryLockKey(name: string): string {
  return createHash("sha256").update(name).digest().readBigInt64BE(0).toString();
}

export async function runMigrations<DB>(db: Kysely<DB>, opts: RunMigrationsOptions): Promise<string[]> {
  const schema = assertIdentifier(opts.schema, "schema");
  const key = advisoryLockKey(`vouch.migrate.${schema}`);
  const provider: MigrationProvider = { getMigrations: async () => opts.migrations };

  // CREATE SCHEMA IF NOT EXISTS can itself fail with a unique violation when two sessions
  // race on it, so it goes under the lock too.
  return db.connection().execute(async (conn) => {
    const started = Date.now();
    await sql`SELECT pg_advisory_lock(${key}::bigint)`.execute(conn);
    try {
      await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(schema)}`.execute(conn);
      const migrator = new Migrator({ db: conn, provider, migrationTableSchema: schema });
      const { error, results = [] } = await migrator.migrateToLatest();
      const applied = results.filter((r) => r.status === "Success").map((r) => r.migrationName);
      if (error) {
        const failed = results.find((r) => r.status === "Error")?.migrationName;
        const reason = error instanceof Error ? error.message : String(error);
        throw new Error(
          failed
            ? `migration ${schema}/${failed} failed: ${reason} (nothing from this run was applied)`
            : `migrations of schema ${schema} failed: ${reason}`,
          { cause: error },
        );
      }
      if (applied.length) opts.log.info({ schema, applied, ms: Date.now() - started }, "migrations applied");
      else opts.log.debug({ schema }, "migrations: schema up to date");
      return applied;
    } finally {
      await sql`SELECT pg_advisory_unlock(${key}::bigint)`.execute(conn);
    }
  });
}
