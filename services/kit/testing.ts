// Helpers for tests across the repo. Tests run against the real local Postgres and NATS;
// isolation comes from unique names (a database per test file, a stream and subject
// prefix per test), and from private nats-server processes when a test needs to take
// NATS down without disturbing everyone else.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SignJWT, createLocalJWKSet, exportJWK, generateKeyPair, type JWK } from "jose";
import type { NatsConnection } from "nats";
import pg from "pg";
import { ACCESS_TOKEN_TYPE, createTokenVerifier, type TokenVerifier } from "./auth.js";
import { ensureDatabase, withDatabase } from "./db.js";
import { jsErrorCode } from "./events/stream.js";

const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/vouch";

/** 8 random lower-case hex characters. */
export function uniqueSuffix(): string {
  return randomBytes(4).toString("hex");
}

const token = (label: string) => label.toLowerCase().replace(/[^a-z0-9_]+/g, "_").slice(0, 30);

export interface TestDatabase {
  url: string;
  name: string;
  /** Disconnects everyone still connected and drops the database. */
  drop(): Promise<void>;
}

/** A fresh database on the server of DATABASE_URL (default: local Postgres). */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const base = process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL;
  const name = `vouch_t_${token(label)}_${uniqueSuffix()}`;
  const url = withDatabase(base, name);
  await ensureDatabase(url);
  return {
    url,
    name,
    async drop() {
      const client = new pg.Client({ connectionString: withDatabase(base, "postgres") });
      client.on("error", () => {});
      await client.connect();
      try {
        // WITH (FORCE) terminates the sessions a test forgot to close (Postgres 13+).
        await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

/** Polls `probe` until it returns something truthy; fails with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false | null>, timeoutMs = 15_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface TestTokens {
  /** The public key, for a JWKS a test or bench serves. */
  jwk: JWK;
  /** Verifies what `sign` makes, as a service's shared verifier would. */
  verifier: TokenVerifier;
  /** An access token as auth would sign it: EdDSA, `at+jwt`, kid, iss, aud, sub, roles, jti, iat, exp. */
  sign(subject: string, roles?: string[], claims?: Record<string, unknown>): Promise<string>;
}

/** A signing key of a test's own, standing in for auth's. */
export async function createTestTokens(opts: { issuer: string; audience: string; kid?: string; expiresIn?: string }): Promise<TestTokens> {
  const kid = opts.kid ?? "test-key";
  const pair = await generateKeyPair("EdDSA", { extractable: true });
  const jwk: JWK = { ...(await exportJWK(pair.publicKey)), kid, alg: "EdDSA", use: "sig" };
  return {
    jwk,
    verifier: createTokenVerifier({ issuer: opts.issuer, audience: opts.audience, keys: createLocalJWKSet({ keys: [jwk] }) }),
    sign: (subject, roles = ["CUSTOMER"], claims = {}) =>
      new SignJWT({ roles, ...claims })
        .setProtectedHeader({ alg: "EdDSA", typ: ACCESS_TOKEN_TYPE, kid })
        .setSubject(subject)
        .setJti(randomUUID())
        .setIssuedAt()
        .setIssuer(opts.issuer)
        .setAudience(opts.audience)
        .setExpirationTime(opts.expiresIn ?? "10m")
        .sign(pair.privateKey),
  };
}

/** A stream name and subject prefix no other test (or run) uses. */
export function testEventNames(label: string): { stream: string; subjectPrefix: string } {
  const rand = uniqueSuffix();
  return { stream: `T_${token(label).toUpperCase()}_${rand.toUpperCase()}`, subjectPrefix: `t${rand}` };
}

export async function deleteStream(nc: NatsConnection, name: string): Promise<void> {
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.delete(name);
  } catch (err) {
    if (jsErrorCode(err) !== 10059) throw err; // already gone
  }
}

export interface PrivateNats {
  url: string;
  port: number;
  /** (Re)starts the server on the same port and store directory; resolves once it accepts connections. */
  start(): Promise<void>;
  /** SIGTERM, then waits for the process to exit. */
  stop(): Promise<void>;
  /** stop() and delete the store directory. */
  dispose(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** Starts a JetStream-enabled nats-server of our own, for tests that take NATS down. */
export async function startPrivateNats(binary = process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server"): Promise<PrivateNats> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), "vouch-nats-"));
  let child: ChildProcess | undefined;

  async function start() {
    if (child) return;
    const proc = spawn(binary, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr?.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    running.add(proc);
    proc.once("exit", () => running.delete(proc));
    child = proc;
    const deadline = Date.now() + 10_000;
    while (!(await accepts(port))) {
      if (proc.exitCode !== null || Date.now() > deadline) {
        proc.kill("SIGKILL");
        child = undefined;
        throw new Error(`nats-server on port ${port} did not start: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async function stop() {
    const proc = child;
    child = undefined;
    if (proc) await stopProcess(proc);
  }

  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    start,
    stop,
    async dispose() {
      await stop();
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}

/**
 * Stops a child process the way a supervisor would: SIGTERM (a graceful shutdown), then
 * SIGKILL if it is still running after `graceMs`. Resolves once it has exited.
 */
export async function stopProcess(proc: ChildProcess, graceMs = 5_000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

/** A TCP port nothing listens on right now (for servers and processes a test starts). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
