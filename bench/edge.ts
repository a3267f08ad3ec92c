// Edge overhead: the same read rpc (VoucherService.GetBook, Connect JSON over HTTP/1.1) called
// straight at the voucher service and through the edge (which checks the token, takes its
// per-address and per-user rate-limit units in Redis, and forwards over gRPC/HTTP/2).
// Prints throughput and p50/p95/p99 latency of both and edge ÷ direct throughput (goal ≥ 0.7).
//
// Auth, voucher and the edge run as their own processes (started by the edge tests' platform
// helper: a database, Redis prefix and stream of the bench's own, removed afterwards), so the
// load generator does not share their event loops. Phases alternate (direct, edge, direct,
// edge) and each side's figures are the sum over its phases, so drift on a shared machine
// hits both alike.
//
//   npx tsx bench/edge.ts        # BENCH_SECONDS=6 per phase, BENCH_CLIENTS=32, BENCH_EDGE_LIMITS=on|off, BENCH_EDGE_CPU_PROF=dir
import { readFileSync } from "node:fs";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthService } from "../gen/vouch/auth/v1/auth_pb.js";
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { ADMIN, startTestPlatform } from "../services/edge/test/platform.js";
import { options, report as reportRow, rssMiB } from "./lib/harness.js";

const SECONDS = options.seconds(6);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32);
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

interface Phase {
  calls: number;
  errors: number;
  seconds: number;
  latenciesMs: number[];
  /** CPU seconds used during the phase, per process (this load generator is "client"). */
  cpu: Record<string, number>;
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux
/** utime + stime of a process, in seconds, from /proc. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND; // fields 14 and 15 of stat(5)
}

let watched: Record<string, number> = {};
function cpuNow(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(watched)) out[name] = cpuSeconds(pid);
  const own = process.cpuUsage();
  out.client = (own.user + own.system) / 1e6;
  return out;
}

async function phase(voucher: Voucher, bookId: string, seconds: number): Promise<Phase> {
  const latenciesMs: number[] = [];
  let errors = 0;
  const cpuBefore = cpuNow();
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (performance.now() < deadline) {
        const t = performance.now();
        try {
          await voucher.getBook({ bookId });
          latenciesMs.push(performance.now() - t);
        } catch {
          errors++;
        }
      }
    }),
  );
  const cpuAfter = cpuNow();
  const cpu = Object.fromEntries(Object.keys(cpuAfter).map((k) => [k, cpuAfter[k] - cpuBefore[k]]));
  return { calls: latenciesMs.length, errors, seconds: (performance.now() - started) / 1000, latenciesMs, cpu };
}

function merge(phases: Phase[]): Phase {
  return {
    calls: phases.reduce((s, p) => s + p.calls, 0),
    errors: phases.reduce((s, p) => s + p.errors, 0),
    seconds: phases.reduce((s, p) => s + p.seconds, 0),
    latenciesMs: phases.flatMap((p) => p.latenciesMs).sort((a, b) => a - b),
    cpu: Object.fromEntries(Object.keys(phases[0].cpu).map((k) => [k, phases.reduce((s, p) => s + p.cpu[k], 0)])),
  };
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;

/** CPU µs per call of the processes on the call's path. */
function cpuPerCall(p: Phase, names: string[]): number {
  return names.reduce((s, n) => s + p.cpu[n], 0) / p.calls * 1e6;
}

function report(name: string, p: Phase, path: string[]) {
  const rps = p.calls / p.seconds;
  const l = p.latenciesMs;
  const perProcess = path.map((n) => `${n} ${((p.cpu[n] / p.calls) * 1e6).toFixed(0)}`).join(", ");
  console.log(
    `${name.padEnd(8)} ${rps.toFixed(0).padStart(7)} rps   p50 ${pct(l, 50).toFixed(2)} ms   p95 ${pct(l, 95).toFixed(2)} ms   p99 ${pct(l, 99).toFixed(2)} ms   errors ${p.errors}   CPU µs/call: ${perProcess}`,
  );
  return rps;
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
  watched = { auth: platform.pids.auth!, voucher: platform.pids.voucher!, edge: platform.pids.edge! };

  console.log(`edge overhead: GetBook, Connect JSON over HTTP/1.1, ${CLIENTS} concurrent clients, ${SECONDS} s per phase, edge rate limits ${LIMITS ? "on" : "off"}`);
  await phase(direct, bookId, 1); // warm-up: connections, JIT, caches
  await phase(viaEdge, bookId, 1);
  const directPhases: Phase[] = [];
  const edgePhases: Phase[] = [];
  for (let round = 0; round < 2; round++) {
    directPhases.push(await phase(direct, bookId, SECONDS / 2));
    edgePhases.push(await phase(viaEdge, bookId, SECONDS / 2));
  }
  const d = merge(directPhases);
  const e = merge(edgePhases);
  const directRps = report("direct", d, ["client", "voucher"]);
  const edgeRps = report("edge", e, ["client", "edge", "voucher"]);
  const ratio = edgeRps / directRps;
  // What the throughput ratio would be with every core busy with this work alone: other
  // load on a shared machine skews throughput, not CPU time per call.
  const cpuRatio = cpuPerCall(d, ["client", "voucher", "auth"]) / cpuPerCall(e, ["client", "edge", "voucher", "auth"]);
  // Deployed, the edge runs in pods of its own and scales out: then the voucher service is the
  // bottleneck on both paths, and what the edge costs it is serving gRPC instead of Connect JSON.
  const serviceBound = cpuPerCall(d, ["voucher"]) / cpuPerCall(e, ["voucher"]);
  // Rows for `npm run bench`'s table.
  const via = `Connect JSON h1, ${CLIENTS} concurrent`;
  const row = (p: Phase) => ({ rate: p.calls / p.seconds, unit: "calls/s", ok: p.calls, errors: p.errors, p50Ms: pct(p.latenciesMs, 50), p95Ms: pct(p.latenciesMs, 95), p99Ms: pct(p.latenciesMs, 99) });
  reportRow({ id: "edge.direct", path: "GetBook direct", via, ...row(d), rssMiB: rssMiB(platform.pids.voucher) });
  reportRow({
    id: "edge",
    path: "GetBook via edge",
    via,
    ...row(e),
    rssMiB: rssMiB(platform.pids.edge),
    vs: "edge.direct",
    goal: 0.7,
    notes: [
      `edge ÷ direct by CPU per call (client + services): ${cpuRatio.toFixed(2)}`,
      `edge ÷ direct with the edge on its own cores (voucher CPU per call): ${serviceBound.toFixed(2)}`,
    ],
  });
  console.log(`edge ÷ direct throughput: ${ratio.toFixed(2)} (goal ≥ 0.7) ${ratio >= 0.7 ? "✓" : "✗"}`);
} finally {
  await platform.stop();
}
