// The key ring: Ed25519 signing keys, persisted encrypted, cached in memory, rotated
// without a moment where a verifier meets a key it could not have known.
//
// Rotation ("publish next, sign with it, retire the old"): there is always a *next* key,
// published in the JWKS before it ever signs. Rotating makes the next key active, sets the
// old active key to retire once every token it signed (or may still sign on a replica that
// has not reloaded yet) has expired, and publishes a new next key. Verifiers that cached
// the JWKS since the previous rotation therefore already know the new signing key, and
// any that do not refetch on the unknown `kid`.
//
// Private keys are PKCS#8 DER, encrypted with AES-256-GCM under a key derived from
// AUTH_KEY_ENCRYPTION_SECRET, bound to their kid as associated data. They are decrypted
// only in this module, only for the active key, and never logged or returned.
import { createCipheriv, createDecipheriv, createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { errors as joseErrors, type JWTVerifyGetKey } from "jose";
import type { Kysely, Transaction } from "kysely";
import { newId } from "../kit/ids.js";
import type { Logger } from "../kit/log.js";
import { ACCESS_TOKEN_ALGORITHMS } from "../kit/auth.js";
import { activateKey, getKey, insertKey, listKeys, liveKeys, retireKey, withKeyLock, type StoredKey } from "./store/keys.js";
import { claimRequestId, recordResponse, type RequestKey } from "../kit/idempotency.js";
import type { AuthDB } from "./store/schema.js";

export const SIGNING_ALGORITHM = "EdDSA";
if (!ACCESS_TOKEN_ALGORITHMS.includes(SIGNING_ALGORITHM)) throw new Error("auth signs with an algorithm the verifiers refuse");

export type KeyState = "published" | "active" | "retiring" | "retired";

export interface KeyInfo {
  kid: string;
  algorithm: string;
  state: KeyState;
  createdAt: Date;
  activatedAt: Date | null;
  retireAt: Date | null;
}

export interface PublicJwk {
  kty: string;
  crv: string;
  x: string;
  kid: string;
  alg: string;
  use: "sig";
}

export interface KeyRingOptions {
  db: Kysely<AuthDB>;
  encryptionSecret: string;
  /** How long a replaced key stays in the JWKS: the longest token life plus reload and skew margins. */
  retireAfterMs: number;
  /** How often each replica reloads keys rotated elsewhere. */
  reloadEveryMs: number;
  log: Logger;
}

export function stateOf(key: Pick<StoredKey, "activatedAt" | "retireAt">, now = Date.now()): KeyState {
  if (!key.activatedAt) return "published";
  if (!key.retireAt) return "active";
  return key.retireAt.getTime() > now ? "retiring" : "retired";
}

const info = (k: StoredKey): KeyInfo => ({
  kid: k.kid,
  algorithm: k.algorithm,
  state: stateOf(k),
  createdAt: k.createdAt,
  activatedAt: k.activatedAt,
  retireAt: k.retireAt,
});

/** Refetch on an unknown kid at most this often (a flood of forged kids must not become a flood of queries). */
const UNKNOWN_KID_RELOAD_MS = 1_000;

export class KeyRing {
  private live: StoredKey[] = [];
  private publicKeys = new Map<string, KeyObject>();
  private signer: { kid: string; privateKey: KeyObject } | undefined;
  private readonly wrapKey: Buffer;
  private lastLoad = 0;
  private loading: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: KeyRingOptions) {
    this.wrapKey = createHash("sha256").update("vouch.auth.signing-keys.v1\0").update(opts.encryptionSecret).digest();
  }

  /** Makes sure an active and a next key exist (first start), loads them, and reloads periodically. */
  async start(): Promise<void> {
    await withKeyLock(this.opts.db, async (trx) => {
      const keys = await liveKeys(trx);
      const active = keys.find((k) => stateOf(k) === "active")?.kid;
      let next = keys.find((k) => stateOf(k) === "published")?.kid;
      if (!active) {
        const first = next ?? (await this.publishNew(trx));
        await activateKey(trx, first);
        this.opts.log.info({ kid: first }, "signing key activated (first start)");
        next = undefined;
      }
      if (!next) await this.publishNew(trx);
    });
    await this.reload();
    this.timer = setInterval(() => void this.reload().catch((err) => this.opts.log.warn({ err }, "signing keys reload failed")), this.opts.reloadEveryMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Reads the live keys again (shared by concurrent callers). */
  reload(): Promise<void> {
    this.loading ??= (async () => {
      try {
        const keys = await liveKeys(this.opts.db);
        const publicKeys = new Map<string, KeyObject>();
        for (const k of keys) publicKeys.set(k.kid, createPublicKey({ key: { ...k.publicJwk, kty: "OKP" }, format: "jwk" }));
        const active = keys.find((k) => stateOf(k) === "active");
        if (active && active.kid !== this.signer?.kid) {
          this.signer = { kid: active.kid, privateKey: this.decrypt(active) };
        }
        this.live = keys;
        this.publicKeys = publicKeys;
        this.lastLoad = Date.now();
      } finally {
        this.loading = undefined;
      }
    })();
    return this.loading;
  }

  /** The key new tokens are signed with. */
  signingKey(): { kid: string; privateKey: KeyObject } {
    if (!this.signer) throw new Error("no active signing key: KeyRing.start() was not called");
    return this.signer;
  }

  /** The JWK Set: published, active and retiring keys, public members only. */
  jwks(now = Date.now()): PublicJwk[] {
    return this.live
      .filter((k) => stateOf(k, now) !== "retired")
      .map((k) => ({ kty: "OKP", crv: k.publicJwk.crv, x: k.publicJwk.x, kid: k.kid, alg: k.algorithm, use: "sig" }));
  }

  /** For jose's jwtVerify: the public key of the token's kid, reloading once on an unknown kid. */
  readonly verificationKey: JWTVerifyGetKey = async (header) => {
    const find = () => {
      const key = header.kid ? this.publicKeys.get(header.kid) : undefined;
      const stored = key && this.live.find((k) => k.kid === header.kid);
      return stored && stateOf(stored) !== "retired" && stored.algorithm === header.alg ? key : undefined;
    };
    let key = find();
    if (!key && Date.now() - this.lastLoad >= UNKNOWN_KID_RELOAD_MS) {
      try {
        await this.reload();
      } catch (err) {
        this.opts.log.warn({ err }, "cannot reload signing keys for an unknown kid");
      }
      key = find();
    }
    // A jose error, so the shared verifier answers TOKEN_INVALID (anything else would be INTERNAL).
    if (!key) throw new joseErrors.JWKSNoMatchingKey("no signing key matches the token's kid");
    return key;
  };

  /**
   * Promotes the next key to active, retires the active one after `retireAfterMs`, and
   * publishes a new next key. Returns the new and the previous active key.
   */
  async rotate(requestId = ""): Promise<{ newKey: KeyInfo; previousKey: KeyInfo | undefined }> {
    // A retried rotation returns the first one instead of rotating twice.
    const key: RequestKey = { operation: "rotate_signing_key", requestId, caller: "", fingerprint: "" };
    const { newKid, previousKid } = await withKeyLock(this.opts.db, async (trx): Promise<{ newKid: string; previousKid?: string }> => {
      if (requestId) {
        const claim = await claimRequestId(trx, key);
        if (claim.kind === "replay") return JSON.parse(new TextDecoder().decode(claim.response));
      }
      const keys = await liveKeys(trx);
      const active = keys.find((k) => stateOf(k) === "active")?.kid;
      const next = keys.find((k) => stateOf(k) === "published")?.kid ?? (await this.publishNew(trx));
      if (active) await retireKey(trx, active, this.opts.retireAfterMs);
      await activateKey(trx, next);
      await this.publishNew(trx);
      if (requestId) await recordResponse(trx, key, new TextEncoder().encode(JSON.stringify({ newKid: next, previousKid: active })));
      return { newKid: next, previousKid: active };
    });
    await this.reload();
    this.opts.log.info({ kid: newKid, previousKid }, "signing key rotated");
    return this.describe(newKid, previousKid);
  }

  /** Every key ever made, newest first, metadata only (for operators). */
  async list(afterKid: string | undefined, limit: number): Promise<KeyInfo[]> {
    return (await listKeys(this.opts.db, afterKid, limit)).map(info);
  }

  /** Current metadata of a rotation's keys (for replies, also to a replayed request). */
  async describe(newKid: string, previousKid: string | undefined): Promise<{ newKey: KeyInfo; previousKey: KeyInfo | undefined }> {
    const newKey = await getKey(this.opts.db, newKid);
    const previousKey = previousKid ? await getKey(this.opts.db, previousKid) : undefined;
    if (!newKey) throw new Error(`signing key ${newKid} vanished`);
    return { newKey: info(newKey), previousKey: previousKey && info(previousKey) };
  }

  /** Generates a key pair and stores it as the next key (published, not signing). Returns its kid. */
  private async publishNew(trx: Transaction<AuthDB>): Promise<string> {
    const kid = newId();
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const jwk = publicKey.export({ format: "jwk" });
    const der = privateKey.export({ format: "der", type: "pkcs8" });
    await insertKey(trx, { kid, algorithm: SIGNING_ALGORITHM, publicJwk: { crv: String(jwk.crv), x: String(jwk.x) }, privateKeyEncrypted: this.encrypt(kid, der) });
    return kid;
  }

  private encrypt(kid: string, plaintext: Buffer): Buffer {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.wrapKey, iv);
    cipher.setAAD(Buffer.from(kid));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), body]);
  }

  private decrypt(key: StoredKey): KeyObject {
    const blob = Buffer.from(key.privateKeyEncrypted);
    try {
      const decipher = createDecipheriv("aes-256-gcm", this.wrapKey, blob.subarray(0, 12));
      decipher.setAAD(Buffer.from(key.kid));
      decipher.setAuthTag(blob.subarray(12, 28));
      const der = Buffer.concat([decipher.update(blob.subarray(28)), decipher.final()]);
      return createPrivateKey({ key: der, format: "der", type: "pkcs8" });
    } catch {
      // Never the cause: it could carry key material.
      throw new Error(`cannot decrypt signing key ${key.kid}: is AUTH_KEY_ENCRYPTION_SECRET the one it was stored with?`);
    }
  }
}
