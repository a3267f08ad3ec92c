// The simulated outside voucher provider: its HTTP JSON API and the callbacks it posts.
//
//   POST /api/request/voucher   {requestId?, phoneNumber, callbackUrl}
//        200 {requestId, status: "SUCCESS", voucherCode, message}                      code ready within the inline window
//        202 {requestId, status: "PROCESSING", codeChallenge, codeChallengeMethod, message}   acknowledged at the window
//        500 {error}                                                                   (errorRate) / no answer at all (stallRate)
//   later, for acknowledged requests: POST <callbackUrl>
//        {requestId, codeVerifier, codeChallengeMethod, status: "SUCCESS" | "LATE_SUCCESS", voucherCode, message}
//
// The provider is idempotent by requestId, like a real one should be: calling again for a
// known request answers the same code or the same challenge, and schedules nothing new.
//
// Control and introspection for tests and demos (not part of the "real" provider's API):
//   GET/PUT /sim/config            the behaviour (see behaviour.ts)
//   GET /sim/calls                 every call received, with how it was answered
//   GET /sim/requests[/<id>]       requests with their code, verifier, challenge and callbacks
//   POST /sim/requests/<id>/callback   post the callback now
//   POST /sim/reset                forget calls and requests, cancel scheduled callbacks
//   GET /healthz, /readyz
import { createHash, randomBytes, randomInt, randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "../kit/log.js";
import { behaviourFor, ConfigError, drawReadyInMs, parseConfig, type Behaviour, type SimConfig } from "./behaviour.js";

export type Answer = "inline" | "acknowledged" | "error" | "stalled" | "bad_request";

export interface SimCall {
  at: string;
  requestId: string;
  phoneNumber: string;
  answer: Answer;
  /** When the answer was sent (unset for stalls). */
  answeredAt?: string;
}

export interface SimCallback {
  at: string;
  attempt: number;
  status: "SUCCESS" | "LATE_SUCCESS";
  voucherCode: string;
  codeVerifier: string;
  httpStatus?: number;
  error?: string;
  /** The receiver's answer body, for tests. */
  response?: unknown;
}

export interface SimRequest {
  requestId: string;
  phoneNumber: string;
  callbackUrl: string;
  receivedAt: string;
  outcome: "inline" | "acknowledged";
  readyInMs: number;
  voucherCode: string;
  codeVerifier: string;
  codeChallenge: string;
  codeChallengeMethod: "S256" | "plain";
  /** Calls received for this request (a retrying client calls more than once). */
  calls: number;
  callbacks: SimCallback[];
}

const CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const MAX_LOG = 20_000;
const MAX_BODY = 16 * 1024;

const MESSAGES = {
  inline: "Your voucher code is ready.",
  processing: "Your request is being processed within 30 seconds",
  SUCCESS: "Thank you for using our services, your voucher code is ready.",
  LATE_SUCCESS: "Thank you for your patience, your voucher code is ready.",
} as const;

function newCode(): string {
  let s = "";
  for (let i = 0; i < 10; i++) s += CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  return `VPS-${s.slice(0, 5)}-${s.slice(5)}`;
}

const s256 = (verifier: string) => createHash("sha256").update(verifier, "ascii").digest("base64url");

function json(res: ServerResponse, status: number, body: unknown) {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body) + "\n");
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new ConfigError("body too large");
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new ConfigError("body is not JSON");
  }
}

export interface ProviderSim {
  handle(req: IncomingMessage, res: ServerResponse): void;
  config(): SimConfig;
  close(): void;
}

