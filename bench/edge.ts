// Edge overhead: the same read rpc (VoucherService.GetBook, Connect JSON over HTTP/1.1) called
// straight at the voucher service and through the edge (which checks the token, takes its
// per-address and per-user rate-limit units in Redis, and forwards over gRPC/HTTP/2).
// Prints throughput and p50/p95/p99 latency of both and edge ÷ direct throughput (goal ≥ 0.7).
// A third path, a bare forwarder (bench/bare-forwarder.ts: connect-node + the kit's gRPC
// transport, nothing else), shows how much of the gap any edge on this stack would have.
//
// Auth, voucher and the edge run as their own processes (started by the edge tests' platform
// helper: a database, Redis prefix and stream of the bench's own, removed afterwards), so the
// load generator does not share their event loops. Phases alternate (direct, edge, bare, in
// six rounds) and each path's figures are the sum over its phases, so drift on a shared
// machine hits all alike: with two rounds of 3 s, runs of the same code spread from 0.51 to
// 0.62; with six rounds of 2 s, from 0.51 to 0.54.
//
//   npx tsx bench/edge.ts        # BENCH_SECONDS=12 per path, BENCH_EDGE_ROUNDS=6, BENCH_CLIENTS=32, BENCH_EDGE_LIMITS=on|off, BENCH_EDGE_CPU_PROF=dir
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthService } from "../gen/vouch/auth/v1/auth_pb.js";
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { ADMIN, startTestPlatform } from "../services/edge/test/platform.js";
import { freePort, stopProcess } from "../services/kit/testing.js";
import { cpuMeter, load, mergeLoads, options, report, row, sampleRss, sumCpu, type LoadResult } from "./lib/harness.js";

const SECONDS = options.seconds(12);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32);
const ROUNDS = Number(process.env.BENCH_EDGE_ROUNDS ?? 6);
const LIMITS = (process.env.BENCH_EDGE_LIMITS ?? "on") !== "off";

type Voucher = Client<typeof VoucherService>;

function client(baseUrl: string, token: string): Voucher {
  // One keep-alive HTTP/1.1 connection pool per target, JSON: what a browser sends.
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    useBinaryFormat: false,
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
  });
  return createClient(VoucherService, transport);
}

interface Phase extends LoadResult {
  /** CPU seconds used during the phase, per process (this load generator is "client"). */
  cpu: Record<string, number>;
}

let meter = cpuMeter({ client: process.pid });

/** GetBook from CLIENTS closed loops, bounded in time and calls, with the CPU each process spent. */
async function phase(voucher: Voucher, bookId: string, seconds: number): Promise<Phase> {
  const { result, cpu } = await meter.measure(() => load({ concurrency: CLIENTS, seconds }, () => voucher.getBook({ bookId })));
  return { ...result, cpu };
}

function merge(phases: Phase[]): Phase {
  return { ...mergeLoads(phases), cpu: sumCpu(phases.map((p) => p.cpu)) };
}

/** CPU µs per call of the processes on the call's path. */
function cpuPerCall(p: Phase, names: string[]): number {
  return (names.reduce((s, n) => s + p.cpu[n], 0) / p.ok) * 1e6;
}

function print(name: string, p: Phase, path: string[]) {
  const perProcess = path.map((n) => `${n} ${((p.cpu[n] / p.ok) * 1e6).toFixed(0)}`).join(", ");
  console.log(`${name.padEnd(8)} ${p.rate.toFixed(0).padStart(7)} rps   p50 ${p.p50Ms.toFixed(2)} ms   p95 ${p.p95Ms.toFixed(2)} ms   p99 ${p.p99Ms.toFixed(2)} ms   errors ${p.errors}   CPU µs/call: ${perProcess}`);
  return p.rate;
}

const limits: Record<string, string> = LIMITS
  ? { EDGE_RATE_PER_IP_PER_MINUTE: "1000000000", EDGE_RATE_PER_IP_BURST: "1000000", EDGE_RATE_PER_USER_PER_MINUTE: "1000000000", EDGE_RATE_PER_USER_BURST: "1000000" }
  : { EDGE_RATE_PER_IP_PER_MINUTE: "0", EDGE_RATE_PER_USER_PER_MINUTE: "0" };
