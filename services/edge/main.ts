// Composition root of the browser edge: config → platform (Redis for rate limits and the
// token verifier's revocation check) → one gRPC transport per service → generic forwarding
// of every browser-facing rpc → CORS, security headers, JWKS, the console's static build →
// the kit's listener, like every service, with the edge's interceptors and its CORS in front.
//
// `startEdge` builds and listens on the configured port (0 in tests); run as a program, this
// file also stops gracefully on SIGTERM/SIGINT.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { DescService } from "@bufbuild/protobuf";
import { createServiceTransport } from "../kit/grpc-transport.js";
import { AuthService } from "../../gen/vouch/auth/v1/auth_pb.js";
import { PromotionService } from "../../gen/vouch/promotion/v1/promotion_pb.js";
import { ProviderService } from "../../gen/vouch/provider/v1/provider_pb.js";
import { VoucherService } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import type { TokenVerifier } from "../kit/auth.js";
import { loadConfig, type Config } from "../kit/config.js";
import { listen, startPlatform, type Platform } from "../kit/platform.js";
import { createRateLimiter } from "../kit/ratelimit.js";
import type { RunningServer } from "../kit/server.js";
import { consoleRoute } from "./console.js";
import { createCorsPolicy } from "./cors.js";
import { forwardService } from "./forward.js";
import { jwksRoute } from "./jwks.js";
import { perIpLimit, perUserLimit } from "./limits.js";
import { hiddenRpcGuard, refuseServiceTokens } from "./policy.js";
import { setSecurityHeaders } from "./security-headers.js";
import { loadEdgeSettings, type EdgeSettings } from "./settings.js";

/** The services the edge fronts, and which peer serves each. */
export const FRONTED: [DescService, keyof Config["peers"]][] = [
  [AuthService, "auth"],
  [PromotionService, "promotion"],
  [VoucherService, "voucher"],
  [ProviderService, "provider"],
];

export interface EdgeProcess {
  platform: Platform<unknown>;
  server: RunningServer;
  /** Stops listening (in-flight calls finish within the grace period), then closes Redis. */
  close(): Promise<void>;
}

export async function startEdge(config: Config, settings: EdgeSettings, opts: { verifier?: TokenVerifier } = {}): Promise<EdgeProcess> {
  // The platform's verifier, like every service's: auth's keys, each token's signature
  // checked once and remembered, its expiry and revocation (on the platform's Redis client)
  // on every call.
  const platform = await startPlatform<unknown>(config, { redis: true, verifier: opts.verifier });
  try {
    const { log, metrics, redis } = platform;
    const limiter = (name: string, limit: NonNullable<EdgeSettings["perIpLimit"]>) =>
      createRateLimiter(redis, { name, ...limit, log, registry: metrics.registry });
    const beforeAuth = [hiddenRpcGuard()];
    if (settings.perIpLimit) beforeAuth.push(perIpLimit(limiter("edge-ip", settings.perIpLimit)));
    const afterAuth = [refuseServiceTokens()];
    if (settings.perUserLimit) afterAuth.push(perUserLimit(limiter("edge-user", settings.perUserLimit)));

    const cors = createCorsPolicy(settings.corsOrigins);
    const server = await listen(platform, {
      services: FRONTED.map(([service]) => service),
      routes: (router) => {
        for (const [service, peer] of FRONTED) {
          // One HTTP/2 connection per service, multiplexing every forwarded call.
          const transport = createServiceTransport({ baseUrl: config.peers[peer] });
          platform.onClose(() => transport.close());
          forwardService(router, service, transport, { defaultTimeoutMs: settings.defaultTimeoutMs });
        }
      },
      // Security headers on every answer; CORS before anything else (preflights end here).
      wrapHandler: (next) => (req, res) => {
        setSecurityHeaders(res);
        const outcome = cors.apply(req, res);
        if (outcome === "answered" || outcome === "refused") return;
        next(req, res);
      },
      httpRoutes: [
        jwksRoute({ authUrl: config.peers.auth, cacheMs: settings.jwksCacheMs, log }),
        consoleRoute(settings.staticDir),
      ],
      beforeAuth,
      interceptors: afterAuth,
      trustForwardedFor: settings.trustForwardedFor,
    });
    return {
      platform,
      server,
      async close() {
        await server.close();
        await platform.close();
      },
    };
  } catch (err) {
    await platform.close();
    throw err;
  }
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const edge = await startEdge(loadConfig("edge"), loadEdgeSettings());
  const stop = async (signal: string) => {
    edge.platform.log.info({ signal }, "shutting down");
    await edge.close();
    process.exit(0);
  };
  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));
}
