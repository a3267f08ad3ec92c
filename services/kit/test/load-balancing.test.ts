// Replicas behind one name: the kit's transport spreads calls over every address the peer's
// name resolves to, and the kit's listener ends connections at their maximum age, so a
// replica added later gets calls too — without a mesh, and without a failed call.
//
// Two real listeners on 127.0.0.1 and 127.0.0.2 (same port) stand for two pods of a headless
// Service; the cluster DNS that would name them is the one thing stood in for: lookups of
// one reserved name answer with the addresses this test chooses (every other name resolves
// as usual).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import dns from "node:dns";
import { createClient } from "@connectrpc/connect";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { loadConfig } from "../config.js";
import { createServiceTransport, type ServiceTransport } from "../grpc-transport.js";
import { createLogger } from "../log.js";
import { createMetrics } from "../metrics.js";
import { createServiceServer, type RunningServer } from "../server.js";
import { createTestTokens, freePort, type TestTokens } from "../testing.js";

const NAME = "replicas.vouch.test";
const REPLICAS = ["127.0.0.1", "127.0.0.2"];
const MAX_AGE_MS = 400;

let tokens: TestTokens;
let port: number;
const servers: RunningServer[] = [];
/** What the stand-in DNS answers for NAME. */
let resolvesTo: string[] = [];
const realLookup = dns.promises.lookup;

/** A replica that answers with its own address. */
function startReplica(host: string): Promise<RunningServer> {
  return createServiceServer({
    config: { ...loadConfig("voucher", {}), host, port, maxConnectionAgeMs: MAX_AGE_MS },
    log: createLogger("test", "silent"),
    metrics: createMetrics("test", { processMetrics: false }),
    services: [VoucherService],
    readiness: [],
    verifier: tokens.verifier,
    routes: (router) => router.service(VoucherService, { validateVoucher: async () => ({ valid: true, voucher: { code: host } }) }),
  }).listen();
}

before(async () => {
  tokens = await createTestTokens({ issuer: "https://auth.test", audience: "vouch-test" });
  port = await freePort();
  for (const host of REPLICAS) servers.push(await startReplica(host));
  dns.promises.lookup = ((hostname: string, options: dns.LookupOptions) =>
    hostname === NAME ? Promise.resolve(resolvesTo.map((address) => ({ address, family: 4 }))) : realLookup(hostname, options)) as typeof dns.promises.lookup;
});
after(async () => {
  dns.promises.lookup = realLookup;
  await Promise.all(servers.map((s) => s.close()));
});

async function callsOn(transport: ServiceTransport) {
  const client = createClient(VoucherService, transport);
  const headers = { authorization: `Bearer ${await tokens.sign("user-1")}` };
  return async () => (await client.validateVoucher({ code: "any" }, { headers })).voucher!.code;
}

test("calls to a name with two replicas go to both, in turn", async () => {
  resolvesTo = [...REPLICAS];
  const transport = createServiceTransport({ baseUrl: `http://${NAME}:${port}` });
  try {
    const call = await callsOn(transport);
    await call(); // connects to the addresses
    const answered: string[] = [];
    for (let i = 0; i < 20; i++) answered.push(await call());
    const counts = Object.fromEntries(REPLICAS.map((r) => [r, answered.filter((a) => a === r).length]));
    assert.ok(counts[REPLICAS[0]] >= 8 && counts[REPLICAS[1]] >= 8, `both replicas answer: ${JSON.stringify(counts)}`);
  } finally {
    transport.close();
  }
});

test("a replica added to the name gets calls once the old connection reaches its maximum age, and no call fails", async () => {
  resolvesTo = [REPLICAS[0]];
  const transport = createServiceTransport({ baseUrl: `http://${NAME}:${port}` });
  try {
    const call = await callsOn(transport);
    const answered: string[] = [];
    for (let i = 0; i < 10; i++) answered.push(await call());
    assert.deepEqual(new Set(answered), new Set([REPLICAS[0]]), "one address, one replica");

    // The second pod comes up. Calls keep going, 8 at a time, while connections age out
    // (every ~0.4 s) and the name is resolved again (at most every 5 s).
    resolvesTo = [...REPLICAS];
    const deadline = Date.now() + 15_000;
    const since: string[] = [];
    let failures = 0;
    while (Date.now() < deadline && since.slice(-40).filter((a) => a === REPLICAS[1]).length < 10) {
      const batch = await Promise.allSettled(Array.from({ length: 8 }, call));
      for (const r of batch) r.status === "fulfilled" ? since.push(r.value) : failures++;
    }
    assert.equal(failures, 0, "no call fails while connections are replaced");
    const recent = since.slice(-40);
    assert.ok(recent.filter((a) => a === REPLICAS[1]).length >= 10, `the added replica takes its share: ${recent.filter((a) => a === REPLICAS[1]).length} of the last 40`);
    assert.ok(recent.filter((a) => a === REPLICAS[0]).length >= 10, "and the first keeps its share");
  } finally {
    transport.close();
  }
});
