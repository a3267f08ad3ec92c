// The machine's ceilings, measured in the same run as the paths they bound: an empty
// authenticated rpc on our runtime (gRPC over HTTP/2 and Connect JSON over HTTP/1.1),
// Postgres' raw conditional UPDATE and a raw COPY into the voucher service's own `codes`
// table, Redis GET and INCR, JetStream publish + consume, and argon2id verification with
// auth's parameters. `npm run bench` runs this first; every path row names the ceiling (its
// `vs` id) its rate is divided by. The absolute numbers move with the machine's load, the
// ratios much less.
//
//   npx tsx bench/ceilings.ts        (BENCH_SECONDS=5 per ceiling, BENCH_GENERATE=1000000 rows COPYed; --quick)
import { randomBytes, randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createClient } from "@connectrpc/connect";
import { createServiceTransport } from "../services/kit/grpc-transport.js";
import { AckPolicy, DeliverPolicy } from "nats";
import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { createDb } from "../services/kit/db.js";
import { connectNats } from "../services/kit/events/index.js";
import { runMigrations } from "../services/kit/migrate.js";
import { createLogger } from "../services/kit/log.js";
import { createRedis } from "../services/kit/redis.js";
import { hashPassword, verifyPassword } from "../services/auth/passwords.js";
import { CodeDrawer, parsePattern } from "../services/voucher/domain/pattern.js";
import { voucherMigrations } from "../services/voucher/store/schema.js";
import { newIds } from "../services/voucher/store/ids.js";
import { benchEnvironment, connectJsonCaller, load, options, report, row, sampleRss, type BenchEnvironment, type BenchRow, type LoadResult } from "./lib/harness.js";

const log = createLogger("bench-ceilings", "silent");

/** The empty rpc's request: a customer validating a code, which the empty handler never reads. */
const EMPTY_REQUEST = { code: "BENCH-000001", orderAmount: { minorUnits: 10_000n, currencyCode: "USD" } };

/**
 * The empty rpc's server (`bench/empty-server.ts`, its own process) and a gRPC load against
 * it that can be run more than once: bench/voucher.ts runs it right before and right after
 * validate, so that ratio does not carry the drift of the minutes between them.
 */
export async function emptyGrpcLoad(env: BenchEnvironment, concurrency: number): Promise<{ pid: number; run(seconds: number): Promise<LoadResult> }> {
  const server = await env.start("bench/empty-server.ts");
  const auth = await env.auth("bench-customer");
  const client = createClient(VoucherService, createServiceTransport({ baseUrl: server.url }));
  await load({ concurrency, seconds: 1 }, () => client.validateVoucher(EMPTY_REQUEST, auth));
  return { pid: server.child.pid!, run: (seconds) => load({ concurrency, seconds }, () => client.validateVoucher(EMPTY_REQUEST, auth)) };
}

/**
 * An authenticated rpc (ValidateVoucher, a customer's token) whose handler returns at once, on
 * our runtime, over gRPC (HTTP/2, one connection) or Connect JSON (HTTP/1.1, a keep-alive
 * socket per loop).
 */
export async function emptyRpc(env: BenchEnvironment, protocol: "grpc" | "connect", concurrency: number, seconds: number): Promise<BenchRow> {
  if (protocol === "grpc") {
    const empty = await emptyGrpcLoad(env, concurrency);
    const rss = sampleRss([empty.pid]);
    const r = await empty.run(seconds);
    return row("ceiling.empty-rpc.grpc", "ceiling: empty rpc", `gRPC h2, ${concurrency} concurrent`, r, { unit: "calls/s", rssMiB: rss.stop() });
  }
  const server = await env.start("bench/empty-server.ts");
  const auth = await env.auth("bench-customer");
  const rss = sampleRss([server.child.pid]);
  const caller = connectJsonCaller(server.url, concurrency);
  const procedure = "vouch.voucher.v1.VoucherService/ValidateVoucher";
  const body = { code: EMPTY_REQUEST.code, orderAmount: { minorUnits: "10000", currencyCode: "USD" } };
  try {
    await load({ concurrency, seconds: 1 }, () => caller.call(procedure, body, auth.headers));
    const r = await load({ concurrency, seconds }, () => caller.call(procedure, body, auth.headers));
    return row("ceiling.empty-rpc.connect", "ceiling: empty rpc", `Connect JSON h1.1, ${concurrency} concurrent`, r, { unit: "calls/s", rssMiB: rss.stop() });
  } finally {
    caller.close();
  }
}

/** Autocommitted `UPDATE … SET used = used + 1 WHERE id = $1 AND used < quota`, one row per connection. */
export async function pgConditionalUpdate(databaseUrl: string, concurrency: number, seconds: number): Promise<BenchRow> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: concurrency });
  try {
    await pool.query("CREATE TABLE IF NOT EXISTS bench_ceiling_slots (id uuid PRIMARY KEY, used int NOT NULL DEFAULT 0, quota int NOT NULL)");
    const ids = Array.from({ length: concurrency }, () => randomUUID());
    await pool.query("INSERT INTO bench_ceiling_slots (id, quota) SELECT unnest($1::uuid[]), 2000000000", [ids]);
    const r = await load({ concurrency, seconds }, async (w) => {
      const res = await pool.query("UPDATE bench_ceiling_slots SET used = used + 1 WHERE id = $1 AND used < quota RETURNING used", [ids[w]]);
      if (res.rowCount !== 1) throw new Error("conditional update changed no row");
    });
    return row("ceiling.pg-update", "ceiling: pg conditional UPDATE", `pg, ${concurrency} connections, autocommit`, r, { unit: "tx/s" });
  } finally {
    await pool.query("DROP TABLE IF EXISTS bench_ceiling_slots").catch(() => {});
    await pool.end();
  }
}

