// End-to-end throughput and correctness of the provider flow against provider-sim.
//
//   npx tsx bench/provider.ts [--requests 1000] [--clients 64] [--replicas 1] [--protocol grpc|connect]
//   BENCH_CPU_PROF=/tmp/prof npx tsx bench/provider.ts   (also writes a CPU profile of the provider)
//
// Starts provider-sim, the provider service and the voucher service (which stores each
// received code; the provider delivers only after that) as their own processes on spare
// loopback ports, with a throwaway database and JetStream stream (removed afterwards), and
// a JWKS served from here so the bench can mint customer tokens. With --replicas N, N provider
// processes share the database and stream and the clients spread over them. Then two phases:
//
// 1. fast provider: `requests` RequestCode calls (every fifth by SMS, the rest WEB) from
//    `clients` concurrent gRPC clients, against a sim answering every code inline in 1–5 ms.
//    Prints requests completed end to end per second (RequestCode → provider call →
//    `code_received` → stored by voucher → `purchased_code_stored` → delivered; goal
//    ≥ 300/s), end-to-end latency percentiles, and CPU per request.
// 2. slow-callback mix: `requests` more against a sim that answers inline, acknowledges and
//    calls back (in time and late), never calls back, calls back twice, calls back after an
//    inline code, and fails 2% of calls. Timings are scaled ×0.1 (inline window 300 ms,
//    breaker timeout 450 ms, late after 3 s) and the request deadline is 8 s, so the phase
//    takes ~10 s. Checks that every request is in exactly one final state, that each
//    delivered request has exactly one `code_received` event and the sim's code, stored
//    before it was delivered, and prints the counts.
// Bounded: ~15 s of set-up and phase 1, ~12 s of phase 2.
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createServiceTransport } from "../services/kit/grpc-transport.js";
import { connect } from "nats";
import pg from "pg";
import { CodeReceivedSchema } from "../gen/vouch/events/v1/events_pb.js";
import { ProviderService } from "../gen/vouch/provider/v1/provider_pb.js";
import { DeliveryChannel } from "../gen/vouch/type/v1/provider_code_pb.js";
import { createTestDatabase, createTestTokens, deleteStream, freePort, stopProcess, testEventNames } from "../services/kit/testing.js";
import type { SimRequest } from "../services/provider-sim/sim.js";
import { cpuSeconds, cpuSecondsMatching as cpuSecondsOf, isNats, isPostgres, latencyStats, load, options, percentile, report, rssMiB } from "./lib/harness.js";

const { values: args } = parseArgs({
  options: {
    requests: { type: "string" },
    clients: { type: "string", default: "64" },
    replicas: { type: "string", default: "1" },
    protocol: { type: "string", default: "grpc" },
  },
});
const REQUESTS = args.requests ? Number(args.requests) : options.requests(1_000);
/** Time bound of each burst of RequestCode calls (the phases also bound their wait for completion). */
const BURST_SECONDS = Number(process.env.BENCH_PROVIDER_SECONDS ?? 120);
const CLIENTS = Number(args.clients);
const REPLICAS = Number(args.replicas);
const PROTOCOL = args.protocol;
if (PROTOCOL !== "grpc" && PROTOCOL !== "connect") throw new Error("--protocol is grpc (HTTP/2) or connect (binary Connect over HTTP/1.1)");
const ISSUER = "https://auth.bench";
const AUDIENCE = "vouch-bench";
const WINDOW_MS = 300;
const LATE_AFTER_MS = 3_000;
const DEADLINE_MS = 8_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = percentile;

function startProcess(name: string, entry: string, env: Record<string, string>, profile = false): ChildProcess {
  const prof = profile && process.env.BENCH_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const child = spawn(process.execPath, [...prof, "--import", "tsx", entry], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  child.stderr!.on("data", (d: Buffer) => process.stderr.write(`[${name}] ${d}`));
  return child;
}

async function waitHealthy(url: string, child: ChildProcess) {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`${url} exited with ${child.exitCode}`);
    if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) return;
    await sleep(100);
  }
  throw new Error(`${url} did not come up`);
}

