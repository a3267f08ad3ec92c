// The outside voucher provider's HTTP API, as seed 002 describes it:
//
//   POST <api>/api/request/voucher  {requestId, phoneNumber, callbackUrl}
//     200 {status: "SUCCESS" | "LATE_SUCCESS", voucherCode, message}        the code, within 3 s
//     202 {status: "PROCESSING", codeChallenge, codeChallengeMethod, message}  at the 3 s mark: a callback will follow
//
// This module only speaks the protocol and sorts failures into the two kinds the worker
// treats differently; the circuit breaker and the timeout are the caller's (breaker.ts).
import * as http from "node:http";
import * as https from "node:https";
import { isS256Challenge, SUPPORTED_METHOD } from "./domain/pkce.js";
import type { ProviderStatus } from "./domain/states.js";

export type ProviderAnswer =
  | { kind: "code"; code: string; status: ProviderStatus }
  | { kind: "acknowledged"; codeChallenge: string };

export interface CodeOrder {
  /** Our code request id: the provider knows the request by it (and should be idempotent by it). */
  requestId: string;
  phoneNumber: string;
  callbackUrl: string;
}

/** The provider is unwell (5xx, unreachable, garbled answer): worth retrying, and counts against the breaker. */
export class ProviderFailure extends Error {
  override name = "ProviderFailure";
}

/**
 * The provider answered, but with something we must not use or that will not change on a
 * retry (a 4xx, a challenge method other than S256). The request fails at once; the
 * provider itself is healthy, so this does not count against the breaker.
 */
export class ProviderRefusal extends Error {
  override name = "ProviderRefusal";
}

/** Voucher codes are short printable tokens; anything else is not a code we would show or text. */
const CODE = /^[\x21-\x7e]{1,128}$/;

export function parseAnswer(httpStatus: number, body: unknown): ProviderAnswer {
  const b = (body ?? {}) as Record<string, unknown>;
  if (httpStatus === 200) {
    const status = b.status === "LATE_SUCCESS" ? "late_success" : b.status === "SUCCESS" ? "success" : undefined;
    if (!status || typeof b.voucherCode !== "string" || !CODE.test(b.voucherCode)) {
      throw new ProviderFailure(`provider answered 200 without a usable code and status`);
    }
    return { kind: "code", code: b.voucherCode, status };
  }
  if (httpStatus === 202) {
    if (b.codeChallengeMethod !== SUPPORTED_METHOD) {
      throw new ProviderRefusal(`provider acknowledged with code challenge method ${JSON.stringify(b.codeChallengeMethod)}; only ${SUPPORTED_METHOD} is accepted`);
    }
    if (typeof b.codeChallenge !== "string" || !isS256Challenge(b.codeChallenge)) {
      throw new ProviderFailure("provider acknowledged without a well-formed S256 code challenge");
    }
    return { kind: "acknowledged", codeChallenge: b.codeChallenge };
  }
  if (httpStatus >= 400 && httpStatus < 500 && httpStatus !== 408 && httpStatus !== 429) {
    throw new ProviderRefusal(`provider refused the request with HTTP ${httpStatus}${typeof b.message === "string" ? `: ${b.message.slice(0, 200)}` : ""}`);
  }
  throw new ProviderFailure(`provider answered HTTP ${httpStatus}`);
}

export interface ProviderClient {
  requestCode(order: CodeOrder, signal: AbortSignal): Promise<ProviderAnswer>;
  close(): void;
}

const MAX_ANSWER_BYTES = 64 * 1024;

/**
 * Over node:http with a keep-alive agent rather than fetch: on these machines undici's
 * fetch costs about twice the CPU per call, and this is the hottest outside call we make.
 */
export function createProviderClient(apiUrl: string, opts: { maxSockets?: number } = {}): ProviderClient {
  const endpoint = new URL(`${apiUrl}/api/request/voucher`);
  const transport = endpoint.protocol === "https:" ? https : http;
  const agent = new transport.Agent({ keepAlive: true, maxSockets: opts.maxSockets ?? 64 });
  return {
    requestCode(order, signal) {
      return new Promise<ProviderAnswer>((resolve, reject) => {
        const unreachable = (err: unknown) =>
          reject(new ProviderFailure(`provider unreachable: ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
        const req = transport.request(
          endpoint,
          { method: "POST", agent, signal, headers: { "content-type": "application/json", accept: "application/json" } },
          (res) => {
            const chunks: Buffer[] = [];
            let size = 0;
            res.on("data", (chunk: Buffer) => {
              size += chunk.length;
              if (size > MAX_ANSWER_BYTES) res.destroy(new Error("answer too large"));
              else chunks.push(chunk);
            });
            res.on("error", unreachable);
            res.on("end", () => {
              let body: unknown;
              try {
                body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
              } catch {
                body = undefined;
              }
              try {
                resolve(parseAnswer(res.statusCode ?? 0, body));
              } catch (err) {
                reject(err);
              }
            });
          },
        );
        req.on("error", unreachable);
        req.end(JSON.stringify(order));
      });
    },
    close: () => agent.destroy(),
  };
}
