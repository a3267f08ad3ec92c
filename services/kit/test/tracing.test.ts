// Tracing end to end: the platform's processes, started exactly as `npm start` starts them,
// export OTLP (http/json) to a collector this test runs, and one trace must follow a
// customer's first login from the edge, through auth, the event on JetStream and
// promotion's grant, to the voucher service issuing the voucher — with the SQL of each hop.
import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { PromotionService } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { ADMIN, startTestPlatform, type TestPlatform } from "../../edge/test/platform.js";
import { waitFor } from "../testing.js";

interface ReceivedSpan {
  service: string;
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId: string;
}

// OTLP/JSON span kinds.
const SERVER = 2;
const CLIENT = 3;
const CONSUMER = 5;

let collector: Server;
const spans: ReceivedSpan[] = [];
let platform: TestPlatform;

/** A minimal OTLP/HTTP collector: keeps every span of every `POST /v1/traces`. */
function startCollector(): Promise<string> {
  collector = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const payload = JSON.parse(body) as {
        resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] }; scopeSpans: { spans: Omit<ReceivedSpan, "service">[] }[] }[];
      };
      for (const rs of payload.resourceSpans) {
        const service = rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue ?? "?";
        for (const ss of rs.scopeSpans) for (const s of ss.spans) spans.push({ service, name: s.name, kind: s.kind, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId ?? "" });
      }
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  return new Promise((resolve) => collector.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(collector.address() as AddressInfo).port}`)));
}

before(async () => {
  const endpoint = await startCollector();
  platform = await startTestPlatform("tracing", ["auth", "voucher", "promotion", "edge"], {
    all: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_BSP_SCHEDULE_DELAY: "100" },
  });
});

after(async () => {
  await platform?.stop();
  collector?.close();
});

test("one trace follows a first login from the edge to the voucher it earns", async () => {
  const edge = createConnectTransport({ baseUrl: platform.urls.edge!, httpVersion: "1.1" });
  const auth = createClient(AuthService, edge);
  const promotion = createClient(PromotionService, edge);
  const admin = { headers: { authorization: `Bearer ${(await auth.login({ identifier: ADMIN.username, password: ADMIN.password })).accessToken}` } };
  const { campaign } = await promotion.createCampaign(
    {
      campaign: {
        name: "Traced first logins",
        type: 1, // FIRST_LOGIN
        quota: 10,
        voucherTerms: { discount: { kind: { case: "percentOff", value: { basisPoints: 3000 } } }, validityDays: 30, codePattern: "TR-*{10}" },
      },
    },
    admin,
  );
  await promotion.activateCampaign({ campaignId: campaign!.id }, admin);

  const n = randomInt(1_000_000_000);
  const password = "a-traced-Passw0rd!";
  await auth.register({ fullName: "Traced Customer", username: `traced${n}`, email: `traced${n}@example.com`, phoneNumber: `+8491${String(randomInt(10_000_000)).padStart(7, "0")}`, password });
  const login = await auth.login({ identifier: `traced${n}`, password });
  assert.equal(login.firstLogin, true);
  const customer = { headers: { authorization: `Bearer ${login.accessToken}` } };
  await waitFor("the first-login voucher", async () => (await promotion.listMyPromotions({}, customer)).grants.find((g) => g.voucher?.code));

  // The customer's login at the edge (the admin's login is another trace).
  const loginTraces = () => spans.filter((s) => s.service === "vouch-edge" && s.kind === SERVER && s.name === "vouch.auth.v1.AuthService/Login").map((s) => s.traceId);
  const trace = await waitFor(
    "the spans of the voucher issued in the customer's login trace",
    async () => {
      for (const traceId of loginTraces()) {
        const inTrace = spans.filter((s) => s.traceId === traceId);
        // Parents end (and are exported) after their children: wait for the whole tree.
        if (inTrace.some((s) => s.service === "vouch-voucher" && s.kind === SERVER && s.name === "vouch.voucher.v1.VoucherService/IssueVoucher") && rootsOf(inTrace).length === 1) return inTrace;
      }
      return undefined;
    },
    20_000,
    100,
  );
  const has = (service: string, kind: number, name: string | RegExp) =>
    trace.some((s) => s.service === service && s.kind === kind && (typeof name === "string" ? s.name === name : name.test(s.name)));
  assert.ok(has("vouch-edge", CLIENT, "vouch.auth.v1.AuthService/Login"), "the edge forwards the login inside the trace");
  assert.ok(has("vouch-auth", SERVER, "vouch.auth.v1.AuthService/Login"), "auth's login joins the trace from the gRPC metadata");
  assert.ok(has("vouch-promotion", CONSUMER, /user_logged_in process$/), "promotion consumes the login event inside the trace (headers from the outbox)");
  assert.ok(has("vouch-promotion", CLIENT, "vouch.voucher.v1.VoucherService/IssueVoucher"), "promotion calls the voucher service inside the trace");
  for (const service of ["vouch-auth", "vouch-promotion", "vouch-voucher"]) {
    assert.ok(trace.some((s) => s.service === service && s.name.startsWith("pg.query")), `${service}'s SQL is in the trace`);
  }
  // Every span but the root hangs off another span of the same trace: nothing is orphaned.
  assert.deepEqual(rootsOf(trace).map((s) => `${s.service} ${s.name}`), ["vouch-edge vouch.auth.v1.AuthService/Login"]);
});

function rootsOf(trace: ReceivedSpan[]): ReceivedSpan[] {
  const ids = new Set(trace.map((s) => s.spanId));
  return trace.filter((s) => !s.parentSpanId || !ids.has(s.parentSpanId));
}