/**
 * One COPY of `count` pre-drawn random codes into the voucher service's own `codes` table
 * (its migrations applied to this bench's database: the same columns, indexes and fill
 * factor a generation job inserts into), timed from the first row sent to the commit.
 */
export async function pgCopy(databaseUrl: string, count: number): Promise<BenchRow> {
  const db = createDb({ url: databaseUrl, schema: "voucher", applicationName: "bench-ceiling" });
  await runMigrations(db, { schema: "voucher", migrations: voucherMigrations, log });
  await db.destroy();
  const client = new pg.Client({ connectionString: databaseUrl, options: "-c search_path=voucher" });
  await client.connect();
  try {
    await client.query("INSERT INTO books (id, name, discount_percent_bp, uses_per_code, code_pattern, state) VALUES ('ceiling', 'ceiling', 1000, 1, 'C-*{12}', 'draft')");
    const codes = new CodeDrawer(parsePattern("C-*{12}")).drawDistinct(count);
    const ids = newIds(count);
    const started = performance.now();
    await pipeline(
      Readable.from(
        (function* () {
          for (let i = 0; i < count; i += 2_000) {
            let chunk = "";
            for (let k = i; k < Math.min(i + 2_000, count); k++) chunk += `${ids[k]}\tceiling\t${codes[k]}\t1\n`;
            yield chunk;
          }
        })(),
      ),
      client.query(copyFrom("COPY codes (id, book_id, code, source) FROM STDIN")),
    );
    const seconds = (performance.now() - started) / 1000;
    return { id: "ceiling.pg-copy", path: "ceiling: pg COPY", via: `one COPY of ${count.toLocaleString("en-US")} codes into voucher.codes`, rate: count / seconds, unit: "rows/s", ok: count, errors: 0 };
  } finally {
    await client.query("DROP SCHEMA voucher CASCADE").catch(() => {});
    await client.end();
  }
}

/** Redis GET or INCR on one key per loop, no pipelining (what a rate-limit or cache hit costs). */
export async function redisOp(redisPrefix: string, op: "GET" | "INCR", concurrency: number, seconds: number): Promise<BenchRow> {
  const redis = createRedis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", { keyPrefix: redisPrefix, log, name: "bench-ceiling" });
  try {
    const keys = Array.from({ length: concurrency }, (_, i) => `ceiling:${i}`);
    await Promise.all(keys.map((k) => redis.set(k, "0")));
    const r = await load({ concurrency, seconds }, (w) => (op === "GET" ? redis.get(keys[w]) : redis.incr(keys[w])));
    await redis.del(...keys);
    return row(`ceiling.redis-${op.toLowerCase()}`, `ceiling: redis ${op}`, `ioredis, ${concurrency} concurrent`, r);
  } finally {
    await redis.quit();
  }
}

/** `count` JetStream publishes (each awaiting its ack, `concurrency` in flight) consumed by one durable consumer. */
export async function jetstreamPublishConsume(env: BenchEnvironment, count: number, concurrency: number): Promise<BenchRow> {
  const nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", log, { name: "bench-ceiling" });
  const stream = `${env.stream}_CEILING`;
  const subject = `${env.subjectPrefix}.ceiling.msg`;
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.add({ name: stream, subjects: [subject] });
    await jsm.consumers.add(stream, { durable_name: "ceiling", ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });
    const js = nc.jetstream();
    const consumer = await js.consumers.get(stream, "ceiling");
    let consumed = 0;
    const started = performance.now();
    const allConsumed = (async () => {
      const messages = await consumer.consume({ max_messages: 1000 });
      for await (const m of messages) {
        m.ack();
        if (++consumed >= count) break;
      }
    })();
    const payload = randomBytes(64);
    const r = await load({ concurrency, seconds: 120, maxCalls: count }, () => js.publish(subject, payload));
    await allConsumed;
    const seconds = (performance.now() - started) / 1000;
    return { ...row("ceiling.jetstream", "ceiling: JetStream publish+consume", `${concurrency} publishes in flight, 1 consumer`, r), rate: count / seconds, unit: "msgs/s" };
  } finally {
    await jsm.streams.delete(stream).catch(() => {});
    await nc.close();
  }
}

/** argon2id verifications with auth's own parameters, `concurrency` in flight (libuv pool). */
export async function argon2Verify(concurrency: number, seconds: number): Promise<BenchRow> {
  const hash = await hashPassword("correct horse battery staple");
  const r = await load({ concurrency, seconds }, async () => {
    if (!(await verifyPassword(hash, "correct horse battery staple"))) throw new Error("verification failed");
  });
  return row("ceiling.argon2", "ceiling: argon2id verify", `${concurrency} in flight, libuv pool ${process.env.UV_THREADPOOL_SIZE ?? 4}`, r, { unit: "verifies/s" });
}

export async function measureCeilings(env: BenchEnvironment, seconds: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const add = (r: BenchRow) => (report(r), rows.push(r));
  add(await emptyRpc(env, "grpc", 64, seconds));
  add(await emptyRpc(env, "connect", 64, seconds));
  add(await pgConditionalUpdate(env.db.url, 32, seconds));
  add(await pgCopy(env.db.url, options.generate));
  add(await redisOp(env.redisPrefix, "GET", 32, seconds));
  add(await redisOp(env.redisPrefix, "INCR", 32, seconds));
  add(await jetstreamPublishConsume(env, options.quick ? 10_000 : 50_000, 256));
  add(await argon2Verify(32, seconds));
  return rows;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const env = await benchEnvironment("ceilings");
  try {
    await measureCeilings(env, options.seconds(5));
  } finally {
    await env.dispose();
  }
  process.exit(0);
}
