// Postgres access for every service: one kysely instance over a pg pool whose sessions
// start with `search_path` set to the service's own schema, so stores and migrations use
// unqualified table names and can never wander into another service's tables by accident.
//
// pg returns int8/numeric as strings and we leave it so: a store converts at its boundary
// (to bigint for protobuf int64), once, instead of a global type parser silently losing
// precision above 2^53.
import { Kysely, PostgresDialect, sql, type RawBuilder } from "kysely";
import pg from "pg";
import { createLogger, type Logger } from "./log.js";

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/** Throws unless `name` is a plain lower-case Postgres identifier (safe to splice into SQL unquoted). */
export function assertIdentifier(name: string, what = "identifier"): string {
  if (!IDENTIFIER.test(name)) {
    throw new Error(`${what} "${name}" must match ${IDENTIFIER} (lower-case letters, digits, underscores)`);
  }
  return name;
}

export interface CreateDbOptions {
  /** postgres://user@host:port/database */
  url: string;
  /** The schema this service owns; becomes the session's search_path. */
  schema: string;
  /** Pool size (default 10). */
  max?: number;
  /** Shows up in pg_stat_activity, which makes "who holds this lock?" answerable. */
  applicationName?: string;
  log?: Logger;
}

export function createDb<DB>(opts: CreateDbOptions): Kysely<DB> {
  const schema = assertIdentifier(opts.schema, "schema");
  const pool = createPool({ ...opts, applicationName: opts.applicationName ?? `vouch-${schema}`, options: `-c search_path=${schema}` });
  pool.on("connect", shapeQueries);
  // Never hand out a session with a BEGIN still held (kysely always ends what it began; this
  // is the belt to those braces).
  pool.on("release", (_err: unknown, client: VouchClient) => {
    client[heldBegin] = undefined;
  });
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
}

/**
 * A pg pool that survives Postgres going away: for kysely (createDb) and for the few places
 * that need a raw client (the outbox relay's multi-statement messages).
 */
export function createPool(opts: { url: string; max?: number; applicationName: string; options?: string; log?: Logger }): pg.Pool {
  const log = opts.log ?? createLogger("db");
  const pool = new pg.Pool({
    connectionString: opts.url,
    max: opts.max ?? 10,
    options: opts.options,
    application_name: opts.applicationName,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 10_000,
  });
  // An idle client whose server went away emits 'error' on the pool; without a listener
  // that is an uncaught exception. The pool already discards the client, so we only log.
  pool.on("error", (err) =>
    log.warn({ err: { message: err.message, code: (err as { code?: string }).code }, pool: opts.applicationName }, "postgres pool: idle connection failed"),
  );
  // A checked-out client has no pool listener: when the server goes away mid-query (a
  // Postgres restart) the query fails through its promise *and* the client emits 'error',
  // which without a listener is an uncaught exception that kills the process.
  pool.on("connect", (client) => client.on("error", () => {}));
  return pool;
}

const PREPARED_MARK = "/* vouch:prepared */ ";

/**
 * Runs a hot statement as a named prepared statement: Postgres parses and plans it once per
 * connection instead of on every call. For the voucher service's code look-up (three joins,
 * 34 columns) that is 0.06 ms of Postgres CPU per call instead of 0.3–0.9 ms, measured with
 * 32 connections on this machine.
 *
 * Only for statements whose text comes from a small fixed set (every value a parameter; each
 * distinct text stays prepared on each connection for its life) and that name their columns:
 * a cached plan of a `*` fails with "cached plan must not change result type" once a
 * migration adds a column under a running replica.
 */
export function prepared<T>(query: RawBuilder<T>): RawBuilder<T> {
  return sql<T>`${sql.raw(PREPARED_MARK)}${query}`;
}

/**
 * One name per distinct marked text in this process, shared by every pool and connection (pg
 * prepares a name on first use per connection). The set is small and fixed: the marked
 * statements and their variants.
 */
const statementNames = new Map<string, string>();
const statementName = (text: string) => {
  let name = statementNames.get(text);
  if (name === undefined) statementNames.set(text, (name = `vouch_${statementNames.size + 1}`));
  return name;
};

// ── BEGIN without a round trip of its own ─────────────────────────────────────────────
//
// kysely opens a transaction with `begin` and waits for the answer before it runs the first
// statement: one round trip that carries nothing. On this machine a round trip costs both
// processes a write and a read system call and a wake-up (~0.1 ms of CPU over client and
// Postgres), and most transactions here are two to four statements, so that empty round trip
// is a fifth to a third of each transaction's Postgres traffic. Instead, `begin` is answered at
// once and held, and goes out in the same message as the transaction's first statement, ahead
// of it, under one Sync: Postgres runs both in order and answers both at once. Nothing else
// changes — the statement runs inside the transaction, an error in it aborts the transaction
// as before, and kysely's ROLLBACK follows. A transaction that ends before any statement
// (commit or rollback with `begin` still held) never reaches Postgres at all.

const BEGIN = /^(begin|start transaction( [a-z ]+)?)$/i;
const ENDS_TRANSACTION = /^(commit|rollback)$/i;
const heldBegin = Symbol("vouch.heldBegin");
type VouchClient = pg.PoolClient & { [heldBegin]?: string };

const nothingRan = (command: string) => ({ command: command.toUpperCase(), rowCount: null, oid: 0, rows: [], fields: [] });

