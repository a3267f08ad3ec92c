// Voucher service benchmark: three ratios to this machine's ceilings, measured in one run.
//
//   1. ValidateVoucher rps at 64 concurrent clients ÷ an empty rpc on the same runtime
//      (same listener, interceptors, token check; a handler that returns at once). Goal ≥ 0.5.
//   2. RedeemVoucher tps ÷ the raw conditional UPDATE rate of Postgres (a direct pg loop,
//      same concurrency, same table, one autocommitted UPDATE … WHERE use_count < max). Goal ≥ 0.4.
//   3. Codes generated per second by a 1,000,000-code job ÷ a raw COPY of 1,000,000 random
//      strings into the same table. Goal ≥ 0.5.
//
// Everything runs on loopback: the voucher service and the empty server are child
// processes (so the load generator does not share their event loop), against the local
// Postgres, Redis and NATS, in a database, Redis prefix and stream of the bench's own,
// all removed at the end. Run: `npx tsx bench/voucher.ts` (BENCH_SECONDS=8 per phase).
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";
import { GenerationJobState, VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { loadConfig } from "../services/kit/config.js";
import { serve, startPlatform } from "../services/kit/platform.js";
import { connectNats } from "../services/kit/events/index.js";
import { createLogger } from "../services/kit/log.js";
import { createRedis } from "../services/kit/redis.js";
import { createTestDatabase, createTestTokens, deleteStream, freePort, testEventNames, uniqueSuffix } from "../services/kit/testing.js";
import { CodeDrawer, parsePattern } from "../services/voucher/domain/pattern.js";
import { newIds } from "../services/voucher/store/ids.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const VALIDATE_CONCURRENCY = 64;
const REDEEM_CONCURRENCY = 32;
const GENERATE_COUNT = Number(process.env.BENCH_GENERATE ?? 1_000_000);
const ISSUER = "https://auth.bench";
const AUDIENCE = "vouch-bench";

// ── the empty server: `tsx bench/voucher.ts --serve-empty` ───────────────────────────────
if (process.argv.includes("--serve-empty")) {
  const platform = await startPlatform(loadConfig("voucher"), {});
  await serve(platform, { services: [VoucherService], routes: (router) => router.service(VoucherService, { validateVoucher: () => ({}) }) });
  await new Promise(() => {});
}

const log = createLogger("bench-voucher", "silent");
type Auth = { headers: { authorization: string } };

async function waitReady(url: string, child: ChildProcess) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${url}: process exited with ${child.exitCode}`);
    const ok = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${url} not ready after 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function rssMb(pid: number | undefined): number {
  if (!pid) return NaN;
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/** Runs `concurrency` loops of `call` for `seconds`; returns rate, latency percentiles and errors. */
async function load(concurrency: number, seconds: number, call: (worker: number, i: number) => Promise<unknown>) {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: unknown;
  const end = performance.now() + seconds * 1000;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      for (let i = 0; performance.now() < end; i++) {
        const t = performance.now();
        try {
          await call(w, i);
          latencies.push(performance.now() - t);
        } catch (err) {
          errors++;
          firstError ??= err;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  if (firstError) console.error("first error:", String(firstError));
  return { rate: latencies.length / elapsed, p50: pct(latencies, 50), p99: pct(latencies, 99), ok: latencies.length, errors };
}

async function main() {
  const db = await createTestDatabase("bench_voucher");
  const { stream, subjectPrefix } = testEventNames("bench_voucher");
  const redisPrefix = `vouch-bench:${uniqueSuffix()}:`;
  const children: ChildProcess[] = [];
  const signer = await createTestTokens({ issuer: ISSUER, audience: AUDIENCE, kid: "bench", expiresIn: "30m" });
  const jwks = http.createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [signer.jwk] })));
  await new Promise<void>((r) => jwks.listen(0, "127.0.0.1", r));
  const jwksUrl = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks.json`;
  const auth = async (sub: string, roles?: string[]): Promise<Auth> => ({ headers: { authorization: `Bearer ${await signer.sign(sub, roles)}` } });

  async function start(args: string[], port: number) {
    const env = {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: db.url,
      REDIS_KEY_PREFIX: redisPrefix,
      NATS_STREAM: stream,
      NATS_SUBJECT_PREFIX: subjectPrefix,
      JWKS_URL: jwksUrl,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
      LOG_LEVEL: "warn",
      VOUCHER_VALIDATE_RATE_PER_MINUTE: "100000000",
      VOUCHER_VALIDATE_BURST: "100000",
    };
    const child = spawn(process.execPath, ["--import", "tsx", ...args], { env, stdio: ["ignore", "inherit", "inherit"] });
    children.push(child);
    const url = `http://127.0.0.1:${port}`;
    await waitReady(url, child);
    return { url, child };
  }

  const results: string[] = [];
  try {
    const voucher = await start(["services/voucher/main.ts"], await freePort());
    const empty = await start(["bench/voucher.ts", "--serve-empty"], await freePort());
    const client: Client<typeof VoucherService> = createClient(VoucherService, createGrpcTransport({ baseUrl: voucher.url }));
    const emptyClient: Client<typeof VoucherService> = createClient(VoucherService, createGrpcTransport({ baseUrl: empty.url }));
    const admin = await auth("bench-admin", ["ADMIN"]);

    // Setup: a book of multi-use codes, one per validating user and four per redeeming one.
    const { book } = await client.createBook({ book: { name: "bench", discount: { kind: { case: "percentOff", value: { basisPoints: 1000 } } }, codePattern: "B-*{12}", usesPerCode: 1000 } }, admin);
    const bookId = book!.id;
    const codes = Array.from({ length: VALIDATE_CONCURRENCY + REDEEM_CONCURRENCY * 4 }, (_, i) => `BENCH-${String(i).padStart(6, "0")}`);
    await client.importCodes({ bookId, codes }, admin);
    await client.activateBook({ bookId }, admin);
    const validators = await Promise.all(
      Array.from({ length: VALIDATE_CONCURRENCY }, async (_, i) => {
        const user = `validator-${i}`;
        const v = (await client.assignVoucher({ bookId, userId: user, code: codes[i] }, admin)).voucher!;
        return { code: v.code, auth: await auth(user) };
      }),
    );
    const redeemers = await Promise.all(
      Array.from({ length: REDEEM_CONCURRENCY }, async (_, i) => {
        const user = `redeemer-${i}`;
        const mine = [];
        for (let k = 0; k < 4; k++) mine.push((await client.assignVoucher({ bookId, userId: user, code: codes[VALIDATE_CONCURRENCY + i * 4 + k] }, admin)).voucher!.code);
        return { codes: mine, auth: await auth(user) };
      }),
    );
    const amount = { minorUnits: 10_000n, currencyCode: "USD" };

    // 1. Validate vs the empty rpc (warm both up first).
    await load(VALIDATE_CONCURRENCY, 1, (w) => emptyClient.validateVoucher({ code: validators[w].code, orderAmount: amount }, validators[w].auth));
    await load(VALIDATE_CONCURRENCY, 1, (w) => client.validateVoucher({ code: validators[w].code, orderAmount: amount }, validators[w].auth));
    const emptyRun = await load(VALIDATE_CONCURRENCY, SECONDS, (w) => emptyClient.validateVoucher({ code: validators[w].code, orderAmount: amount }, validators[w].auth));
    const validateRun = await load(VALIDATE_CONCURRENCY, SECONDS, async (w) => {
      const r = await client.validateVoucher({ code: validators[w].code, orderAmount: amount }, validators[w].auth);
      if (!r.valid) throw new Error(`validate said invalid: ${r.reason}`);
    });

    // 2. Redeem vs a raw conditional UPDATE loop.
    const redeemRun = await load(REDEEM_CONCURRENCY, SECONDS, (w, i) =>
      client.redeemVoucher({ code: redeemers[w].codes[i % 4], orderReference: `o-${w}-${i}`, orderAmount: amount, requestId: randomUUID() }, redeemers[w].auth),
    );
    const pool = new pg.Pool({ connectionString: db.url, max: REDEEM_CONCURRENCY, options: "-c search_path=voucher" });
    const { rows: rawRows } = await pool.query<{ id: string }>("SELECT id FROM codes WHERE book_id = $1 ORDER BY code LIMIT $2", [bookId, REDEEM_CONCURRENCY]);
    await pool.query("UPDATE codes SET use_count = 0 WHERE id = ANY($1)", [rawRows.map((r) => r.id)]);
    const rawRun = await load(REDEEM_CONCURRENCY, SECONDS, async (w) => {
      const r = await pool.query("UPDATE codes SET use_count = use_count + 1 WHERE id = $1 AND use_count < 2000000000 RETURNING use_count", [rawRows[w].id]);
      if (r.rowCount !== 1) throw new Error("raw update changed no row");
    });
    const voucherRss = rssMb(voucher.child.pid);

    // 3. Raw COPY of random strings into the same table, then the generation job.
    const { book: copyBook } = await client.createBook({ book: { name: "bench-copy", discount: { kind: { case: "percentOff", value: { basisPoints: 1000 } } }, codePattern: "C-*{12}" } }, admin);
    const drawer = new CodeDrawer(parsePattern("C-*{12}"));
    const copyCodes = drawer.drawDistinct(GENERATE_COUNT);
    const copyIds = newIds(GENERATE_COUNT);
    const copyClient = await pool.connect();
    const copyStarted = performance.now();
    await pipeline(
      Readable.from(
        (function* () {
          for (let i = 0; i < copyCodes.length; i += 2_000) {
            let chunk = "";
            for (let k = i; k < Math.min(i + 2_000, copyCodes.length); k++) chunk += `${copyIds[k]}\t${copyBook!.id}\t${copyCodes[k]}\t1\n`;
            yield chunk;
          }
        })(),
      ),
      copyClient.query(copyFrom("COPY codes (id, book_id, code, source) FROM STDIN")),
    );
    const copySeconds = (performance.now() - copyStarted) / 1000;
    copyClient.release();
    await pool.query("ANALYZE codes");

    const genStarted = performance.now();
    const { generationJob } = await client.generateCodes({ bookId, codeCount: GENERATE_COUNT, requestId: randomUUID() }, admin);
    let job = generationJob!;
    while (job.state !== GenerationJobState.SUCCEEDED && job.state !== GenerationJobState.FAILED) {
      await new Promise((r) => setTimeout(r, 100));
      job = (await client.getGenerationJob({ generationJobId: job.id }, admin)).generationJob!;
      if (performance.now() - genStarted > 300_000) throw new Error("generation took longer than 5 minutes");
    }
    const genSeconds = (performance.now() - genStarted) / 1000;
    if (job.state !== GenerationJobState.SUCCEEDED) throw new Error(`generation failed: ${job.failureMessage}`);
    const generatedRss = rssMb(voucher.child.pid);
    await pool.end();

    const f = (n: number, d = 0) => n.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });
    const ms = (n: number) => `${n.toFixed(2)} ms`;
    results.push(
      `voucher bench — ${new Date().toISOString()}, node ${process.version}, ${SECONDS} s per phase, loopback`,
      "",
      `| path | rate | p50 | p99 | ok | errors |`,
      `|---|---|---|---|---|---|`,
      `| empty rpc (gRPC, 64 concurrent) | ${f(emptyRun.rate)} rps | ${ms(emptyRun.p50)} | ${ms(emptyRun.p99)} | ${emptyRun.ok} | ${emptyRun.errors} |`,
      `| ValidateVoucher (gRPC, 64 concurrent) | ${f(validateRun.rate)} rps | ${ms(validateRun.p50)} | ${ms(validateRun.p99)} | ${validateRun.ok} | ${validateRun.errors} |`,
      `| raw conditional UPDATE (pg, 32 connections) | ${f(rawRun.rate)} tps | ${ms(rawRun.p50)} | ${ms(rawRun.p99)} | ${rawRun.ok} | ${rawRun.errors} |`,
      `| RedeemVoucher (gRPC, 32 concurrent) | ${f(redeemRun.rate)} tps | ${ms(redeemRun.p50)} | ${ms(redeemRun.p99)} | ${redeemRun.ok} | ${redeemRun.errors} |`,
      `| raw COPY of ${f(GENERATE_COUNT)} random codes | ${f(GENERATE_COUNT / copySeconds)} codes/s | | | ${f(copySeconds, 1)} s | |`,
      `| generation job of ${f(GENERATE_COUNT)} codes (rpc → SUCCEEDED) | ${f(GENERATE_COUNT / genSeconds)} codes/s | | | ${f(genSeconds, 1)} s | collisions ${job.collisionCount} |`,
      "",
      `Validate ÷ empty rpc:        ${(validateRun.rate / emptyRun.rate).toFixed(2)}  (goal ≥ 0.5)`,
      `Redeem ÷ raw UPDATE:         ${(redeemRun.rate / rawRun.rate).toFixed(2)}  (goal ≥ 0.4)`,
      `Generation ÷ raw COPY:       ${(GENERATE_COUNT / genSeconds / (GENERATE_COUNT / copySeconds)).toFixed(2)}  (goal ≥ 0.5)`,
      `voucher service RSS: ${f(voucherRss)} MB after validate/redeem, ${f(generatedRss)} MB after generation`,
    );
  } finally {
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : undefined)));
    jwks.close();
    const nc = await connectNats(process.env.NATS_URL ?? "nats://127.0.0.1:4222", log);
    await deleteStream(nc, stream).catch(() => {});
    await nc.close();
    const redis = createRedis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", { keyPrefix: "", log, name: "bench-cleanup" });
    const keys = await redis.keys(`${redisPrefix}*`);
    if (keys.length) await redis.del(...keys);
    await redis.quit();
    await db.drop();
  }
  console.log(results.join("\n"));
}

await main();
process.exit(0);
