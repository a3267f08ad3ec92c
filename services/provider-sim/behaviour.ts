// How the simulated provider behaves, and how that is configured: a default behaviour plus
// overrides per phone number (so one test or demo can run several scenarios at once).
//
// For every request the simulator draws the time its code takes to be ready from
// `latency`; ready within `inlineWindowMs` → the code is answered inline at that time;
// otherwise the request is acknowledged at `inlineWindowMs` with a PKCE challenge, and
// the code is posted to the callback URL when ready, with status LATE_SUCCESS when that is
// after `lateAfterMs`. The rates make things go wrong on purpose.

/** A uniform range of times until the code is ready; `weight` makes mixes. */
export interface LatencyBand {
  weight: number;
  minMs: number;
  maxMs: number;
}

export interface Behaviour {
  /** Weighted mix of uniform ranges; one band is picked by weight, then a time within it. */
  latency: LatencyBand[];
  /** The "3 seconds" of the real provider: codes ready by then are answered inline. */
  inlineWindowMs: number;
  /** The "30 seconds": codes ready later are called back with LATE_SUCCESS. */
  lateAfterMs: number;
  /** Fraction of calls answered with HTTP 500 at once. */
  errorRate: number;
  /** Fraction of calls never answered (the connection is held until the caller gives up). */
  stallRate: number;
  /** Fraction of acknowledged requests that are never called back. */
  noCallbackRate: number;
  /** Fraction of callbacks posted twice. */
  duplicateCallbackRate: number;
  /** Fraction of inline answers followed anyway by a callback (new verifier, another code). */
  callbackAfterInlineRate: number;
  /** The PKCE method announced in acknowledgements; `plain` is for testing the refusal. */
  challengeMethod: "S256" | "plain";
  /** A fixed code verifier instead of a random one (RFC 7636 test vectors, bad lengths). */
  verifier?: string;
  /** Callback attempts per callback while the receiver answers 5xx or cannot be reached. */
  callbackAttempts: number;
}

export interface SimConfig {
  default: Behaviour;
  /** Overrides of the default by exact phone number (E.164). */
  byPhoneNumber: Record<string, Partial<Behaviour>>;
}

/** A demo mix: most codes inline, many by callback, a few late. */
export const DEFAULT_BEHAVIOUR: Behaviour = {
  latency: [
    { weight: 60, minMs: 100, maxMs: 2_500 },
    { weight: 35, minMs: 4_000, maxMs: 25_000 },
    { weight: 5, minMs: 31_000, maxMs: 40_000 },
  ],
  inlineWindowMs: 3_000,
  lateAfterMs: 30_000,
  errorRate: 0,
  stallRate: 0,
  noCallbackRate: 0,
  duplicateCallbackRate: 0,
  callbackAfterInlineRate: 0,
  challengeMethod: "S256",
  callbackAttempts: 8,
};

export class ConfigError extends Error {}

const RATES = ["errorRate", "stallRate", "noCallbackRate", "duplicateCallbackRate", "callbackAfterInlineRate"] as const;

function checkBehaviour(b: Partial<Behaviour>, where: string): Partial<Behaviour> {
  const fail = (msg: string): never => {
    throw new ConfigError(`${where}: ${msg}`);
  };
  const known = new Set([...Object.keys(DEFAULT_BEHAVIOUR), "verifier"]);
  for (const key of Object.keys(b)) if (!known.has(key)) fail(`unknown setting "${key}"`);
  if (b.latency !== undefined) {
    if (!Array.isArray(b.latency) || b.latency.length === 0) fail("latency must be a non-empty list of {weight, minMs, maxMs}");
    b.latency = b.latency.map((band, i) => {
      const minMs = Number(band?.minMs);
      const maxMs = band?.maxMs === undefined ? minMs : Number(band.maxMs);
      const weight = band?.weight === undefined ? 1 : Number(band.weight);
      if (!(minMs >= 0 && maxMs >= minMs && weight > 0)) fail(`latency[${i}] needs 0 <= minMs <= maxMs and weight > 0`);
      return { weight, minMs, maxMs };
    });
  }
  for (const key of ["inlineWindowMs", "lateAfterMs"] as const) {
    if (b[key] !== undefined && !(Number(b[key]) >= 0)) fail(`${key} must be a non-negative number of milliseconds`);
  }
  for (const key of RATES) {
    if (b[key] !== undefined && !(Number(b[key]) >= 0 && Number(b[key]) <= 1)) fail(`${key} must be between 0 and 1`);
  }
  if (b.challengeMethod !== undefined && b.challengeMethod !== "S256" && b.challengeMethod !== "plain") fail('challengeMethod must be "S256" or "plain"');
  if (b.verifier !== undefined && (typeof b.verifier !== "string" || b.verifier.length === 0)) fail("verifier must be a non-empty string");
  if (b.callbackAttempts !== undefined && !(Number.isInteger(b.callbackAttempts) && b.callbackAttempts >= 1)) fail("callbackAttempts must be a positive integer");
  return b;
}

/** Validates a configuration given as JSON (environment or `PUT /sim/config`); missing settings take the defaults. */
export function parseConfig(input: unknown): SimConfig {
  if (input === null || typeof input !== "object" || Array.isArray(input)) throw new ConfigError("the configuration must be a JSON object");
  const raw = input as { default?: Partial<Behaviour>; byPhoneNumber?: Record<string, Partial<Behaviour>> };
  for (const key of Object.keys(raw)) if (key !== "default" && key !== "byPhoneNumber") throw new ConfigError(`unknown top-level key "${key}" (expected "default" and "byPhoneNumber")`);
  const base = { ...DEFAULT_BEHAVIOUR, ...checkBehaviour({ ...raw.default }, "default") } as Behaviour;
  const byPhoneNumber: Record<string, Partial<Behaviour>> = {};
  for (const [phone, override] of Object.entries(raw.byPhoneNumber ?? {})) {
    byPhoneNumber[phone] = checkBehaviour({ ...override }, `byPhoneNumber["${phone}"]`);
  }
  return { default: base, byPhoneNumber };
}

export function behaviourFor(config: SimConfig, phoneNumber: string): Behaviour {
  const override = config.byPhoneNumber[phoneNumber];
  return override ? { ...config.default, ...override } : config.default;
}

/** Picks the time until a code is ready from the weighted bands. */
export function drawReadyInMs(latency: LatencyBand[], random = Math.random): number {
  const total = latency.reduce((s, b) => s + b.weight, 0);
  let pick = random() * total;
  const band = latency.find((b) => (pick -= b.weight) < 0) ?? latency[latency.length - 1];
  return Math.round(band.minMs + random() * (band.maxMs - band.minMs));
}
