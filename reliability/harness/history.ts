// A Jepsen-style history: every call is `ok` (it happened), `failed` (it definitely did not)
// or `unknown` (it may have happened: the connection broke, the deadline passed, the server
// answered UNAVAILABLE/ABORTED/INTERNAL mid-flight). An unknown call may have happened but
// never twice; the invariants checked in the database afterwards decide.
//
// A logical operation (one request_id) is retried on any replica until it gets a definite
// answer or its time runs out; the history keeps both the attempts and the final outcomes.
import { Code, ConnectError } from "@connectrpc/connect";
import { pace } from "./util.js";

export type Outcome = "ok" | "failed" | "unknown";

/** Codes after which a call may or may not have taken effect: retry with the same request_id. */
export const UNCERTAIN_CODES = new Set([Code.Unavailable, Code.Aborted, Code.DeadlineExceeded, Code.Internal, Code.Unknown, Code.Canceled]);

export function codeOf(err: unknown): Code {
  return ConnectError.from(err).code;
}

export function classify(err: unknown): Outcome {
  return UNCERTAIN_CODES.has(codeOf(err)) ? "unknown" : "failed";
}

interface Tally {
  ok: number;
  failed: number;
  unknown: number;
}

const zero = (): Tally => ({ ok: 0, failed: 0, unknown: 0 });

export class History {
  readonly attempts = new Map<string, Tally>();
  readonly ops = new Map<string, Tally>();
  /** gRPC code names seen per operation kind, e.g. `redeem: UNAVAILABLE` → 12. */
  readonly codes = new Map<string, number>();

  attempt(kind: string, outcome: Outcome, code?: Code) {
    const t = this.attempts.get(kind) ?? zero();
    t[outcome]++;
    this.attempts.set(kind, t);
    if (code !== undefined && outcome !== "ok") {
      const key = `${kind}: ${Code[code]}`;
      this.codes.set(key, (this.codes.get(key) ?? 0) + 1);
    }
  }

  op(kind: string, outcome: Outcome) {
    const t = this.ops.get(kind) ?? zero();
    t[outcome]++;
    this.ops.set(kind, t);
  }

  count(kind: string, outcome: Outcome, of: "ops" | "attempts" = "ops"): number {
    return (of === "ops" ? this.ops : this.attempts).get(kind)?.[outcome] ?? 0;
  }

  lines(): string[] {
    const out: string[] = [];
    for (const [kind, t] of this.ops) {
      const a = this.attempts.get(kind) ?? zero();
      out.push(`${kind}: ops ok ${t.ok} / failed ${t.failed} / unknown ${t.unknown}; calls ok ${a.ok} / failed ${a.failed} / unknown ${a.unknown}`);
    }
    if (this.codes.size) out.push(`error codes: ${[...this.codes].map(([k, n]) => `${k} ×${n}`).join(", ")}`);
    return out;
  }
}

export interface RunOptions {
  /** Give up (the op stays unknown) after this long. */
  budgetMs?: number;
  /** Per-attempt deadline. */
  attemptTimeoutMs?: number;
}

/**
 * Runs one logical operation: `call(attempt)` is invoked with the attempt number (use it to
 * pick a replica), retried after uncertain failures, and the final result recorded.
 * Returns the value on ok, the error on a definite failure, or `undefined` when unknown.
 */
export async function runOp<T>(
  history: History,
  kind: string,
  call: (attempt: number, timeoutMs: number) => Promise<T>,
  opts: RunOptions = {},
): Promise<{ outcome: Outcome; value?: T; error?: ConnectError }> {
  const deadline = Date.now() + (opts.budgetMs ?? 60_000);
  let lastError: ConnectError | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      const value = await call(attempt, opts.attemptTimeoutMs ?? 10_000);
      history.attempt(kind, "ok");
      history.op(kind, "ok");
      return { outcome: "ok", value };
    } catch (err) {
      const e = ConnectError.from(err);
      const outcome = classify(e);
      history.attempt(kind, outcome, e.code);
      if (outcome === "failed") {
        history.op(kind, "failed");
        return { outcome, error: e };
      }
      lastError = e;
    }
    if (Date.now() > deadline) {
      history.op(kind, "unknown");
      return { outcome: "unknown", error: lastError };
    }
    await pace(Math.min(1_000, 50 * 2 ** Math.min(attempt, 5)));
  }
}

// ── invariants ───────────────────────────────────────────────────────────────────────────

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export const check = (name: string, ok: boolean, detail: string): Check => ({ name, ok, detail });

/** Prints what a scenario did and every invariant with its counts, in one block. */
export function report(title: string, did: string[], history: History | undefined, checks: Check[]): void {
  const lines = [`\n── reliability: ${title}`];
  for (const d of did) lines.push(`   did: ${d}`);
  for (const l of history?.lines() ?? []) lines.push(`   ${l}`);
  for (const c of checks) lines.push(`   ${c.ok ? "✔" : "✘"} ${c.name}: ${c.detail}`);
  console.log(lines.join("\n"));
}

export function failedChecks(checks: Check[]): string {
  return checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.detail}`).join("\n");
}
