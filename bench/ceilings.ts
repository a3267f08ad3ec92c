// The machine's ceilings, measured in the same run as the paths they bound: an empty rpc on
// our runtime (gRPC over HTTP/2 and Connect over HTTP/1.1), Postgres' raw conditional UPDATE
// and COPY, Redis GET and INCR, JetStream publish + consume, and one argon2id verification.
// A path's ratio to its ceiling says how much of the machine the service turns into useful
// work; the absolute numbers move with the machine's load, the ratios much less.
//
//   npx tsx bench/ceilings.ts        (BENCH_SECONDS=5 per ceiling)
import { randomBytes, randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AckPolicy, DeliverPolicy } from "nats";
import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { PromotionService } from "../gen/vouch/promotion/v1/promotion_pb.js";
import { connectNats } from "../services/kit/events/index.js";
import { createLogger } from "../services/kit/log.js";
import { createRedis } from "../services/kit/redis.js";
import { hashPassword, verifyPassword } from "../services/auth/passwords.js";
import { benchEnvironment, connectJsonCaller, load, report, row, rssMiB, type BenchEnvironment, type BenchRow } from "./lib/harness.js";

const log = createLogger("bench-ceilings", "silent");

/** An rpc whose handler returns at once, on our runtime, over gRPC (HTTP/2) or Connect JSON (HTTP/1.1). */
export async function emptyRpc(env: BenchEnvironment, protocol: "grpc" | "connect", concurrency: number, seconds: number): Promise<BenchRow> {
  const server = await env.start("bench/empty-server.ts");
  if (protocol === "grpc") {
    const client = createClient(PromotionService, createGrpcTransport({ baseUrl: server.url }));
    await load({ concurrency, seconds: 1 }, () => client.listActiveCampaigns({}));
    const r = await load({ concurrency, seconds }, () => client.listActiveCampaigns({}));
    return row("ceiling: empty rpc", `gRPC h2, ${concurrency} concurrent`, r, { rssMiB: rssMiB(server.child.pid) });
  }
  const caller = connectJsonCaller(server.url, concurrency);
  const procedure = "vouch.promotion.v1.PromotionService/ListActiveCampaigns";
  try {
    await load({ concurrency, seconds: 1 }, () => caller.call(procedure, {}));
    const r = await load({ concurrency, seconds }, () => caller.call(procedure, {}));
    return row("ceiling: empty rpc", `Connect JSON h1.1, ${concurrency} concurrent`, r, { rssMiB: rssMiB(server.child.pid) });
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
    return row("ceiling: pg conditional UPDATE", `pg, ${concurrency} connections`, r, { unit: "tx/s" });
  } finally {
    await pool.query("DROP TABLE IF EXISTS bench_ceiling_slots").catch(() => {});
    await pool.end();
  }
}

/** One COPY of `count` random 12-character codes into a table with a unique index on them. */
export async function pgCopy(databaseUrl: string, count: number): Promise<BenchRow> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query("CREATE TABLE IF NOT EXISTS bench_ceiling_codes (id uuid PRIMARY KEY, code text NOT NULL UNIQUE)");
    const alphabet = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    const started = performance.now();
    await pipeline(
      Readable.from(
        (function* () {
          for (let i = 0; i < count; i += 5_000) {
            let chunk = "";
            for (let k = i; k < Math.min(i + 5_000, count); k++) {
              const bytes = randomBytes(12);
              let code = "";
              for (const b of bytes) code += alphabet[b % alphabet.length];
              chunk += `${randomUUID()}\t${code}${k}\n`;
            }
            yield chunk;
          }
        })(),
      ),
      client.query(copyFrom("COPY bench_ceiling_codes (id, code) FROM STDIN")),
    );
    const seconds = (performance.now() - started) / 1000;
    return { path: "ceiling: pg COPY", via: `one COPY of ${count.toLocaleString("en-US")} codes`, rate: count / seconds, unit: "rows/s", ok: count, errors: 0 };
  } finally {
    await client.query("DROP TABLE IF EXISTS bench_ceiling_codes").catch(() => {});
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
    return row(`ceiling: redis ${op}`, `ioredis, ${concurrency} concurrent`, r);
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
    const r = await load({ concurrency, seconds: 600, maxCalls: count }, () => js.publish(subject, payload));
    await allConsumed;
    const seconds = (performance.now() - started) / 1000;
    return { ...row("ceiling: JetStream publish+consume", `${concurrency} publishes in flight, 1 consumer`, r), rate: count / seconds, unit: "msgs/s" };
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
  return row("ceiling: argon2id verify", `${concurrency} in flight`, r, { unit: "verifies/s" });
}

export async function measureCeilings(env: BenchEnvironment, seconds: number): Promise<BenchRow[]> {
  const rows = [
    await emptyRpc(env, "grpc", 64, seconds),
    await emptyRpc(env, "connect", 64, seconds),
    await pgConditionalUpdate(env.db.url, 32, seconds),
    await pgCopy(env.db.url, 1_000_000),
    await redisOp(env.redisPrefix, "GET", 32, seconds),
    await redisOp(env.redisPrefix, "INCR", 32, seconds),
    await jetstreamPublishConsume(env, 50_000, 256),
    await argon2Verify(32, seconds),
  ];
  return rows;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const env = await benchEnvironment("ceilings");
  try {
    for (const r of await measureCeilings(env, Number(process.env.BENCH_SECONDS ?? 5))) report(r);
  } finally {
    await env.dispose();
  }
  process.exit(0);
}
