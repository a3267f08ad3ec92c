// The lean unary gRPC path of the service listener (kit/unary-grpc.ts) and the grpc-js
// transport our processes call each other with (kit/grpc-transport.ts): each must give
// callers exactly what connect-node's own server and client give.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { gunzipSync, gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { ValidateVoucherRequestSchema, VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { loadConfig } from "../config.js";
import { requireCaller } from "../context.js";
import { invalidArgument, resourceExhausted } from "../errors.js";
import { createServiceTransport, type ServiceTransport } from "../grpc-transport.js";
import { createLogger } from "../log.js";
import { createMetrics } from "../metrics.js";
import { createServiceServer, type RunningServer } from "../server.js";
import { createTestTokens, freePort, waitFor, type TestTokens } from "../testing.js";
import { createUnaryGrpcPath } from "../unary-grpc.js";

const ISSUER = "https://auth.test";
const AUDIENCE = "vouch-test";
const READ_MAX_BYTES = 2_048;

/** What the handlers below saw; reset by each test that reads it. */
const seen = { calls: 0, aborted: [] as string[] };

/** A voucher service whose handlers do what the request's code asks. */
async function startServer(tokens: TestTokens, port = 0): Promise<RunningServer> {
  return createServiceServer({
    config: { ...loadConfig("voucher", {}), port },
    log: createLogger("test", "silent"),
    metrics: createMetrics("test", { processMetrics: false }),
    services: [VoucherService],
    readiness: [],
    verifier: tokens.verifier,
    readMaxBytes: READ_MAX_BYTES,
    routes: (router) =>
      router.service(VoucherService, {
        validateVoucher: async (req, ctx) => {
          seen.calls++;
          switch (req.code) {
            case "FIELDS":
              throw invalidArgument([{ field: "code", description: "must name a code", reason: "CODE_INVALID" }]);
            case "LIMIT":
              throw resourceExhausted("RATE_LIMITED", "too many attempts, ünïcode & spaces", 1_500);
            case "CRASH":
              throw new Error("connection to db-7.internal:5432 refused");
            case "WAIT":
              await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
              seen.aborted.push(ctx.signal.reason instanceof ConnectError ? Code[ctx.signal.reason.code] : String(ctx.signal.reason));
              throw ctx.signal.reason;
            default:
              ctx.responseHeader.set("x-echo", ctx.requestHeader.get("x-probe") ?? "");
              ctx.responseTrailer.set("x-finished", "yes");
              return { valid: true, voucher: { code: req.code, ownerUserId: requireCaller(ctx).subject } };
          }
        },
        exportCodes: async function* (req) {
          for (let i = 1; i <= 3; i++) yield { rowCount: i, csv: new TextEncoder().encode(`row ${i}\n`) };
          if (req.bookId === "BREAK") throw resourceExhausted("EXPORT_LIMITED", "export stopped", 2_000);
        },
      }),
  }).listen();
}

async function errorOf(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
  return err;
}

/** Everything a caller can read from an error, in one comparable value. */
function readable(err: ConnectError) {
  return {
    code: Code[err.code],
    message: err.rawMessage,
    reason: err.findDetails(ErrorInfoSchema)[0]?.reason,
    violations: err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => `${v.field}: ${v.description}`),
    retryMs: err.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds,
  };
}

