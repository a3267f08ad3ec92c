// The transport every screen uses: Connect (JSON) to the edge, with the session's access
// token on each call. A call that finds the token expired refreshes it and runs once more.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { EDGE_URL } from "./env.js";
import { session } from "./session.js";

const withToken: Interceptor = (next) => async (req) => {
  const token = await session.accessToken();
  if (token) req.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(req);
  } catch (err) {
    const ce = ConnectError.from(err);
    const expired = ce.code === Code.Unauthenticated && ce.findDetails(ErrorInfoSchema)[0]?.reason === "TOKEN_EXPIRED";
    if (!expired || req.stream || !session.get()) throw err;
    const renewed = await session.refresh();
    req.header.set("authorization", `Bearer ${renewed?.accessToken ?? ""}`);
    return next(req);
  }
};

export const transport = createConnectTransport({ baseUrl: EDGE_URL, interceptors: [withToken] });
