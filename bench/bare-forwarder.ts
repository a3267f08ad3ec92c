// The floor under any edge built on the prescribed stack: connect-node serving Connect over
// HTTP/1.1 and forwarding each call over the kit's gRPC transport (grpc-js), and nothing else —
// no token check, rate limits, CORS, security headers, logs, metrics or traces. bench/edge.ts
// runs it beside the real edge, in the same rounds, so the gap the edge's own work adds and
// the gap no edge on this stack can close are told apart.
//
//   node --import tsx bench/bare-forwarder.ts <port> <voucher base URL>   # prints "ready"
import * as http from "node:http";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { createServiceTransport } from "../services/kit/grpc-transport.js";

const [port, upstream] = [Number(process.argv[2]), process.argv[3]];
const transport = createServiceTransport({ baseUrl: upstream });
const getBook = VoucherService.method.getBook;
const adapter = connectNodeAdapter({
  routes: (router) =>
    router.rpc(getBook, async (req, ctx) => {
      // The token goes upstream unread: the voucher service checks it, as behind the edge.
      const header = new Headers({ authorization: ctx.requestHeader.get("authorization") ?? "" });
      return (await transport.unary(getBook, ctx.signal, 10_000, header, req)).message;
    }),
});
http.createServer(adapter).listen(port, "127.0.0.1", () => console.log("ready"));
