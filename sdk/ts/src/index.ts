// @vouch/sdk: typed clients for every Vouch service, over Connect (HTTP/1.1 or HTTP/2) or
// gRPC (HTTP/2), sharing one session that attaches and refreshes the user's tokens.
//
//   const vouch = createVouchClient({ baseUrl: "http://127.0.0.1:8080", transport: "connect" });
//   await vouch.auth.login({ identifier: "ann@example.com", password: "…" }); // the session keeps the tokens
//   const { vouchers } = await vouch.voucher.listMyVouchers({});
//
// `baseUrl` is one URL when everything is reached through one address (the edge, an
// ingress), or one per service (`{ auth: "http://127.0.0.1:50051", voucher: … }`).
// In a browser, pass `transport: (baseUrl, interceptors) => createConnectTransport({ baseUrl, interceptors })`
// from @connectrpc/connect-web.
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { PromotionService } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { ProviderService } from "../../../gen/vouch/provider/v1/provider_pb.js";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { createSession, type Session, type SessionOptions } from "./session.js";

// The contracts: service descriptors and message types, for custom clients and servers.
export * as auth from "../../../gen/vouch/auth/v1/auth_pb.js";
export * as promotion from "../../../gen/vouch/promotion/v1/promotion_pb.js";
export * as voucher from "../../../gen/vouch/voucher/v1/voucher_pb.js";
export * as provider from "../../../gen/vouch/provider/v1/provider_pb.js";
export * as events from "../../../gen/vouch/events/v1/events_pb.js";
export { AuthService, PromotionService, ProviderService, VoucherService };
export { createSession, type Session, type SessionOptions, type Tokens } from "./session.js";

export type ServiceKey = "auth" | "promotion" | "voucher" | "provider";
export type TransportFactory = (baseUrl: string, interceptors: Interceptor[]) => Transport;

export interface VouchClientOptions {
  /** One base URL for every service, or one per service. */
  baseUrl: string | Record<ServiceKey, string>;
  /** "connect" (default; Connect protocol, HTTP/1.1), "grpc" (HTTP/2), or your own transport factory. */
  transport?: "connect" | "grpc" | TransportFactory;
  /** Session options (saved tokens, persistence callbacks), or a session shared with other clients. */
  session?: Session | SessionOptions;
  /** More interceptors, run outside the token interceptor (logging, tracing). */
  interceptors?: Interceptor[];
}

export interface VouchClient {
  auth: Client<typeof AuthService>;
  promotion: Client<typeof PromotionService>;
  voucher: Client<typeof VoucherService>;
  provider: Client<typeof ProviderService>;
  session: Session;
}

const isSession = (s: Session | SessionOptions | undefined): s is Session => typeof (s as Session | undefined)?.interceptor === "function";

export function createVouchClient(opts: VouchClientOptions): VouchClient {
  const make: TransportFactory =
    typeof opts.transport === "function"
      ? opts.transport
      : opts.transport === "grpc"
        ? (baseUrl, interceptors) => createGrpcTransport({ baseUrl, interceptors })
        : (baseUrl, interceptors) => createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors });
  const session = isSession(opts.session) ? opts.session : createSession(opts.session);
  const url = (service: ServiceKey) => (typeof opts.baseUrl === "string" ? opts.baseUrl : opts.baseUrl[service]);
  const extra = opts.interceptors ?? [];
  const transports = new Map<string, Transport>();
  const transportFor = (service: ServiceKey) => {
    const base = url(service);
    let t = transports.get(base);
    if (!t) transports.set(base, (t = make(base, [...extra, session.interceptor])));
    return t;
  };
  // Refreshes go through a transport without the session's interceptor (no recursion).
  session.connect(make(url("auth"), extra));
  return {
    auth: createClient(AuthService, transportFor("auth")),
    promotion: createClient(PromotionService, transportFor("promotion")),
    voucher: createClient(VoucherService, transportFor("voucher")),
    provider: createClient(ProviderService, transportFor("provider")),
    session,
  };
}