async function main() {
  const db = await createTestDatabase("bench_provider");
  const events = testEventNames("bench_provider");
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  const children: ChildProcess[] = [];
  const jwksServer = http.createServer();
  try {
    // Tokens: an EdDSA key whose JWKS the provider fetches from here.
    const signer = await createTestTokens({ issuer: ISSUER, audience: AUDIENCE, kid: "bench", expiresIn: "15m" });
    jwksServer.on("request", (_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [signer.jwk] })));
    await new Promise<void>((r) => jwksServer.listen(0, "127.0.0.1", r));
    const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    const tokens = await Promise.all(Array.from({ length: 64 }, (_, i) => signer.sign(`bench-user-${i}`)));

    const simPort = await freePort();
    const simUrl = `http://127.0.0.1:${simPort}`;
    const sim = startProcess("sim", "services/provider-sim/main.ts", { PROVIDER_SIM_PORT: String(simPort), LOG_LEVEL: "warn" });
    children.push(sim);
    const voucherPort = await freePort();
    const voucherUrl = `http://127.0.0.1:${voucherPort}`;
    const voucher = startProcess("voucher", "services/voucher/main.ts", {
      VOUCHER_PORT: String(voucherPort),
      DATABASE_URL: db.url,
      NATS_STREAM: events.stream,
      NATS_SUBJECT_PREFIX: events.subjectPrefix,
      REDIS_KEY_PREFIX: `${events.subjectPrefix}:`,
      JWKS_URL: jwksUrl,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
      LOG_LEVEL: "error",
    });
    children.push(voucher);
    const providers: ChildProcess[] = [];
    const providerUrls: string[] = [];
    for (let r = 0; r < REPLICAS; r++) {
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const child = startProcess(`provider-${r}`, "services/provider/main.ts", {
        PROVIDER_PORT: String(port),
        PROVIDER_URL: url,
        PROVIDER_API_URL: simUrl,
        DATABASE_URL: db.url,
        NATS_STREAM: events.stream,
        NATS_SUBJECT_PREFIX: events.subjectPrefix,
        JWKS_URL: jwksUrl,
        JWT_ISSUER: ISSUER,
        JWT_AUDIENCE: AUDIENCE,
        LOG_LEVEL: "error",
        PROVIDER_CALL_TIMEOUT_MS: "450",
        PROVIDER_REQUEST_DEADLINE_MS: String(DEADLINE_MS),
        PROVIDER_RETRY_BACKOFF_MS: "100,200,400",
        PROVIDER_SWEEP_INTERVAL_MS: "200",
        // Limits stay on (their Redis round trips are part of a request's cost) but far above the load.
        PROVIDER_REQUESTS_PER_USER_PER_MINUTE: "1000000",
        PROVIDER_REQUESTS_PER_USER_BURST: "100000",
        PROVIDER_REQUESTS_PER_PHONE_PER_MINUTE: "1000000",
        PROVIDER_REQUESTS_PER_PHONE_BURST: "100000",
      }, r === 0);
      children.push(child);
      providers.push(child);
      providerUrls.push(url);
    }
    await Promise.all([waitHealthy(simUrl, sim), waitHealthy(voucherUrl, voucher), ...providers.map((p, i) => waitHealthy(providerUrls[i], p))]);
    const providerCpuSeconds = () => providers.reduce((sum, p) => sum + cpuSeconds(p.pid), 0);
    const configure = async (behaviour: unknown) => {
      const res = await fetch(`${simUrl}/sim/config`, { method: "PUT", body: JSON.stringify(behaviour) });
      if (!res.ok) throw new Error(`sim config refused: ${await res.text()}`);
    };
    const clients = providerUrls.map((baseUrl) =>
      createClient(
        ProviderService,
        PROTOCOL === "grpc"
          ? createServiceTransport({ baseUrl })
          : createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, nodeOptions: { agent: new http.Agent({ keepAlive: true, maxSockets: CLIENTS }) } }),
      ),
    );

    /**
     * Sends `count` RequestCode calls from CLIENTS concurrent clients, within BURST_SECONDS;
     * returns the ids and rpc latencies. A refused call or a burst cut short by the time
     * bound fails the bench (every phase counts all `count` requests).
     */
    async function burst(label: string, count: number) {
      const ids: string[] = [];
      const r = await load({ concurrency: CLIENTS, seconds: BURST_SECONDS, maxCalls: count }, async (c, i) => {
        const { codeRequest } = await clients[c % clients.length].requestCode(
          { phoneNumber: `+8490${String(1_000_000 + i).slice(-7)}`, channel: i % 5 === 4 ? DeliveryChannel.SMS : DeliveryChannel.WEB, requestId: `${label}-${i}` },
          { headers: { authorization: `Bearer ${tokens[c % tokens.length]}` } },
        );
        ids.push(codeRequest!.id);
      });
      if (r.errors) throw new Error(`${label}: ${r.errors} RequestCode calls failed, first: ${r.firstError}`);
      if (ids.length < count) throw new Error(`${label}: only ${ids.length} of ${count} requests accepted within ${BURST_SECONDS} s`);
      return { ids, rpcMs: r.latencies };
    }
    const countIn = async (ids: string[], states: string[]) =>
      Number((await pool.query("SELECT count(*) AS n FROM provider.code_requests WHERE id = ANY($1) AND state = ANY($2)", [ids, states])).rows[0].n);
    /** Delivered requests whose code the voucher service had not stored first (must be 0). */
    const deliveredUnstored = async (ids: string[]) =>
      Number(
        (
          await pool.query(
            `SELECT count(*) AS n FROM provider.code_requests r LEFT JOIN voucher.purchased_codes p ON p.code_request_id = r.id
              WHERE r.id = ANY($1) AND r.state = 'delivered' AND (p.id IS NULL OR p.code <> r.code OR p.created_at > r.delivered_at)`,
            [ids],
          )
        ).rows[0].n,
      );
    const eventsByRequest = async () => {
      const rows = (await pool.query("SELECT payload FROM provider.outbox WHERE subject = 'provider.code_received'")).rows as { payload: Buffer }[];
      const by = new Map<string, string[]>();
      for (const r of rows) {
        const e = fromBinary(CodeReceivedSchema, r.payload);
        by.set(e.codeRequestId, [...(by.get(e.codeRequestId) ?? []), e.code]);
      }
      return by;
    };

    // Warm-up: connections, JWKS, JIT, consumers.
    await configure({ default: { latency: [{ weight: 1, minMs: 1, maxMs: 5 }] } });
    const warm = await burst("warm", 100);
    while ((await countIn(warm.ids, ["delivered"])) < warm.ids.length) await sleep(50);

    // ── Phase 1: fast provider ─────────────────────────────────────────────────────────
    // Postgres backends come and go (pools): count the ones alive across the phase.
    const pg0 = cpuSecondsOf(isPostgres);
    const nats0 = cpuSecondsOf(isNats);
    const self0 = process.cpuUsage();
    const cpu0 = providerCpuSeconds() + cpuSeconds(sim.pid);
    const voucherCpu0 = cpuSeconds(voucher.pid);
    const providerCpu0 = providerCpuSeconds();
    const started = performance.now();
    const fast = await burst("fast", REQUESTS);
    const acceptedMs = performance.now() - started;
    // Until every request is in a final state: a request the provider gave up on (failed,
    // e.g. its calls timed out on an overloaded machine) counts as an error of the row.
    const final = ["delivered", "failed", "expired"];
    while ((await countIn(fast.ids, final)) < REQUESTS) {
      if (performance.now() - started > 120_000) {
        const open = (await pool.query("SELECT state, count(*) AS n FROM provider.code_requests WHERE id = ANY($1) GROUP BY state", [fast.ids])).rows;
        throw new Error(`phase 1 did not complete within 120 s: ${JSON.stringify(open)}`);
      }
      await sleep(25);
    }
    const delivered = await countIn(fast.ids, ["delivered"]);
    const totalMs = performance.now() - started;
    const cpu = providerCpuSeconds() + cpuSeconds(sim.pid) - cpu0;
    const providerCpu = providerCpuSeconds() - providerCpu0;
    const voucherCpu = cpuSeconds(voucher.pid) - voucherCpu0;
    const pgCpu = cpuSecondsOf(isPostgres) - pg0;
    const natsCpu = cpuSecondsOf(isNats) - nats0;
    const benchCpu = (process.cpuUsage(self0).user + process.cpuUsage(self0).system) / 1e6;
    const fastRows = (
      await pool.query("SELECT id, state, extract(epoch FROM delivered_at - created_at) * 1000 AS ms FROM provider.code_requests WHERE id = ANY($1)", [fast.ids])
    ).rows as { id: string; state: string; ms: string | null }[];
    const e2e = fastRows.filter((r) => r.state === "delivered").map((r) => Number(r.ms)).sort((a, b) => a - b);
    const fastEvents = await eventsByRequest();
    // Exactly one code_received per delivered request, none for the others.
    const fastOk = fastRows.every((r) => (fastEvents.get(r.id)?.length ?? 0) === (r.state === "delivered" ? 1 : 0));
    const fastUnstored = await deliveredUnstored(fast.ids);
    console.log(`provider bench: ${REQUESTS} requests, ${CLIENTS} concurrent ${PROTOCOL === "grpc" ? "gRPC (HTTP/2)" : "Connect binary (HTTP/1.1)"} clients, ${REPLICAS} provider process${REPLICAS > 1 ? "es" : ""}, loopback, ${tokens.length} customers' tokens`);
    console.log(`\nphase 1 — fast provider (codes inline in 1–5 ms), 80% WEB / 20% SMS`);
    console.log(`  RequestCode accepted        ${(REQUESTS / (acceptedMs / 1000)).toFixed(0)} /s   (rpc p50 ${pct(fast.rpcMs, 50).toFixed(1)} ms, p99 ${pct(fast.rpcMs, 99).toFixed(1)} ms)`);
    console.log(`  completed end to end        ${(delivered / (totalMs / 1000)).toFixed(0)} /s   (${delivered} of ${REQUESTS} DELIVERED, all final after ${(totalMs / 1000).toFixed(2)} s; goal ≥ 300/s)`);
    console.log(`  request → delivered         p50 ${pct(e2e, 50).toFixed(0)} ms, p99 ${pct(e2e, 99).toFixed(0)} ms`);
    const perRequest = (seconds: number) => ((seconds * 1000) / REQUESTS).toFixed(2);
    console.log(`  CPU per request             ${perRequest(providerCpu)} ms provider, ${perRequest(voucherCpu)} ms voucher, ${perRequest(pgCpu)} ms Postgres, ${perRequest(natsCpu)} ms NATS, ${perRequest(cpu - providerCpu)} ms sim, ${perRequest(benchCpu)} ms bench clients`);
    console.log(`                              (${availableParallelism()} cores: ${((cpu + voucherCpu + pgCpu + natsCpu + benchCpu) / (totalMs / 1000)).toFixed(2)} cores busy on average; provider RSS ${rssMiB(providers[0].pid).toFixed(0)} MiB)`);
    console.log(`  one code_received each      ${fastOk ? "yes" : "NO"}`);
    console.log(`  stored before delivered     ${fastUnstored === 0 ? "yes" : `NO — ${fastUnstored} delivered without their code stored first`}`);

    // ── Phase 2: slow-callback mix ─────────────────────────────────────────────────────
    await configure({
      default: {
        inlineWindowMs: WINDOW_MS,
        lateAfterMs: LATE_AFTER_MS,
        latency: [
          { weight: 50, minMs: 5, maxMs: 250 },
          { weight: 35, minMs: 500, maxMs: 2_800 },
          { weight: 15, minMs: 3_200, maxMs: 6_000 },
        ],
        errorRate: 0.02,
        noCallbackRate: 0.05,
        duplicateCallbackRate: 0.1,
        callbackAfterInlineRate: 0.05,
      },
    });
    const mixStarted = performance.now();
    const mix = await burst("mix", REQUESTS);
    const open = ["pending", "acknowledged", "succeeded", "late_succeeded"];
    while ((await countIn(mix.ids, open)) > 0) {
      if (performance.now() - mixStarted > DEADLINE_MS + 20_000) {
        const open = (await pool.query("SELECT state, count(*) AS n FROM provider.code_requests WHERE id = ANY($1) GROUP BY state", [mix.ids])).rows;
        throw new Error(`phase 2: requests still open long after the deadline: ${JSON.stringify(open)}`);
      }
      await sleep(100);
    }
    const mixMs = performance.now() - mixStarted;
    await sleep(1_500); // late and duplicate callbacks still in flight
    const byState = new Map<string, number>();
    const rows = (await pool.query("SELECT id, state, code, provider_status FROM provider.code_requests WHERE id = ANY($1)", [mix.ids])).rows as {
      id: string;
      state: string;
      code: string | null;
      provider_status: string | null;
    }[];
    for (const r of rows) byState.set(`${r.state}${r.provider_status ? ` (${r.provider_status})` : ""}`, (byState.get(`${r.state}${r.provider_status ? ` (${r.provider_status})` : ""}`) ?? 0) + 1);
    const simRequests = new Map(((await (await fetch(`${simUrl}/sim/requests`)).json()) as { requests: SimRequest[] }).requests.map((r) => [r.requestId, r]));
    const mixEvents = await eventsByRequest();
    const problems: string[] = [];
    const mixUnstored = await deliveredUnstored(mix.ids);
    if (mixUnstored) problems.push(`${mixUnstored} delivered without their code stored first`);
    if (rows.length !== REQUESTS) problems.push(`${rows.length} rows for ${REQUESTS} requests`);
    const callbackAnswers = new Map<string, number>();
    for (const r of rows) {
      const sim = simRequests.get(r.id);
      const codes = mixEvents.get(r.id) ?? [];
      if (!["delivered", "expired", "failed"].includes(r.state)) problems.push(`${r.id} ended ${r.state}`);
      if (r.state === "delivered" && (codes.length !== 1 || codes[0] !== r.code || r.code !== sim?.voucherCode)) problems.push(`${r.id}: events ${codes.join(",")}, stored ${r.code}, sim ${sim?.voucherCode}`);
      if (r.state !== "delivered" && codes.length) problems.push(`${r.id} ${r.state} with events ${codes.join(",")}`);
      for (const cb of sim?.callbacks ?? []) {
        const key = `${cb.httpStatus ?? "error"} ${(cb.response as { result?: string; error?: string } | undefined)?.result ?? (cb.response as { error?: string } | undefined)?.error ?? ""}`.trim();
        callbackAnswers.set(key, (callbackAnswers.get(key) ?? 0) + 1);
      }
    }
    console.log(`\nphase 2 — slow-callback mix (timings ×0.1: inline window ${WINDOW_MS} ms, late after ${LATE_AFTER_MS} ms, deadline ${DEADLINE_MS} ms)`);
    console.log(`  sim: 50% inline, 35% callback in time, 15% late; 5% of callbacks never sent, 10% sent twice, 5% of inline codes followed by a callback anyway, 2% of calls HTTP 500`);
    console.log(`  all ${REQUESTS} in a final state after ${(mixMs / 1000).toFixed(1)} s`);
    for (const [state, n] of [...byState].sort()) console.log(`    ${state.padEnd(28)} ${n}`);
    console.log(`  callbacks answered (HTTP status, outcome):`);
    for (const [k, n] of [...callbackAnswers].sort()) console.log(`    ${k.padEnd(28)} ${n}`);
    console.log(`  exactly one final state, one code_received and the sim's code per delivered request, stored first: ${problems.length ? `NO — ${problems.length} problems:\n    ${problems.slice(0, 10).join("\n    ")}` : "yes"}`);
    // Rows for `npm run bench`'s table.
    const via = `${REQUESTS} RequestCode, ${CLIENTS} concurrent ${PROTOCOL === "grpc" ? "gRPC h2" : "Connect h1.1"}`;
    const fastRate = delivered / (totalMs / 1000);
    report({
      id: "provider",
      path: "provider flow, fast sim (request → delivered)",
      via,
      rate: fastRate,
      unit: "requests/s",
      ok: delivered,
      errors: REQUESTS - delivered,
      ...latencyStats(e2e),
      rssMiB: rssMiB(providers[0].pid),
      vs: "ceiling.jetstream",
      targets: [
        { goal: "≥ 300 requests/s end to end", value: `${fastRate.toFixed(0)}/s`, met: fastRate >= 300 },
        { goal: "every request delivered", value: `${delivered} of ${REQUESTS}`, met: delivered === REQUESTS },
        { goal: "one code_received per delivered request, none for the others", value: fastOk ? "yes" : "no", met: fastOk },
        { goal: "every delivered code stored for its phone number first", value: fastUnstored === 0 ? "yes" : `${fastUnstored} not`, met: fastUnstored === 0 },
      ],
    });
    report({
      id: "provider.mix",
      path: "provider flow, slow-callback mix",
      via: `${REQUESTS} requests, timings ×0.1`,
      rate: REQUESTS / (mixMs / 1000),
      unit: "requests/s",
      ok: REQUESTS - problems.length,
      errors: problems.length,
      targets: [{ goal: "each request in exactly one final state", value: [...byState].sort().map(([st, n]) => `${st} ${n}`).join(", "), met: problems.length === 0 }],
    });
    if (problems.length || !fastOk || fastUnstored) process.exitCode = 1;
  } finally {
    await Promise.all(children.map((c) => stopProcess(c)));
    jwksServer.close();
    await pool.end();
    const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
    await deleteStream(nc, events.stream).catch(() => {});
    await nc.close();
    await db.drop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