// BENCH_EDGE_CPU_PROF=<dir>: the edge writes a V8 CPU profile there when it stops.
const profile = process.env.BENCH_EDGE_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_EDGE_CPU_PROF}`] : [];
const platform = await startTestPlatform("bench_edge", ["auth", "voucher", "edge"], { all: { LOG_LEVEL: "warn" }, edge: limits }, { edge: profile });
try {
  const auth = createClient(AuthService, createConnectTransport({ baseUrl: platform.urls.auth!, httpVersion: "1.1" }));
  const { accessToken } = await auth.login({ identifier: ADMIN.username, password: ADMIN.password });
  const direct = client(platform.urls.voucher!, accessToken);
  const viaEdge = client(platform.urls.edge!, accessToken);
  const { book } = await direct.createBook({
    book: { name: "Bench", codePattern: "BENCH-****-****", discount: { kind: { case: "percentOff", value: { basisPoints: 1000 } } } },
    initialCodeCount: 0,
    requestId: `bench-edge-${Date.now()}`,
  });
  const bookId = book!.id;
  const barePort = await freePort();
  const bare = spawn(process.execPath, ["--import", "tsx", "bench/bare-forwarder.ts", String(barePort), platform.urls.voucher!], { stdio: ["ignore", "pipe", "inherit"] });
  await once(bare.stdout!, "data"); // "ready"
  const viaBare = client(`http://127.0.0.1:${barePort}`, accessToken);
  meter = cpuMeter({ client: process.pid, bare: bare.pid!, auth: platform.pids.auth!, voucher: platform.pids.voucher!, edge: platform.pids.edge! });

  console.log(`edge overhead: GetBook, Connect JSON over HTTP/1.1, ${CLIENTS} concurrent clients, ${SECONDS} s per phase, edge rate limits ${LIMITS ? "on" : "off"}`);
  await phase(direct, bookId, 1); // warm-up: connections, JIT, caches
  await phase(viaEdge, bookId, 1);
  await phase(viaBare, bookId, 1);
  const directPhases: Phase[] = [];
  const edgePhases: Phase[] = [];
  const barePhases: Phase[] = [];
  const voucherRss = sampleRss([platform.pids.voucher]);
  const edgeRss = sampleRss([platform.pids.edge]);
  for (let round = 0; round < ROUNDS; round++) {
    directPhases.push(await phase(direct, bookId, SECONDS / ROUNDS));
    edgePhases.push(await phase(viaEdge, bookId, SECONDS / ROUNDS));
    barePhases.push(await phase(viaBare, bookId, SECONDS / ROUNDS));
  }
  await stopProcess(bare);
  const d = merge(directPhases);
  const e = merge(edgePhases);
  const b = merge(barePhases);
  const directRps = print("direct", d, ["client", "voucher"]);
  const edgeRps = print("edge", e, ["client", "edge", "voucher"]);
  print("bare", b, ["client", "bare", "voucher"]);
  const ratio = edgeRps / directRps;
  // What the throughput ratio would be with every core busy with this work alone: other
  // load on a shared machine skews throughput, not CPU time per call.
  const directCpu = cpuPerCall(d, ["client", "voucher", "auth"]);
  const cpuRatio = directCpu / cpuPerCall(e, ["client", "edge", "voucher", "auth"]);
  const bareCpuRatio = directCpu / cpuPerCall(b, ["client", "bare", "voucher", "auth"]);
  // Deployed, the edge runs in pods of its own and scales out: then the voucher service is the
  // bottleneck on both paths, and what the edge costs it is serving gRPC instead of Connect JSON.
  const serviceBound = cpuPerCall(d, ["voucher"]) / cpuPerCall(e, ["voucher"]);
  // Rows for `npm run bench`'s table.
  const via = `Connect JSON h1.1, ${CLIENTS} concurrent`;
  report(row("edge.direct", "GetBook direct", via, d, { unit: "calls/s", rssMiB: voucherRss.stop(), vs: "ceiling.empty-rpc.connect" }));
  report(
    row("edge", "GetBook via edge", via, e, {
      unit: "calls/s",
      rssMiB: edgeRss.stop(),
      vs: "edge.direct",
      goal: 0.7,
      notes: [
        `edge ÷ direct by CPU per call (client + services): ${cpuRatio.toFixed(2)}`,
        `edge ÷ direct with the edge on its own cores (voucher CPU per call): ${serviceBound.toFixed(2)}`,
        "RSS: the voucher service (direct), the edge (via edge)",
      ],
    }),
  );
  report(
    row("edge.bare", "GetBook via a bare forwarder", via, b, {
      unit: "calls/s",
      vs: "edge.direct",
      notes: [
        `bare ÷ direct by CPU per call: ${bareCpuRatio.toFixed(2)}`,
        "connect-node + the kit's gRPC transport and nothing else (bench/bare-forwarder.ts): the floor under any edge on this stack",
      ],
    }),
  );
  console.log(`edge ÷ direct throughput: ${ratio.toFixed(2)} (goal ≥ 0.7) ${ratio >= 0.7 ? "✓" : "✗"}`);
} finally {
  await platform.stop();
}
