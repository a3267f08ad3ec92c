// The edge's listener. Like the kit's server (one port: gRPC over h2c, Connect and gRPC-Web
// over HTTP/1.1 and HTTP/2, health, reflection, /healthz /readyz /metrics), plus what only a
// browser-facing process needs before any rpc handler runs: security headers on every
// answer, CORS (preflights never reach the rpc router, which would answer 405), and the
// console's static files. The kit's server offers no hook around its request handler, hence
// this module (see the edge's note: a `wrapHandler` option in kit/server.ts would remove it).
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Health } from "../../gen/health/v1/health_pb.js";
import { authInterceptor, type TokenVerifier } from "../kit/auth.js";
import type { Config } from "../kit/config.js";
import { clientIpKey } from "../kit/context.js";
import { HealthMonitor, type ReadinessCheck } from "../kit/health.js";
import { observeInterceptor } from "../kit/interceptors.js";
import type { Logger } from "../kit/log.js";
import type { Metrics } from "../kit/metrics.js";
import { reflectionRoutes } from "../kit/reflection.js";
import { sendHttp, type HttpRoute, type NodeRequest, type NodeResponse, type RunningServer } from "../kit/server.js";
import type { CorsPolicy } from "./cors.js";
import { setSecurityHeaders } from "./security-headers.js";

export interface EdgeServerOptions {
  config: Config;
  log: Logger;
  metrics: Metrics;
  services: DescService[];
  routes: (router: ConnectRouter) => void;
  readiness: ReadinessCheck[];
  verifier: TokenVerifier;
  cors: CorsPolicy;
  /** Plain HTTP routes after /healthz, /readyz and /metrics, tried in order. */
  httpRoutes: HttpRoute[];
  /** Run before the token is verified (hidden-rpc guard, per-address limit). */
  beforeAuth: Interceptor[];
  /** Run after it (service-token refusal, per-user limit). */
  afterAuth: Interceptor[];
  trustForwardedFor: boolean;
}

const HTTP2_PREFACE_START = "PRI";

/** The address of the person calling: the socket peer, or the first x-forwarded-for entry when a proxy of ours sets it. */
export function clientIp(req: NodeRequest, trustForwardedFor: boolean): string {
  if (trustForwardedFor) {
    const forwarded = req.headers["x-forwarded-for"];
    const first = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(",")[0]?.trim();
    if (first) return first;
  }
  return req.socket?.remoteAddress ?? "";
}

function matches(route: HttpRoute, method: string | undefined, path: string) {
  if (route.method !== method && !(route.method === "GET" && method === "HEAD")) return false;
  return route.path.endsWith("/*") ? path.startsWith(route.path.slice(0, -1)) : path === route.path;
}

export function createEdgeServer(opts: EdgeServerOptions) {
  const { config, log, metrics } = opts;
  const health = new HealthMonitor(opts.readiness, opts.services.map((s) => s.typeName));
  const shutdown = new AbortController();

  const httpRoutes: HttpRoute[] = [
    { method: "GET", path: "/healthz", handle: (_req, res) => sendHttp(res, 200, "text/plain", "ok\n") },
    {
      method: "GET",
      path: "/readyz",
      handle: async (_req, res) => {
        const report = await health.readiness();
        sendHttp(res, report.ready ? 200 : 503, "application/json", JSON.stringify(report) + "\n");
      },
    },
    {
      method: "GET",
      path: "/metrics",
      handle: async (_req, res) => sendHttp(res, 200, metrics.registry.contentType, await metrics.registry.metrics()),
    },
    ...opts.httpRoutes,
  ];

  const rpcs = connectNodeAdapter({
    routes: (router) => {
      health.routes(router);
      reflectionRoutes([...opts.services, Health])(router);
      opts.routes(router);
    },
    interceptors: [
      observeInterceptor({ domain: `${config.service}.vouch.dev`, log, metrics }),
      ...opts.beforeAuth,
      authInterceptor(opts.verifier),
      ...opts.afterAuth,
    ],
    contextValues: (req) => createContextValues().set(clientIpKey, clientIp(req, opts.trustForwardedFor)),
    readMaxBytes: 4 * 1024 * 1024,
    shutdownSignal: shutdown.signal,
    fallback: (req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      const route = httpRoutes.find((r) => matches(r, req.method, path));
      if (!route) {
        sendHttp(res, req.method === "GET" || req.method === "HEAD" ? 404 : 405, "text/plain", "not found\n");
        return;
      }
      Promise.resolve(route.handle(req, res)).catch((err) => {
        log.error({ err, path }, "http route failed");
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end("internal error\n");
      });
    },
  });

  const handler = (req: NodeRequest, res: NodeResponse) => {
    setSecurityHeaders(res);
    const outcome = opts.cors.apply(req, res);
    if (outcome === "answered" || outcome === "refused") return;
    rpcs(req, res);
  };

  const h1 = http.createServer(handler);
  let h1InFlight = 0;
  h1.on("request", (_req, res) => {
    h1InFlight++;
    res.once("close", () => h1InFlight--);
  });
  const h2 = http2.createServer({}, handler);
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  const sockets = new Set<net.Socket>();

  // Cleartext HTTP/2 cannot be negotiated, so look at the first bytes (see kit/server.ts).
  const tcp = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < HTTP2_PREFACE_START.length) return;
      socket.off("data", onData);
      socket.pause();
      socket.unshift(head);
      if (head.subarray(0, 3).toString("latin1") === HTTP2_PREFACE_START) {
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
  });

  async function listen(): Promise<RunningServer> {
    await new Promise<void>((resolve, reject) => {
      tcp.once("error", reject);
      tcp.listen(config.port, config.host, () => {
        tcp.off("error", reject);
        resolve();
      });
    });
    const port = (tcp.address() as net.AddressInfo).port;
    const url = `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${port}`;
    log.info({ port, url }, "listening");
    return { port, url, health, close };
  }

  let closing: Promise<void> | undefined;
  function close(): Promise<void> {
    closing ??= (async () => {
      health.markShuttingDown();
      const stopped = new Promise<void>((resolve) => tcp.close(() => resolve()));
      h1.close();
      h1.closeIdleConnections();
      for (const session of sessions) session.close();
      const drained = (async () => {
        while (sessions.size > 0 || h1InFlight > 0) await new Promise((r) => setTimeout(r, 25));
      })();
      const grace = new Promise<void>((resolve) => setTimeout(resolve, config.shutdownGraceMs).unref());
      await Promise.race([drained, grace]);
      // Long streams (a browser watching a job) are told to stop, then cut.
      shutdown.abort(new ConnectError("server is shutting down", Code.Unavailable));
      await new Promise((r) => setTimeout(r, 50));
      for (const session of sessions) session.destroy();
      h1.closeAllConnections();
      for (const socket of sockets) socket.destroy();
      await stopped;
      log.info("stopped");
    })();
    return closing;
  }

  return { listen, health };
}