/** The parts of pg's Query and Connection (internals its types do not describe) that BeginThenQuery uses. */
interface PgConnection {
  parse(m: { text: string; name: string; types: unknown[] }): void;
  bind(m: { portal: string; statement: string; values: unknown[] }): void;
  execute(m: { portal: string }): void;
  submittedNamedStatements: Record<string, string>;
}
interface PgQueryInternals {
  text: string;
  name?: string;
  types?: unknown[];
  hasBeenParsed(connection: PgConnection): boolean;
  requiresPreparation(): boolean;
  prepare(connection: PgConnection): void;
  submit(connection: PgConnection): Error | null;
  handleCommandComplete(msg: unknown, connection: PgConnection): void;
}
type QueryCallback = (err: Error | undefined, result: pg.QueryResult) => void;
const PgQuery = pg.Query as unknown as new (config: pg.QueryConfig, values: undefined, callback: QueryCallback) => PgQueryInternals;

/**
 * A query that sends `beginText` ahead of itself in the same protocol message and hides
 * BEGIN's answer (always the first CommandComplete), so the caller sees its own result only.
 */
class BeginThenQuery extends PgQuery {
  private beginAnswered = false;
  constructor(
    private readonly beginText: string,
    config: pg.QueryConfig,
    callback: QueryCallback,
  ) {
    super(config, undefined, callback);
  }

  // Extended protocol (the statement has parameters, or a name): Parse/Bind/Execute of BEGIN,
  // then the statement's own Parse/Bind/Describe/Execute/Sync, written together (pg corks the
  // stream). A named statement not yet parsed on this session is parsed first, ahead of BEGIN:
  // pg takes the first ParseComplete for the named statement's, so it must be that one (if
  // it fails, Postgres skips the rest, BEGIN included, and pg will parse it again next time).
  override prepare(connection: PgConnection) {
    if (this.name && !this.hasBeenParsed(connection)) {
      connection.parse({ text: this.text, name: this.name, types: this.types ?? [] });
      connection.submittedNamedStatements[this.name] = this.text;
    }
    connection.parse({ text: this.beginText, name: "", types: [] });
    connection.bind({ portal: "", statement: "", values: [] });
    connection.execute({ portal: "" });
    super.prepare(connection);
  }

  // Simple protocol (no parameters): both statements in one Query message.
  override submit(connection: PgConnection) {
    if (!this.requiresPreparation()) this.text = `${this.beginText}; ${this.text}`;
    return super.submit(connection);
  }

  override handleCommandComplete(msg: unknown, connection: PgConnection) {
    if (!this.beginAnswered) {
      this.beginAnswered = true;
      return;
    }
    super.handleCommandComplete(msg, connection);
  }
}

/**
 * kysely hands pg the SQL text of every statement: a marked text becomes a named query (see
 * `prepared`), and `begin` is held for the transaction's first statement (see above).
 */
function shapeQueries(client: VouchClient): void {
  const query = client.query as (...args: unknown[]) => Promise<pg.QueryResult>;
  client.query = function (this: VouchClient, ...args: unknown[]) {
    const [text, values] = args as [unknown, unknown[] | undefined];
    if (typeof text !== "string" || args.length > 2) {
      // A query object (COPY, a cursor) or a callback-style call: a held BEGIN goes ahead of
      // it on its own (pg sends in order). One that failed broke the session, and this fails too.
      const begin = this[heldBegin];
      this[heldBegin] = undefined;
      if (begin !== undefined) query.call(this, begin).catch(() => {});
      return query.apply(this, args);
    }
    if (BEGIN.test(text) && !values?.length && this[heldBegin] === undefined) {
      this[heldBegin] = text;
      return Promise.resolve(nothingRan("BEGIN"));
    }
    const config: pg.QueryConfig = text.startsWith(PREPARED_MARK) ? { name: statementName(text), text, values } : { text, values };
    const begin = this[heldBegin];
    if (begin === undefined) return query.call(this, config);
    this[heldBegin] = undefined;
    if (ENDS_TRANSACTION.test(text)) return Promise.resolve(nothingRan(text));
    return new Promise((resolve, reject) => {
      query.call(this, new BeginThenQuery(begin, config, (err, res) => (err ? reject(err) : resolve(res))));
    });
  } as typeof client.query;
}

/** The same URL pointing at another database on the same server. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

export function databaseName(url: string): string {
  const name = decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
  if (!name) throw new Error(`database URL ${redactUrl(url)} names no database`);
  return name;
}

export function redactUrl(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = "***";
  return u.toString();
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * Creates the database named by `url` if it does not exist, through the `postgres`
 * maintenance database. Safe when several processes race to create the same one.
 */
export async function ensureDatabase(url: string): Promise<void> {
  const name = databaseName(url);
  const client = new pg.Client({ connectionString: withDatabase(url, "postgres") });
  client.on("error", () => {}); // a failure surfaces through the awaited query below
  await client.connect();
  try {
    const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
    if (found.rowCount) return;
    try {
      await client.query(`CREATE DATABASE ${quoteIdent(name)}`);
    } catch (err) {
      // 42P04 duplicate_database; two concurrent CREATEs can also collide on the catalog's
      // unique index (23505) before either sees the other's row.
      const code = (err as { code?: string }).code;
      if (code !== "42P04" && code !== "23505") throw err;
    }
  } finally {
    await client.end();
  }
}
