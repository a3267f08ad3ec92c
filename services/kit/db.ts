// Postgres access for every service: one kysely instance over a pg pool whose sessions
// start with `search_path` set to the service's own schema, so stores and migrations use
// unqualified table names and can never wander into another service's tables by accident.
//
// pg returns int8/numeric as strings and we leave it so: a store converts at its boundary
// (to bigint for protobuf int64), once, instead of a global type parser silently losing
// precision above 2^53.
import { Kysely, PostgresDialect, sql, type Compilable, type RawBuilder } from "kysely";
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
  // Never hand out a session with a BEGIN still held or a transaction marked open (kysely
  // always ends what it began; this is the belt to those braces).
  pool.on("release", (_err: unknown, client: VouchClient) => {
    client[heldBegin] = undefined;
    client[inTransaction] = false;
    client[committed] = false;
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
 * `prepared` for a query made with kysely's builder (same rules), so a hot query need not be
 * rewritten as raw SQL to be prepared. Runs it on `db` and returns its rows.
 */
export async function executePrepared<O>(db: Kysely<any>, query: Compilable<O>): Promise<O[]> {
  const compiled = query.compile();
  const { rows } = await db.executeQuery<O>({ ...compiled, sql: PREPARED_MARK + compiled.sql });
  return rows;
}

const COMMIT_MARK = "/* vouch:commits */ ";

/**
 * Marks the last statement of a transaction: its COMMIT goes out in the same message, and
 * kysely's own COMMIT then costs nothing (see "BEGIN and COMMIT without round trips of their
 * own" below). Only for a statement after which the transaction does nothing else, not even
 * JavaScript that may throw: from its answer on, the transaction is committed. Outside a
 * transaction begun through kysely, or without parameters, it runs as an ordinary statement.
 */
export function lastInTransaction<T>(query: RawBuilder<T>): RawBuilder<T> {
  return sql<T>`${sql.raw(COMMIT_MARK)}${query}`;
}

/** The leading marks of a statement's text (`prepared`, `lastInTransaction`, in either order). */
function marksOf(text: string): { prepared: boolean; commits: boolean } {
  let rest = text;
  const marks = { prepared: false, commits: false };
  for (;;) {
    if (rest.startsWith(PREPARED_MARK)) (marks.prepared = true), (rest = rest.slice(PREPARED_MARK.length));
    else if (rest.startsWith(COMMIT_MARK)) (marks.commits = true), (rest = rest.slice(COMMIT_MARK.length));
    else return marks;
  }
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

// ── BEGIN and COMMIT without round trips of their own ──────────────────────────────────
//
// kysely opens a transaction with `begin` and waits for the answer before it runs the first
// statement: one round trip that carries nothing; and its COMMIT is another. On this machine
// a round trip costs both processes a write and a read system call and a wake-up (~0.1 ms of
// CPU over client and Postgres), and most transactions here are two to four statements, so
// those two are a third to a half of each transaction's Postgres traffic. Instead:
// - `begin` is answered at once and held, and goes out in the same message as the
//   transaction's first statement, ahead of it, under one Sync: Postgres runs both in order
//   and answers both at once. A transaction that ends before any statement (commit or
//   rollback with `begin` still held) never reaches Postgres at all.
// - a statement marked `lastInTransaction` takes COMMIT along behind it, in the same way, and
//   kysely's COMMIT that follows is answered at once.
// Nothing else changes: an error in the statement aborts the transaction as before (Postgres
// skips what follows it up to the Sync, COMMIT included), and kysely's ROLLBACK follows; a
// COMMIT that fails fails the statement's call.

const BEGIN = /^(begin|start transaction( [a-z ]+)?)$/i;
const COMMIT = /^commit$/i;
const ENDS_TRANSACTION = /^(commit|rollback)$/i;
const heldBegin = Symbol("vouch.heldBegin");
const inTransaction = Symbol("vouch.inTransaction");
const committed = Symbol("vouch.committed");
type VouchClient = pg.PoolClient & { [heldBegin]?: string; [inTransaction]?: boolean; [committed]?: boolean };

const nothingRan = (command: string) => ({ command: command.toUpperCase(), rowCount: null, oid: 0, rows: [], fields: [] });

/** The parts of pg's Query and Connection (internals its types do not describe) that CarriedQuery uses. */
interface PgConnection {
  parse(m: { text: string; name: string; types: unknown[] }): void;
  bind(m: { portal: string; statement: string; values: unknown[] }): void;
  execute(m: { portal: string; rows?: number }): void;
  sync(): void;
  submittedNamedStatements: Record<string, string>;
}
interface PgQueryInternals {
  text: string;
  name?: string;
  types?: unknown[];
  portal: string;
  hasBeenParsed(connection: PgConnection): boolean;
  requiresPreparation(): boolean;
  prepare(connection: PgConnection): void;
  submit(connection: PgConnection): Error | null;
  _getRows(connection: PgConnection, rows?: number): void;
  handleCommandComplete(msg: unknown, connection: PgConnection): void;
}
type QueryCallback = (err: Error | undefined, result: pg.QueryResult) => void;
const PgQuery = pg.Query as unknown as new (config: pg.QueryConfig, values: undefined, callback: QueryCallback) => PgQueryInternals;

/** Sends BEGIN/COMMIT by the extended protocol, without a Sync of their own. */
function sendBare(connection: PgConnection, text: string) {
  connection.parse({ text, name: "", types: [] });
  connection.bind({ portal: "", statement: "", values: [] });
  connection.execute({ portal: "" });
}

/**
 * A statement sent with `begin` ahead of it and/or COMMIT behind it in the same protocol
 * message, whose caller sees its own result only (BEGIN's answer is always the first
 * CommandComplete, COMMIT's the one after the statement's).
 */
class CarriedQuery extends PgQuery {
  private beginAnswered = false;
  private ownAnswered = false;
  constructor(
    private readonly begin: string | undefined,
    /** Only for a single statement by the extended protocol (see shapeQueries). */
    private readonly commits: boolean,
    config: pg.QueryConfig,
    callback: QueryCallback,
  ) {
    super(config, undefined, callback);
  }

  // Extended protocol (the statement has parameters, or a name): Parse/Bind/Execute of BEGIN,
  // then the statement's own Parse/Bind/Describe/Execute, COMMIT's, and one Sync, written
  // together (pg corks the stream). A named statement not yet parsed on this session is
  // parsed first, ahead of BEGIN: pg takes the first ParseComplete for the named statement's,
  // so it must be that one (if it fails, Postgres skips the rest, and pg parses it next time).
  override prepare(connection: PgConnection) {
    if (this.name && !this.hasBeenParsed(connection)) {
      connection.parse({ text: this.text, name: this.name, types: this.types ?? [] });
      connection.submittedNamedStatements[this.name] = this.text;
    }
    if (this.begin !== undefined) sendBare(connection, this.begin);
    super.prepare(connection);
  }

  override _getRows(connection: PgConnection, rows?: number) {
    if (!this.commits) return super._getRows(connection, rows);
    connection.execute({ portal: this.portal });
    sendBare(connection, "COMMIT");
    connection.sync();
  }

  // Simple protocol (no parameters): BEGIN and the statement(s) in one Query message.
  override submit(connection: PgConnection) {
    if (this.begin !== undefined && !this.requiresPreparation()) this.text = `${this.begin}; ${this.text}`;
    return super.submit(connection);
  }

  override handleCommandComplete(msg: unknown, connection: PgConnection) {
    if (this.begin !== undefined && !this.beginAnswered) {
      this.beginAnswered = true;
      return;
    }
    if (this.commits && this.ownAnswered) return;
    this.ownAnswered = true;
    super.handleCommandComplete(msg, connection);
  }
}

/**
 * kysely hands pg the SQL text of every statement: a `prepared` text becomes a named query,
 * `begin` is held for the transaction's first statement, and a `lastInTransaction` statement
 * takes COMMIT along (see above).
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
    if (BEGIN.test(text) && !values?.length && this[heldBegin] === undefined && !this[inTransaction]) {
      this[heldBegin] = text;
      this[inTransaction] = true;
      return Promise.resolve(nothingRan("BEGIN"));
    }
    if (ENDS_TRANSACTION.test(text)) {
      const settled = this[heldBegin] !== undefined || this[committed];
      const wasCommitted = this[committed];
      this[heldBegin] = undefined;
      this[inTransaction] = false;
      this[committed] = false;
      // Nothing was sent yet, or the last statement took COMMIT along (a ROLLBACK then has
      // nothing left to undo: lastInTransaction's contract is that nothing may fail after it).
      if (settled) return Promise.resolve(nothingRan(wasCommitted && COMMIT.test(text) ? "COMMIT" : text));
      return query.call(this, text);
    }
    if (this[committed]) {
      return Promise.reject(new Error("a statement after its transaction's lastInTransaction statement: the transaction is already committed"));
    }
    const marks = marksOf(text);
    const config: pg.QueryConfig = marks.prepared ? { name: statementName(text), text, values } : { text, values };
    const begin = this[heldBegin];
    // COMMIT is carried only in a transaction begun through kysely, and behind exactly one
    // statement (the extended protocol: parameters or a name), whose answer is the one before COMMIT's.
    const commits = marks.commits && this[inTransaction] === true && (marks.prepared || Boolean(values?.length));
    if (begin === undefined && !commits) return query.call(this, config);
    this[heldBegin] = undefined;
    return new Promise((resolve, reject) => {
      query.call(
        this,
        new CarriedQuery(begin, commits, config, (err, res) => {
          if (err) return reject(err);
          if (commits) this[committed] = true;
          resolve(res);
        }),
      );
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
