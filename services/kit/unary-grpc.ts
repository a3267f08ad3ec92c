// A lean path for the calls that make up nearly all of our traffic: unary gRPC over HTTP/2
// with protobuf and no compression (every typed client, grpcurl, the edge's upstream hop).
// connect-node serves them correctly but runs each one through a chain of async iterators,
// abort controllers and web-standard request objects: on this project's 2-core benchmark
// machine that was 0.46 ms of server CPU per empty call against 0.08 ms for grpc-js's
// server (docs/benchmarks.md, "gRPC paths"). Here the request body is read in one
// piece and answered in one write, while everything with meaning is still connect's own:
// the same interceptors, `invokeUnaryImplementation`, the handler context, message size
// limits, deadline parsing and the error trailers (`setTrailerStatus`). Anything this path
// does not take (Connect, gRPC-Web, JSON, compression, streams, routes registered with their
// own options) goes to connect-node unchanged.
import type { DescService, Message } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createMethodImplSpec,
  createServiceImplSpec,
  type ConnectRouter,
  type ContextValues,
  type Interceptor,
  type MethodImplSpec,
} from "@connectrpc/connect";
import { createMethodSerializationLookup, invokeUnaryImplementation, type Serialization } from "@connectrpc/connect/protocol";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { NodeRequest, NodeResponse } from "./server.js";

interface UnaryRoute {
  spec: MethodImplSpec & { kind: "unary" };
  input: Serialization<Message>;
  output: Serialization<Message>;
}

export interface UnaryGrpcOptions {
  interceptors: Interceptor[];
  contextValues: (req: NodeRequest) => ContextValues;
  readMaxBytes: number;
  shutdownSignal: AbortSignal;
}

const ENVELOPE_HEADER_BYTES = 5;
const COMPRESSED_FLAG = 0b1;
const PROTO_CONTENT_TYPES = new Set(["application/grpc", "application/grpc+proto"]);

/**
 * Unary gRPC handlers for the rpcs a router registers. `record(router)` wraps a router so
 * every rpc still goes to connect as well; `take(req, res)` answers a request this path can
 * serve and returns false for every other one.
 */
export function createUnaryGrpcPath(opts: UnaryGrpcOptions) {
  const routes = new Map<string, UnaryRoute>();

  function add(spec: MethodImplSpec) {
    if (spec.kind !== "unary") return;
    const limits = { readMaxBytes: opts.readMaxBytes, writeMaxBytes: 0xffffffff };
    const serialization = createMethodSerializationLookup(spec.method, undefined, undefined, limits);
    routes.set(`/${spec.method.parent.typeName}/${spec.method.name}`, {
      spec,
      input: serialization.getI(true),
      output: serialization.getO(true),
    });
  }

  /** The router connect gets, recording each rpc registered without options of its own. */
  function record(router: ConnectRouter): ConnectRouter {
    const recording: ConnectRouter = {
      get handlers() {
        return router.handlers;
      },
      service(service: DescService, implementation, options) {
        router.service(service, implementation, options);
        if (!options) Object.values(createServiceImplSpec(service, implementation).methods).forEach(add);
        return recording;
      },
      rpc(method, impl, options) {
        router.rpc(method, impl, options);
        if (!options) add(createMethodImplSpec(method, impl));
        return recording;
      },
    };
    return recording;
  }

  function take(req: NodeRequest, res: NodeResponse): boolean {
    if (req.httpVersionMajor !== 2 || req.method !== "POST") return false;
    const contentType = req.headers["content-type"]?.toLowerCase();
    if (!contentType || !PROTO_CONTENT_TYPES.has(contentType)) return false;
    const encoding = req.headers["grpc-encoding"];
    if (encoding !== undefined && encoding !== "identity") return false;
    const route = routes.get((req.url ?? "").split("?")[0]);
    if (!route) return false;
    void serve(route, req, res, contentType);
    return true;
  }

  async function serve(route: UnaryRoute, req: NodeRequest, res: NodeResponse, contentType: string) {
    const { spec } = route;
    const requestAbort = new AbortController();
    let answered = false;
    // Closed before we answered: the client cancelled (a reset stream also counts as
    // "finished" for the compat response, so its own flags cannot tell).
    res.once("close", () => {
      if (!answered) requestAbort.abort(new ConnectError("the client cancelled the call", Code.Canceled));
    });
    const timeout = parseTimeout(headerValue(req.headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
    const context = createHandlerContext({
      service: spec.method.parent,
      method: spec.method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: `http://${req.headers[":authority"] ?? "localhost"}${req.url}`,
      timeoutMs: timeout.timeoutMs,
      shutdownSignal: opts.shutdownSignal,
      requestSignal: requestAbort.signal,
      requestHeader: requestHeaders(req),
      responseHeader: { "content-type": contentType },
      responseTrailer: { "grpc-status": "0" },
      contextValues: opts.contextValues(req),
    });
    let body: Buffer | undefined;
    try {
      if (timeout.error) throw timeout.error;
      const input = route.input.parse(unwrapEnvelope(await readBody(req, opts.readMaxBytes)));
      const output = await invokeUnaryImplementation(spec, context, input, opts.interceptors);
      body = wrapEnvelope(route.output.serialize(output));
      context.abort();
    } catch (err) {
      const error = err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
      context.abort(error);
      setTrailerStatus(context.responseTrailer, error);
    }
    answered = true;
    if (res.destroyed) return;
    res.writeHead(200, toNodeHeaders(context.responseHeader));
    res.addTrailers(toNodeHeaders(context.responseTrailer));
    if (body) res.end(body);
    else res.end();
  }

  return { record, take };
}

function headerValue(value: string | string[] | undefined): string | null {
  if (value === undefined) return null;
  return Array.isArray(value) ? value.join(", ") : value;
}

function requestHeaders(req: NodeRequest): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.startsWith(":") || value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) headers.append(name, v);
    else headers.set(name, value);
  }
  return headers;
}

function toNodeHeaders(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  headers.forEach((value, name) => {
    out[name] = value;
  });
  return out;
}

/** The whole request body, refused as soon as it outgrows one envelope of `readMaxBytes`. */
function readBody(req: NodeRequest, readMaxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > readMaxBytes + ENVELOPE_HEADER_BYTES) {
        req.removeAllListeners("data");
        req.resume();
        reject(new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
        return;
      }
      chunks.push(chunk);
    });
    req.once("end", () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)));
    req.once("error", reject);
  });
}

/** The one message of a unary request, with the same protocol errors connect raises. */
function unwrapEnvelope(bytes: Buffer): Uint8Array {
  if (bytes.length < ENVELOPE_HEADER_BYTES) {
    if (bytes.length === 0) throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
    throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  }
  if (bytes[0] & COMPRESSED_FLAG) throw new ConnectError("protocol error: received compressed message without grpc-encoding", Code.Internal);
  const length = bytes.readUInt32BE(1);
  const end = ENVELOPE_HEADER_BYTES + length;
  if (bytes.length < end) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  if (bytes.length > end) throw new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
  return bytes.subarray(ENVELOPE_HEADER_BYTES, end);
}

function wrapEnvelope(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(ENVELOPE_HEADER_BYTES + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, ENVELOPE_HEADER_BYTES);
  return out;
}
