// The one listener every Vouch process uses. On a single port it speaks gRPC over
// cleartext HTTP/2, Connect and gRPC-Web over HTTP/1.1 and HTTP/2, grpc.health.v1, server
// reflection, and plain HTTP (/healthz, /readyz, /metrics and a service's own routes).
import * as http from "node:http";
import * as http2 from "node:http2";
import { setMaxListeners } from "node:events";
import * as net from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Config } from "./config.js";
import type { Logger } from "./log.js";
import type { Metrics } from "./metrics.js";
import { HealthMonitor, type ReadinessCheck } from "./health.js";
import { reflectionRoutes } from "./reflection.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { observeInterceptor } from "./interceptors.js";
import { inputGuardInterceptor } from "./input-guard.js";
import { authInterceptor, type TokenVerifier } from "./auth.js";
import { clientIpKey } from "./context.js";
import { createUnaryGrpcPath } from "./unary-grpc.js";

type NodeHandlerArgs = Parameters<NonNullable<ConnectNodeAdapterOptions["fallback"]>>;
export type NodeRequest = NodeHandlerArgs[0];
export type NodeResponse = NodeHandlerArgs[1];
export type NodeHandler = (req: NodeRequest, res: NodeResponse) => void;

/** Writes a whole plain-HTTP response. */
export function sendHttp(res: NodeResponse, status: number, contentType: string, body: string | Uint8Array, headers: Record<string, string> = {}) {
  res.writeHead(status, { "content-type": contentType, ...headers });
  res.end(body);
}

/** A plain HTTP endpoint next to the rpcs (webhooks, JWKS, callbacks, static files). */
export interface HttpRoute {
  method: "GET" | "POST" | "HEAD";
  /** Exact path, or a prefix when it ends with `/*`. */
  path: string;
  handle: (req: NodeRequest, res: NodeResponse) => void | Promise<void>;
}

export interface ServiceServerOptions {
  config: Config;
  log: Logger;
  metrics: Metrics;
  /** The rpcs this process serves (their descriptors feed reflection and health). */
  services: DescService[];
  routes: (router: ConnectRouter) => void;
  /** Dependencies that must answer for the process to be ready. */
  readiness: ReadinessCheck[];
  /** Verifies access tokens; every service has one so the contract's access policy holds. */
  verifier: TokenVerifier;
  httpRoutes?: HttpRoute[];
  /** Interceptors run before the token is verified: cheap refusals (hidden rpcs, per-address limits). */
  beforeAuth?: Interceptor[];
  /** Extra interceptors, innermost, after authentication. */
  interceptors?: Interceptor[];
  /**
   * Sees every request before the rpc router and the plain routes, and may answer it
   * itself: the edge's security headers and CORS (a preflight must never reach the
   * router, which would answer it 404).
   */
  wrapHandler?: (next: NodeHandler) => NodeHandler;
  /** Trust `x-forwarded-for` for the client IP (only behind our own edge); default `config.trustForwardedFor` (TRUST_FORWARDED_FOR). */
  trustForwardedFor?: boolean;
  /** Largest request message accepted; larger ones get RESOURCE_EXHAUSTED. */
  readMaxBytes?: number;
}

export interface RunningServer {
  port: number;
  /** Base URL for clients, e.g. `http://127.0.0.1:50051`. */
  url: string;
  health: HealthMonitor;
  /** Graceful: stop accepting, report NOT_SERVING, let in-flight calls finish within the grace period. */
  close(): Promise<void>;
}

const HTTP2_PREFACE_START = "PRI";

/** The address of the person calling: the socket peer, or the first x-forwarded-for entry when a proxy of ours sets it. */
function clientIp(req: NodeRequest, trustForwardedFor: boolean): string {
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

export function createServiceServer(opts: ServiceServerOptions) {
  const { config, log, metrics } = opts;
  const domain = `${config.service}.vouch.dev`;
  const health = new HealthMonitor(opts.readiness, opts.services.map((s) => s.typeName));
  const shutdown = new AbortController();
  // Every in-flight call (each streaming one for its whole life) listens on this signal:
  // hundreds at once are normal, not a leak.
  setMaxListeners(0, shutdown.signal);
  const trustForwardedFor = opts.trustForwardedFor ?? config.trustForwardedFor ?? false;

  const builtinRoutes: HttpRoute[] = [
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
      handle: async (_req, res) => {
        const body = await metrics.registry.metrics();
        sendHttp(res, 200, metrics.registry.contentType, body);
      },
    },
  ];
  const httpRoutes = [...builtinRoutes, ...(opts.httpRoutes ?? [])];

  const interceptors = [
    observeInterceptor({ domain, log, metrics }),
    ...(opts.beforeAuth ?? []),
    authInterceptor(opts.verifier),
    inputGuardInterceptor(),
    ...(opts.interceptors ?? []),
  ];
  const contextValues = (req: NodeRequest) => createContextValues().set(clientIpKey, clientIp(req, trustForwardedFor));
  const readMaxBytes = opts.readMaxBytes ?? 4 * 1024 * 1024;
  // Unary gRPC calls take the lean path; everything else (and every rpc too, registered
  // twice) is connect-node's. Both see the same interceptors, context values and limits.
  const unaryGrpc = createUnaryGrpcPath({ interceptors, contextValues, readMaxBytes, shutdownSignal: shutdown.signal });
  const connectRpcs = connectNodeAdapter({
    routes: (connectRouter) => {
      const router = unaryGrpc.record(connectRouter);
      health.routes(router);
      reflectionRoutes([...opts.services, Health])(router);
      opts.routes(router);
    },
    interceptors,
    contextValues,
    readMaxBytes,
    shutdownSignal: shutdown.signal,
    fallback: (req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      const route = httpRoutes.find((r) => matches(r, req.method, path));
      if (!route) {
        sendHttp(res, 404, "text/plain", "not found\n");
        return;
      }
      Promise.resolve(route.handle(req, res)).catch((err) => {
        log.error({ err, path }, "http route failed");
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end("internal error\n");
      });
    },
  });

  const rpcs: NodeHandler = (req, res) => {
    if (!unaryGrpc.take(req, res)) connectRpcs(req, res);
  };
  const handler = opts.wrapHandler ? opts.wrapHandler(rpcs) : rpcs;
  const h1 = http.createServer(handler);
  // In-flight HTTP/1.1 requests: shutdown waits for them, idle keep-alive sockets it just closes.
  let h1InFlight = 0;
  h1.on("request", (_req, res) => {
    h1InFlight++;
    res.once("close", () => h1InFlight--);
  });
  const h2 = http2.createServer({}, handler);
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    // A gRPC client keeps one connection per address it resolved, for good: ending each
    // after its maximum age (±10%, so a fleet's connections do not all end at once) makes
    // it resolve again and take in replicas added meanwhile. Graceful: in-flight calls and
    // streams finish on the old connection, new calls go to a new one.
    const aged = config.maxConnectionAgeMs > 0 ? setTimeout(() => session.close(), config.maxConnectionAgeMs * (0.9 + Math.random() * 0.2)).unref() : undefined;
    session.once("close", () => {
      clearTimeout(aged);
      sessions.delete(session);
    });
  });
  const sockets = new Set<net.Socket>();

  // HTTP/2 without TLS cannot negotiate with HTTP/1.1, so look at the first bytes: an
  // HTTP/2 client always opens with the "PRI * HTTP/2.0" preface.
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
      // Whatever is still running (long streams, stuck calls) is told to stop, then cut.
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