export function createProviderSim(opts: { config: SimConfig; log: Logger }): ProviderSim {
  const { log } = opts;
  let config = opts.config;
  let calls: SimCall[] = [];
  const requests = new Map<string, SimRequest>();
  /** Scheduled callbacks by request id, so "call back now" and reset can cancel them. */
  const scheduled = new Map<string, NodeJS.Timeout[]>();
  const timers = new Set<NodeJS.Timeout>();
  const stalled = new Set<ServerResponse>();
  const inflight = new AbortController();

  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, Math.max(0, ms));
    timers.add(t);
    return t;
  };

  function record(call: SimCall) {
    calls.push(call);
    if (calls.length > MAX_LOG) calls = calls.slice(-MAX_LOG / 2);
  }

  function remember(r: SimRequest) {
    requests.set(r.requestId, r);
    if (requests.size > MAX_LOG) {
      for (const id of [...requests.keys()].slice(0, MAX_LOG / 2)) requests.delete(id);
    }
  }

  async function postCallback(r: SimRequest, cb: Omit<SimCallback, "at" | "attempt">, attempts: number) {
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const entry: SimCallback = { ...cb, at: new Date().toISOString(), attempt };
      r.callbacks.push(entry);
      try {
        const res = await fetch(r.callbackUrl, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            requestId: r.requestId,
            codeVerifier: cb.codeVerifier,
            codeChallengeMethod: r.codeChallengeMethod,
            status: cb.status,
            voucherCode: cb.voucherCode,
            message: MESSAGES[cb.status],
          }),
          signal: AbortSignal.any([inflight.signal, AbortSignal.timeout(5_000)]),
        });
        entry.httpStatus = res.status;
        entry.response = await res.json().catch(() => undefined);
        // The receiver asks again later (5xx, e.g. "not acknowledged yet"): retry; anything
        // else is its final word.
        if (res.status < 500) return;
      } catch (err) {
        if (inflight.signal.aborted) return;
        entry.error = err instanceof Error ? err.message : String(err);
      }
      log.debug({ requestId: r.requestId, attempt, status: entry.httpStatus, error: entry.error }, "callback not taken; retrying");
      await new Promise<void>((resolve) => later(Math.min(2_000, 250 * 2 ** (attempt - 1)), resolve));
      if (inflight.signal.aborted) return;
    }
  }

  function scheduleCallback(r: SimRequest, b: Behaviour, atMs: number, cb: Omit<SimCallback, "at" | "attempt">) {
    const t = later(atMs, () => {
      void postCallback(r, cb, b.callbackAttempts);
      if (Math.random() < b.duplicateCallbackRate) later(50, () => void postCallback(r, cb, b.callbackAttempts));
    });
    scheduled.set(r.requestId, [...(scheduled.get(r.requestId) ?? []), t]);
  }

  function plan(requestId: string, phoneNumber: string, callbackUrl: string, b: Behaviour): SimRequest {
    const readyInMs = drawReadyInMs(b.latency);
    const codeVerifier = b.verifier ?? randomBytes(32).toString("base64url");
    const r: SimRequest = {
      requestId,
      phoneNumber,
      callbackUrl,
      receivedAt: new Date().toISOString(),
      outcome: readyInMs <= b.inlineWindowMs ? "inline" : "acknowledged",
      readyInMs,
      voucherCode: newCode(),
      codeVerifier,
      codeChallenge: b.challengeMethod === "S256" ? s256(codeVerifier) : codeVerifier,
      codeChallengeMethod: b.challengeMethod,
      calls: 0,
      callbacks: [],
    };
    remember(r);
    const status = readyInMs > b.lateAfterMs ? "LATE_SUCCESS" : "SUCCESS";
    if (r.outcome === "acknowledged") {
      if (Math.random() >= b.noCallbackRate) scheduleCallback(r, b, readyInMs, { status, voucherCode: r.voucherCode, codeVerifier });
    } else if (Math.random() < b.callbackAfterInlineRate) {
      // A misbehaving provider that answered inline and later calls back anyway, with a
      // verifier nobody was given a challenge for and another code.
      const afterMs = Math.max(readyInMs, b.lateAfterMs) + 1_000;
      scheduleCallback(r, b, afterMs, { status: "LATE_SUCCESS", voucherCode: newCode(), codeVerifier: randomBytes(32).toString("base64url") });
    }
    return r;
  }

  async function requestVoucher(req: IncomingMessage, res: ServerResponse) {
    const at = new Date();
    let body: { requestId?: unknown; phoneNumber?: unknown; callbackUrl?: unknown };
    try {
      body = (await readJson(req)) as typeof body;
    } catch (err) {
      return json(res, 400, { error: "BAD_REQUEST", message: (err as Error).message });
    }
    const phoneNumber = typeof body.phoneNumber === "string" ? body.phoneNumber : "";
    const requestId = typeof body.requestId === "string" && body.requestId ? body.requestId.slice(0, 128) : randomUUID();
    const callbackUrl = typeof body.callbackUrl === "string" ? body.callbackUrl : "";
    if (!phoneNumber || !/^https?:\/\/[^\s]+$/.test(callbackUrl)) {
      record({ at: at.toISOString(), requestId, phoneNumber, answer: "bad_request", answeredAt: at.toISOString() });
      return json(res, 400, { error: "BAD_REQUEST", message: "phoneNumber and an http(s) callbackUrl are required" });
    }
    const b = behaviourFor(config, phoneNumber);
    const call: SimCall = { at: at.toISOString(), requestId, phoneNumber, answer: "stalled" };
    record(call);
    const answer = (a: Answer, status: number, payload: unknown) => {
      call.answer = a;
      call.answeredAt = new Date().toISOString();
      json(res, status, payload);
    };

    const roll = Math.random();
    if (roll < b.errorRate) return answer("error", 500, { error: "INTERNAL", message: "the provider failed" });
    if (roll < b.errorRate + b.stallRate) {
      // Hold the connection without a word until the caller hangs up.
      stalled.add(res);
      res.once("close", () => stalled.delete(res));
      return;
    }

    const known = requests.get(requestId);
    const r = known ?? plan(requestId, phoneNumber, callbackUrl, b);
    r.calls++;
    const sinceReceived = Date.now() - Date.parse(r.receivedAt);
    const wait = r.outcome === "inline" ? r.readyInMs - sinceReceived : b.inlineWindowMs - sinceReceived;
    later(wait, () => {
      if (r.outcome === "inline") {
        answer("inline", 200, { requestId, status: "SUCCESS", voucherCode: r.voucherCode, message: MESSAGES.inline });
      } else {
        answer("acknowledged", 202, {
          requestId,
          status: "PROCESSING",
          codeChallenge: r.codeChallenge,
          codeChallengeMethod: r.codeChallengeMethod,
          message: MESSAGES.processing,
        });
      }
    });
  }

  async function route(req: IncomingMessage, res: ServerResponse) {
    const path = (req.url ?? "/").split("?")[0];
    const method = req.method ?? "GET";
    if (method === "POST" && path === "/api/request/voucher") return requestVoucher(req, res);
    if (method === "GET" && (path === "/healthz" || path === "/readyz")) return json(res, 200, { ok: true });
    if (path === "/sim/config") {
      if (method === "GET") return json(res, 200, config);
      if (method === "PUT") {
        try {
          config = parseConfig(await readJson(req));
        } catch (err) {
          if (err instanceof ConfigError) return json(res, 400, { error: "BAD_CONFIG", message: err.message });
          throw err;
        }
        log.info({ config }, "behaviour changed");
        return json(res, 200, config);
      }
    }
    if (method === "GET" && path === "/sim/calls") return json(res, 200, { calls });
    if (method === "GET" && path === "/sim/requests") return json(res, 200, { requests: [...requests.values()] });
    if (method === "POST" && path === "/sim/reset") {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      scheduled.clear();
      calls = [];
      requests.clear();
      return json(res, 200, { ok: true });
    }
    const m = /^\/sim\/requests\/([^/]+)(\/callback)?$/.exec(path);
    if (m) {
      const r = requests.get(decodeURIComponent(m[1]));
      if (!r) return json(res, 404, { error: "NOT_FOUND" });
      if (method === "GET" && !m[2]) return json(res, 200, r);
      if (method === "POST" && m[2]) {
        for (const t of scheduled.get(r.requestId) ?? []) clearTimeout(t);
        scheduled.delete(r.requestId);
        const late = Date.now() - Date.parse(r.receivedAt) > behaviourFor(config, r.phoneNumber).lateAfterMs;
        await postCallback(r, { status: late ? "LATE_SUCCESS" : "SUCCESS", voucherCode: r.voucherCode, codeVerifier: r.codeVerifier }, 1);
        return json(res, 200, r);
      }
    }
    json(res, 404, { error: "NOT_FOUND" });
  }

  return {
    handle(req, res) {
      route(req, res).catch((err) => {
        log.error({ err }, "simulator route failed");
        json(res, 500, { error: "INTERNAL" });
      });
    },
    config: () => config,
    close() {
      inflight.abort();
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const res of stalled) res.destroy();
    },
  };
}