describe("gRPC between processes", () => {
  let tokens: TestTokens;
  let server: RunningServer;
  let auth: { headers: Record<string, string> };
  before(async () => {
    tokens = await createTestTokens({ issuer: ISSUER, audience: AUDIENCE });
    server = await startServer(tokens);
    auth = { headers: { authorization: `Bearer ${await tokens.sign("user-7")}` } };
  });
  after(() => server.close());

  describe("the listener's unary gRPC path", () => {
    test("takes uncompressed protobuf unary gRPC over HTTP/2 and leaves Connect, gRPC-Web, compressed gRPC and streams to connect", async () => {
      const h2 = http2.createServer();
      const sessions = new Set<http2.ServerHttp2Session>();
      h2.on("session", (session) => sessions.add(session));
      const path = createUnaryGrpcPath({ interceptors: [], contextValues: () => undefined as never, readMaxBytes: READ_MAX_BYTES, shutdownSignal: new AbortController().signal });
      path.record({ handlers: [], service: () => undefined as never, rpc: () => undefined as never }).service(VoucherService, { validateVoucher: (req) => ({ voucher: { code: req.code } }) });
      const taken: boolean[] = [];
      h2.on("request", (req, res) => {
        const tookIt = path.take(req, res);
        taken.push(tookIt);
        if (!tookIt) res.writeHead(418).end();
      });
      await new Promise<void>((r) => h2.listen(0, "127.0.0.1", r));
      const baseUrl = `http://127.0.0.1:${(h2.address() as { port: number }).port}`;
      try {
        const grpc = createClient(VoucherService, createGrpcTransport({ baseUrl }));
        assert.equal((await grpc.validateVoucher({ code: "A" })).voucher?.code, "A");
        const others = [
          () => createClient(VoucherService, createGrpcTransport({ baseUrl, sendCompression: gzip(), compressMinBytes: 0 })).validateVoucher({ code: "A" }),
          () => createClient(VoucherService, createConnectTransport({ baseUrl, httpVersion: "2" })).validateVoucher({ code: "A" }),
          () => createClient(VoucherService, createGrpcWebTransport({ baseUrl, httpVersion: "2" })).validateVoucher({ code: "A" }),
          async () => {
            for await (const _ of grpc.exportCodes({ bookId: "b" })) break;
          },
        ];
        for (const call of others) await errorOf(call());
        assert.deepEqual(taken, [true, false, false, false, false]);
      } finally {
        for (const session of sessions) session.destroy();
        h2.close();
      }
    });

    test("answers as connect-node does: the same result, headers, trailers and error details as a compressed call that connect serves", async () => {
      const fast = createClient(VoucherService, createGrpcTransport({ baseUrl: server.url }));
      // gzip makes connect-node serve the call (the lean path only takes uncompressed ones).
      const viaConnect = createClient(VoucherService, createGrpcTransport({ baseUrl: server.url, sendCompression: gzip(), compressMinBytes: 0 }));
      for (const client of [fast, viaConnect]) {
        let header: Headers | undefined;
        let trailer: Headers | undefined;
        const res = await client.validateVoucher({ code: "OK-1" }, { headers: { ...auth.headers, "x-probe": "p-1" }, onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) });
        assert.deepEqual([res.valid, res.voucher?.code, res.voucher?.ownerUserId], [true, "OK-1", "user-7"]);
        assert.equal(header?.get("x-echo"), "p-1");
        assert.equal(trailer?.get("x-finished"), "yes");
      }
      for (const code of ["FIELDS", "LIMIT", "CRASH"]) {
        const a = readable(await errorOf(fast.validateVoucher({ code }, auth)));
        const b = readable(await errorOf(viaConnect.validateVoucher({ code }, auth)));
        assert.deepEqual(a, b, code);
      }
      assert.deepEqual(readable(await errorOf(fast.validateVoucher({ code: "LIMIT" }, auth))), {
        code: "ResourceExhausted",
        message: "too many attempts, ünïcode & spaces",
        reason: "RATE_LIMITED",
        violations: undefined,
        retryMs: 1n,
      });
      // An unexpected failure is INTERNAL without the internal detail, as everywhere.
      const crash = await errorOf(fast.validateVoucher({ code: "CRASH" }, auth));
      assert.equal(crash.code, Code.Internal);
      assert.doesNotMatch(crash.rawMessage, /db-7/);
    });

    test("runs the listener's interceptors: without a token the call is UNAUTHENTICATED and the handler never runs", async () => {
      seen.calls = 0;
      const client = createClient(VoucherService, createGrpcTransport({ baseUrl: server.url }));
      const err = await errorOf(client.validateVoucher({ code: "OK-2" }));
      assert.equal(err.code, Code.Unauthenticated);
      assert.equal(seen.calls, 0);
    });

    test("grpc-timeout is the handler's deadline, a cancelled call aborts the handler, and a malformed timeout is INVALID_ARGUMENT", async () => {
      seen.aborted = [];
      const wait = envelope(toBinary(ValidateVoucherRequestSchema, create(ValidateVoucherRequestSchema, { code: "WAIT" })));
      // By hand, so that no client-side timer cancels the call before the server's deadline.
      const timedOut = await rawCall(server.url, { ...auth.headers, "grpc-timeout": "150m" }, wait);
      assert.equal(timedOut.trailers["grpc-status"], String(Code.DeadlineExceeded));
      const client = createClient(VoucherService, createGrpcTransport({ baseUrl: server.url }));
      const cancel = new AbortController();
      setTimeout(() => cancel.abort(), 150);
      assert.equal((await errorOf(client.validateVoucher({ code: "WAIT" }, { ...auth, signal: cancel.signal }))).code, Code.Canceled);
      await waitFor("the handler to see both aborts", async () => seen.aborted.length === 2, 3_000);
      assert.deepEqual(seen.aborted, ["DeadlineExceeded", "Canceled"]);
      const res = await rawCall(server.url, { ...auth.headers, "grpc-timeout": "soon" }, envelope(toBinary(ValidateVoucherRequestSchema, create(ValidateVoucherRequestSchema, { code: "OK-3" }))));
      assert.deepEqual([res.status, res.trailers["grpc-status"]], [200, String(Code.InvalidArgument)]);
    });

    test("refuses a body over readMaxBytes, a truncated envelope and two messages, before any handler runs", async () => {
      seen.calls = 0;
      const message = (code: string) => toBinary(ValidateVoucherRequestSchema, create(ValidateVoucherRequestSchema, { code }));
      const cases: [string, Buffer, Code][] = [
        ["over readMaxBytes", envelope(message("X".repeat(READ_MAX_BYTES + 1))), Code.ResourceExhausted],
        ["truncated", envelope(message("OK-4")).subarray(0, 8), Code.InvalidArgument],
        ["two messages", Buffer.concat([envelope(message("OK-4")), envelope(message("OK-5"))]), Code.Unimplemented],
        ["compressed flag without grpc-encoding", Buffer.from([1, 0, 0, 0, 0]), Code.Internal],
        ["no message", Buffer.alloc(0), Code.Unimplemented],
      ];
      for (const [name, body, code] of cases) {
        const res = await rawCall(server.url, auth.headers, body);
        assert.equal(res.trailers["grpc-status"], String(code), name);
      }
      assert.equal(seen.calls, 0);
    });
  });

  describe("the grpc-js service transport", () => {
    let transport: ServiceTransport;
    let client: Client<typeof VoucherService>;
    const added: string[] = [];
    const probe: Interceptor = (next) => (req) => {
      req.header.set("x-probe", "from-interceptor");
      added.push(req.method.name);
      return next(req);
    };
    before(() => {
      transport = createServiceTransport({ baseUrl: server.url, interceptors: [probe] });
      client = createClient(VoucherService, transport);
    });
    after(() => transport.close());

    test("a call carries the caller's and the interceptors' headers and returns the server's headers, trailers and message", async () => {
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const res = await client.validateVoucher({ code: "OK-6" }, { ...auth, onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) });
      assert.deepEqual([res.voucher?.code, res.voucher?.ownerUserId], ["OK-6", "user-7"]);
      assert.equal(header?.get("x-echo"), "from-interceptor");
      assert.equal(trailer?.get("x-finished"), "yes");
      assert.ok(added.includes("ValidateVoucher"));
    });

    test("an error arrives as the ConnectError connect's own gRPC transport gives: code, message, ErrorInfo, BadRequest, RetryInfo", async () => {
      const connect = createClient(VoucherService, createGrpcTransport({ baseUrl: server.url }));
      for (const code of ["FIELDS", "LIMIT", "CRASH"]) {
        assert.deepEqual(readable(await errorOf(client.validateVoucher({ code }, auth))), readable(await errorOf(connect.validateVoucher({ code }, auth))), code);
      }
      assert.equal(readable(await errorOf(client.validateVoucher({ code: "FIELDS" }, auth))).violations?.[0], "code: must name a code");
    });

    test("a deadline ends the call with DEADLINE_EXCEEDED and an aborted signal with CANCELED", async () => {
      const started = Date.now();
      assert.equal((await errorOf(client.validateVoucher({ code: "WAIT" }, { ...auth, timeoutMs: 150 }))).code, Code.DeadlineExceeded);
      assert.ok(Date.now() - started < 2_000);
      const cancel = new AbortController();
      setTimeout(() => cancel.abort(), 100);
      assert.equal((await errorOf(client.validateVoucher({ code: "WAIT" }, { ...auth, signal: cancel.signal }))).code, Code.Canceled);
    });

    test("a server stream delivers every message, and an error after them arrives with its reason", async () => {
      const admin = { headers: { authorization: `Bearer ${await tokens.sign("admin-1", ["ADMIN"])}` } };
      const rows: number[] = [];
      for await (const chunk of client.exportCodes({ bookId: "b" }, admin)) rows.push(chunk.rowCount);
      assert.deepEqual(rows, [1, 2, 3]);
      const broken: number[] = [];
      const err = await errorOf(
        (async () => {
          for await (const chunk of client.exportCodes({ bookId: "BREAK" }, admin)) broken.push(chunk.rowCount);
        })(),
      );
      assert.deepEqual([broken, Code[err.code], err.findDetails(ErrorInfoSchema)[0]?.reason], [[1, 2, 3], "ResourceExhausted", "EXPORT_LIMITED"]);
      assert.equal((await errorOf((async () => { for await (const _ of client.exportCodes({ bookId: "b" })) break; })())).code, Code.Unauthenticated);
    });

    test("after close, unary and streaming calls fail UNAVAILABLE, as for a peer that is down", async () => {
      const closing = createServiceTransport({ baseUrl: server.url });
      const peer = createClient(VoucherService, closing);
      assert.equal((await peer.validateVoucher({ code: "OK-8" }, auth)).valid, true);
      closing.close();
      assert.equal(Code[(await errorOf(peer.validateVoucher({ code: "OK-8" }, auth))).code], "Unavailable");
      const streamed = await errorOf((async () => { for await (const _ of peer.exportCodes({ bookId: "b" }, auth)) break; })());
      assert.equal(Code[streamed.code], "Unavailable");
    });

    test("a peer that was down is called again within two seconds of coming back", async () => {
      const port = await freePort();
      const peerTransport = createServiceTransport({ baseUrl: `http://127.0.0.1:${port}` });
      const peer = createClient(VoucherService, peerTransport);
      assert.equal((await errorOf(peer.validateVoucher({ code: "OK-7" }, auth))).code, Code.Unavailable);
      // Let grpc-js back off a few times while nothing listens.
      await new Promise((r) => setTimeout(r, 1_500));
      const back = await startServer(tokens, port);
      try {
        const upAt = Date.now();
        await waitFor("the peer to answer", () => peer.validateVoucher({ code: "OK-7" }, auth).then((r) => r.valid, () => false), 5_000, 50);
        assert.ok(Date.now() - upAt < 2_000, `took ${Date.now() - upAt} ms`);
      } finally {
        peerTransport.close();
        await back.close();
      }
    });
  });
});

function gzip() {
  return {
    name: "gzip",
    compress: async (b: Uint8Array) => new Uint8Array(gzipSync(b)),
    decompress: async (b: Uint8Array) => new Uint8Array(gunzipSync(b)),
  };
}

function envelope(message: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** One unary gRPC request written by hand, for bodies no client would send. */
function rawCall(baseUrl: string, headers: Record<string, string>, body: Buffer): Promise<{ status: number; trailers: Record<string, string> }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(baseUrl);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": "/vouch.voucher.v1.VoucherService/ValidateVoucher",
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let status = 0;
    let trailers: Record<string, string> = {};
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      if (h["grpc-status"] !== undefined) trailers = h as Record<string, string>; // trailers-only
    });
    stream.on("trailers", (t) => (trailers = t as Record<string, string>));
    stream.on("data", () => {});
    stream.on("end", () => {
      session.close();
      resolve({ status, trailers });
    });
    stream.on("error", reject);
    stream.end(body);
  });
}
