// Voucher service benchmark: validate, redeem, generation and assign, each a row of
// `npm run bench`'s table with its ratio to the ceiling measured in the same run
// (bench/ceilings.ts):
//
//   validate    ValidateVoucher at 64 concurrent gRPC clients (each its own user and code)
//               ÷ the empty authenticated rpc on the same runtime, measured half right
//               before and half right after validate (goal ≥ 0.5);
//   redeem      RedeemVoucher at 32 concurrent clients (each its own user and multi-use codes,
//               a fresh request_id per call) ÷ Postgres' raw autocommitted conditional
//               UPDATE at 32 connections (goal ≥ 0.4);
//   generation  a BENCH_GENERATE-code (1,000,000) GenerateCodes job, from the rpc until the
//               job is SUCCEEDED, in codes/s ÷ one raw COPY of as many pre-drawn codes into
//               the same `codes` table (goal ≥ 0.5);
//   assign      AssignVoucher of a random free code (SKIP LOCKED) of the 1,000,000-code book
//               to a new user per call, with a request_id, at 32 concurrent ÷ the raw
//               conditional UPDATE (the issue sets no goal).
//
// The voucher service runs as its own process on loopback, in a database, Redis prefix and
// stream of the bench's own (removed afterwards). Run: `npx tsx bench/voucher.ts`
// (BENCH_SECONDS=8 per phase, BENCH_GENERATE=1000000; --quick), or `npm run bench -- voucher`
// for the ratios (it measures the ceilings first).
import { randomUUID } from "node:crypto";
import { createClient, type Client } from "@connectrpc/connect";
import { createServiceTransport } from "../services/kit/grpc-transport.js";
import { GenerationJobState, VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { emptyGrpcLoad } from "./ceilings.js";
import { benchEnvironment, cpuMeter, cpuMsPer, isPostgres, isRedis, load, mergeLoads, options, report, row, sampleRss, sumCpu, type CpuSeconds } from "./lib/harness.js";

const SECONDS = options.seconds(8);
const VALIDATE_CONCURRENCY = 64;
const REDEEM_CONCURRENCY = 32;
const ASSIGN_CONCURRENCY = 32;
const GENERATE_COUNT = options.generate;

const env = await benchEnvironment("voucher");
try {
  const voucher = await env.start("services/voucher/main.ts", {
    env: { VOUCHER_VALIDATE_RATE_PER_MINUTE: "100000000", VOUCHER_VALIDATE_BURST: "100000" },
  });
  const client: Client<typeof VoucherService> = createClient(VoucherService, createServiceTransport({ baseUrl: voucher.url }));
  const admin = await env.auth("bench-admin", ["ADMIN"]);

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
      return { code: v.code, auth: await env.auth(user) };
    }),
  );
  const redeemers = await Promise.all(
    Array.from({ length: REDEEM_CONCURRENCY }, async (_, i) => {
      const user = `redeemer-${i}`;
      const mine = [];
      for (let k = 0; k < 4; k++) mine.push((await client.assignVoucher({ bookId, userId: user, code: codes[VALIDATE_CONCURRENCY + i * 4 + k] }, admin)).voucher!.code);
      return { codes: mine, auth: await env.auth(user) };
    }),
  );
  const amount = { minorUnits: 10_000n, currencyCode: "USD" };
  const via = (n: number) => `gRPC h2, ${n} concurrent`;

  // validate, bracketed by the empty rpc: half of its run right before, half right after
  const validate = async (w: number) => {
    const r = await client.validateVoucher({ code: validators[w].code, orderAmount: amount }, validators[w].auth);
    if (!r.valid) throw new Error(`validate said invalid: ${r.reason}`);
  };
  const empty = await emptyGrpcLoad(env, VALIDATE_CONCURRENCY);
  await load({ concurrency: VALIDATE_CONCURRENCY, seconds: 1 }, validate);
  // CPU per call of every process on the path, to say where validate's extra cost goes.
  const meter = cpuMeter({ service: voucher.child.pid!, "empty server": empty.pid, postgres: isPostgres, redis: isRedis, bench: process.pid });
  const emptyBefore = await meter.measure(() => empty.run(SECONDS / 2));
  let rss = sampleRss([voucher.child.pid]);
  const validateRun = await meter.measure(() => load({ concurrency: VALIDATE_CONCURRENCY, seconds: SECONDS }, validate));
  const validateRss = rss.stop();
  const emptyAfter = await meter.measure(() => empty.run(SECONDS / 2));
  const emptyCalls = emptyBefore.result.ok + emptyAfter.result.ok;
  const emptyCpu = sumCpu([emptyBefore.cpu, emptyAfter.cpu]);
  const msPerCall = (cpu: CpuSeconds, calls: number, skip: string) => cpuMsPer(cpu, calls, 2, [skip]);
  const totalPerCall = (cpu: CpuSeconds, calls: number) => Object.values(cpu).reduce((a, b) => a + b, 0) / Math.max(1, calls);
  report(
    row("validate.empty-rpc", "empty rpc, bracketing validate", via(VALIDATE_CONCURRENCY), mergeLoads([emptyBefore.result, emptyAfter.result]), {
      unit: "calls/s",
      notes: [
        `half before validate ${Math.round(emptyBefore.result.rate)} calls/s, half after it ${Math.round(emptyAfter.result.rate)} calls/s (the rate is the two combined)`,
        `CPU ms per call: ${msPerCall(emptyCpu, emptyCalls, "service")}`,
      ],
    }),
  );
  report(
    row("validate", "validate", via(VALIDATE_CONCURRENCY), validateRun.result, {
      unit: "calls/s",
      rssMiB: validateRss,
      vs: "validate.empty-rpc",
      goal: 0.5,
      notes: [
        `CPU ms per call: ${msPerCall(validateRun.cpu, validateRun.result.ok, "empty server")}`,
        `same ratio from CPU time: ${(totalPerCall(emptyCpu, emptyCalls) / totalPerCall(validateRun.cpu, validateRun.result.ok)).toFixed(2)}`,
      ],
    }),
  );

  // redeem
  const redeem = (w: number, i: number) =>
    client.redeemVoucher({ code: redeemers[w].codes[i % 4], orderReference: `o-${w}-${i}`, orderAmount: amount, requestId: randomUUID() }, redeemers[w].auth);
  await load({ concurrency: REDEEM_CONCURRENCY, seconds: 1 }, redeem);
  rss = sampleRss([voucher.child.pid]);
  const redeemRun = await meter.measure(() => load({ concurrency: REDEEM_CONCURRENCY, seconds: SECONDS }, redeem));
  report(
    row("redeem", "redeem", `${via(REDEEM_CONCURRENCY)}, fresh request_id each`, redeemRun.result, {
      unit: "tx/s",
      rssMiB: rss.stop(),
      vs: "ceiling.pg-update",
      goal: 0.4,
      notes: [`CPU ms per call: ${msPerCall(redeemRun.cpu, redeemRun.result.ok, "empty server")}`],
    }),
  );

  // generation: the rpc, the event, the worker's COPY batches, until the job is SUCCEEDED
  rss = sampleRss([voucher.child.pid]);
  const genStarted = performance.now();
  const { generationJob } = await client.generateCodes({ bookId, codeCount: GENERATE_COUNT, requestId: randomUUID() }, admin);
  let job = generationJob!;
  while (job.state !== GenerationJobState.SUCCEEDED && job.state !== GenerationJobState.FAILED) {
    await new Promise((r) => setTimeout(r, 100));
    job = (await client.getGenerationJob({ generationJobId: job.id }, admin)).generationJob!;
    if (performance.now() - genStarted > 300_000) throw new Error("generation took longer than 5 minutes");
  }
  const genSeconds = (performance.now() - genStarted) / 1000;
  const succeeded = job.state === GenerationJobState.SUCCEEDED;
  report({
    id: "generation",
    path: `generation (${GENERATE_COUNT.toLocaleString("en-US")} codes)`,
    via: "GenerateCodes rpc → job SUCCEEDED",
    rate: succeeded ? GENERATE_COUNT / genSeconds : 0,
    unit: "codes/s",
    ok: succeeded ? GENERATE_COUNT : 0,
    errors: succeeded ? 0 : 1,
    rssMiB: rss.stop(),
    vs: "ceiling.pg-copy",
    goal: 0.5,
    notes: [`job took ${genSeconds.toFixed(1)} s, ${job.collisionCount} collisions${succeeded ? "" : `; FAILED: ${job.failureMessage}`}`],
  });
  if (!succeeded) process.exitCode = 1;

  // assign: a random free code of the (now large) book to a new user per call
  const assign = (w: number, i: number) => client.assignVoucher({ bookId, userId: `assignee-${i}`, requestId: randomUUID() }, admin);
  await load({ concurrency: ASSIGN_CONCURRENCY, seconds: 1 }, (w, i) => client.assignVoucher({ bookId, userId: `warm-assignee-${i}`, requestId: randomUUID() }, admin));
  rss = sampleRss([voucher.child.pid]);
  const assignRun = await load({ concurrency: ASSIGN_CONCURRENCY, seconds: SECONDS }, assign);
  report(row("assign", "assign", `${via(ASSIGN_CONCURRENCY)}, random free code, new user each`, assignRun, { unit: "tx/s", rssMiB: rss.stop(), vs: "ceiling.pg-update" }));
} finally {
  await env.dispose();
}
process.exit(process.exitCode ?? 0);
