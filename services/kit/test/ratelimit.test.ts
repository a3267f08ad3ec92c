// Runs against the real Redis at REDIS_URL (default 127.0.0.1:6379). Every key lives under
// this file's own random prefix and is deleted afterwards.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { Registry } from "prom-client";
import { Redis } from "ioredis";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema, RetryInfoSchema } from "../../../gen/google/rpc/error_details_pb.js";
import { toConnectError, VouchError } from "../errors.js";
import { createRedis, pingRedis } from "../redis.js";
import { createRateLimiter, type RateLimiterOptions } from "../ratelimit.js";

const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const REDIS_ADDR = new URL(REDIS_URL);
const DEAD_REDIS_URL = "redis://127.0.0.1:1";
const prefix = `vouch-test:ratelimit:${randomUUID()}:`;

/** A logger whose lines the test can read. */
function capturingLogger() {
  const lines: Array<{ level: number; msg: string } & Record<string, unknown>> = [];
  const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { log, lines };
}

const { log } = capturingLogger();
let redis: Redis;
let raw: Redis; // no key prefix: sees keys exactly as stored

/** Each test gets its own limiter name, so no two share a key. */
function limiter(options: Omit<RateLimiterOptions, "name" | "registry">) {
  // A generous Redis timeout: these tests pin Redis' decisions, and on a loaded machine the
  // production 200 ms could send a call to the local fallback (tested on its own below).
  return createRateLimiter(redis, { name: `t-${randomUUID().slice(0, 8)}`, registry: new Registry(), log, redisTimeoutMs: 5_000, ...options });
}

before(async () => {
  redis = createRedis(REDIS_URL, { keyPrefix: prefix, log, name: "ratelimit-test" });
  raw = new Redis(REDIS_URL);
  assert.equal(await pingRedis(redis, 2_000), true, `redis at ${REDIS_URL} must be running for these tests`);
});

after(async () => {
  let cursor = "0";
  do {
    const [next, keys] = await raw.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
    if (keys.length) await raw.unlink(...keys);
    cursor = next;
  } while (cursor !== "0");
  await Promise.all([redis.quit(), raw.quit()]);
});

describe("rate limiter on redis", () => {
  test("allows a burst, then refuses with a retry-after close to the emission interval", async () => {
    // 60 per minute: one unit per 1000 ms, 5 at once.
    const rl = limiter({ ratePerPeriod: 60, periodMs: 60_000, burst: 5 });
    const taken = [];
    for (let i = 0; i < 5; i++) taken.push(await rl.take("alice"));
    assert.deepEqual(
      taken.map((d) => [d.allowed, d.remaining, d.retryAfterMs]),
      [[true, 4, 0], [true, 3, 0], [true, 2, 0], [true, 1, 0], [true, 0, 0]],
    );
    const refused = await rl.take("alice");
    assert.equal(refused.allowed, false);
    assert.equal(refused.remaining, 0);
    // One emission interval, less the few ms spent on the five takes.
    assert.ok(refused.retryAfterMs > 900 && refused.retryAfterMs <= 1000, `retryAfterMs ${refused.retryAfterMs}`);
    // The full budget is back after five intervals.
    assert.ok(refused.resetAfterMs > 4_900 && refused.resetAfterMs <= 5_000, `resetAfterMs ${refused.resetAfterMs}`);
  });

  test("allows the same key again once retry-after has passed", async () => {
    // One unit per 50 ms, 2 at once.
    const rl = limiter({ ratePerPeriod: 20, periodMs: 1_000, burst: 2 });
    assert.equal((await rl.take("bob")).allowed, true);
    assert.equal((await rl.take("bob")).allowed, true);
    const refused = await rl.take("bob");
    assert.equal(refused.allowed, false);
    assert.ok(refused.retryAfterMs > 0 && refused.retryAfterMs <= 50, `retryAfterMs ${refused.retryAfterMs}`);

    await sleep(refused.retryAfterMs);
    const again = await rl.take("bob");
    assert.equal(again.allowed, true);
    // Only the one refilled unit: the next take is refused again.
    assert.equal((await rl.take("bob")).allowed, false);
  });

  test("200 concurrent takes on one key with burst 10 allow exactly 10", async () => {
    // One unit per 6 s: nothing refills while the test runs.
    const rl = limiter({ ratePerPeriod: 10, periodMs: 60_000, burst: 10 });
    const decisions = await Promise.all(Array.from({ length: 200 }, () => rl.take("hot")));
    const allowed = decisions.filter((d) => d.allowed);
    assert.equal(allowed.length, 10);
    // Each allowed take saw a distinct budget: 9, 8, …, 0 remaining, each exactly once.
    assert.deepEqual(allowed.map((d) => d.remaining).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.ok(decisions.filter((d) => !d.allowed).every((d) => d.retryAfterMs > 0));
  });

  test("separate keys don't share a budget", async () => {
    const rl = limiter({ ratePerPeriod: 1, periodMs: 60_000, burst: 2 });
    assert.equal((await rl.take("carol")).allowed, true);
    assert.equal((await rl.take("carol")).allowed, true);
    assert.equal((await rl.take("carol")).allowed, false);
    assert.equal((await rl.take("dave")).allowed, true);
    assert.equal((await rl.take("dave")).allowed, true);
    assert.equal((await rl.take("dave")).allowed, false);
  });

  test("keys carry the client's prefix and a TTL, and expire once the budget is full again", async () => {
    // One unit per 20 ms, 3 at once.
    const rl = limiter({ ratePerPeriod: 50, periodMs: 1_000, burst: 3 });
    const first = await rl.take("erin");
    const second = await rl.take("erin");
    const key = `${prefix}rl:${rl.name}:erin`;

    assert.equal(await raw.exists(`rl:${rl.name}:erin`), 0, "no key outside the prefix");
    const pttl = await raw.pttl(key);
    assert.ok(pttl > 0 && pttl <= second.resetAfterMs, `pttl ${pttl}, resetAfterMs ${second.resetAfterMs}`);
    assert.ok(first.resetAfterMs <= 20 && second.resetAfterMs <= 40);

    await sleep(second.resetAfterMs + 5);
    assert.equal(await raw.exists(key), 0, "an idle key expires");
    // And a fresh subject starts with its whole burst.
    assert.equal((await rl.take("erin")).remaining, 2);
  });

  test("enforce throws RESOURCE_EXHAUSTED with the reason and a retry delay that converts to RetryInfo", async () => {
    const rl = limiter({ ratePerPeriod: 1, periodMs: 10_000, burst: 1 });
    await rl.enforce("frank", "LOGIN_THROTTLED");

    const err = await rl.enforce("frank", "LOGIN_THROTTLED").then(
      () => assert.fail("second enforce should throw"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof VouchError);
    assert.equal(err.code, Code.ResourceExhausted);
    assert.equal(err.reason, "LOGIN_THROTTLED");
    assert.ok(err.options.retryAfterMs! > 9_000 && err.options.retryAfterMs! <= 10_000, `retryAfterMs ${err.options.retryAfterMs}`);
    assert.doesNotMatch(err.message, /frank/, "the subject key stays out of the message");

    const wire = toConnectError(err, "vouch.test");
    assert.ok(wire instanceof ConnectError);
    assert.equal(wire.code, Code.ResourceExhausted);
    assert.equal(wire.findDetails(ErrorInfoSchema)[0]?.reason, "LOGIN_THROTTLED");
    const delay = wire.findDetails(RetryInfoSchema)[0]?.retryDelay;
    assert.ok(delay && Number(delay.seconds) * 1000 + delay.nanos / 1e6 > 9_000, "RetryInfo carries the delay");

    const byDefault = await rl.enforce("frank").catch((e: unknown) => e);
    assert.ok(byDefault instanceof VouchError);
    assert.equal(byDefault.reason, "RATE_LIMITED");
  });

  test("charges a cost of several units at once, with an interval that is not a whole number of µs", async () => {
    // 7 per 60 s: one unit per 8 571 428.57… µs.
    const rl = limiter({ ratePerPeriod: 7, periodMs: 60_000, burst: 7 });
    assert.deepEqual(await rl.take("gus", 3), { allowed: true, remaining: 4, retryAfterMs: 0, resetAfterMs: 25_715 });
    const tooMuch = await rl.take("gus", 5);
    assert.equal(tooMuch.allowed, false);
    assert.equal(tooMuch.remaining, 4, "a refused take spends nothing");
    assert.ok(tooMuch.retryAfterMs > 8_500 && tooMuch.retryAfterMs <= 8_572, `retryAfterMs ${tooMuch.retryAfterMs}`);
    assert.deepEqual((await rl.take("gus", 4)).remaining, 0);
    assert.equal((await rl.take("gus", 0)).allowed, true, "cost 0 only reads the budget");
  });

  test("refuses a cost no budget could ever cover", async () => {
    const rl = limiter({ ratePerPeriod: 1, periodMs: 1_000, burst: 3 });
    await assert.rejects(rl.take("gina", 4), RangeError);
  });
});

describe("rate limiter without redis", () => {
  let dead: Redis;
  const captured = capturingLogger();

  before(() => {
    dead = createRedis(DEAD_REDIS_URL, { keyPrefix: prefix, log: captured.log, name: "ratelimit-test-dead" });
  });
  after(() => dead.disconnect());

  test("answers from the in-process fallback quickly, and still limits", async () => {
    const rl = createRateLimiter(dead, {
      name: "dead-explicit",
      ratePerPeriod: 100,
      periodMs: 1_000,
      burst: 50,
      fallback: { ratePerPeriod: 1, periodMs: 60_000, burst: 3 },
      log: captured.log,
      registry: new Registry(),
    });
    const started = performance.now();
    const decisions = [];
    for (let i = 0; i < 6; i++) decisions.push(await rl.take("henry"));
    const elapsed = performance.now() - started;

    assert.deepEqual(decisions.map((d) => d.allowed), [true, true, true, false, false, false]);
    assert.deepEqual(decisions.slice(0, 3).map((d) => d.remaining), [2, 1, 0]);
    assert.ok(decisions[3].retryAfterMs > 59_000, `fallback retryAfterMs ${decisions[3].retryAfterMs}`);
    assert.ok((await rl.take("ivy")).allowed, "other keys keep their own fallback budget");
    // At most one bounded wait for Redis (the limiter's 200 ms), then local decisions.
    assert.ok(elapsed < 500, `took ${elapsed.toFixed(0)} ms`);
  });

  test("falls back to half the burst when no fallback is configured", async () => {
    const registry = new Registry();
    const rl = createRateLimiter(dead, { name: "dead-default", ratePerPeriod: 10, periodMs: 60_000, burst: 10, log: captured.log, registry });
    const decisions = await Promise.all(Array.from({ length: 20 }, () => rl.take("jack")));
    assert.equal(decisions.filter((d) => d.allowed).length, 5);

    assert.deepEqual(await decisionCounts(registry), { "allowed/fallback": 5, "refused/fallback": 15 });
  });

  test("logs the fallback and the redis outage once, not per call or per reconnect", async () => {
    // Let the client fail a few reconnects, then decide many times.
    await sleep(400);
    const rl = createRateLimiter(dead, { name: "dead-logging", ratePerPeriod: 1, periodMs: 1_000, burst: 1, log: captured.log, registry: new Registry() });
    for (let i = 0; i < 50; i++) await rl.take(`k${i % 5}`);

    const outage = captured.lines.filter((l) => l.msg === "redis unavailable; reconnecting in the background");
    assert.equal(outage.length, 1);
    assert.ok(captured.lines.some((l) => l.msg === "redis still unavailable"), "later reconnect failures only at debug");
    const fallbackWarnings = captured.lines.filter(
      (l) => l.msg === "rate limiter deciding in-process: redis unavailable" && l.limiter === "dead-logging",
    );
    assert.equal(fallbackWarnings.length, 1);
  });

  test("pingRedis reports a live redis ready and an unreachable one not ready within its timeout", async () => {
    assert.equal(await pingRedis(redis, 500), true);
    const started = performance.now();
    assert.equal(await pingRedis(dead, 150), false);
    assert.ok(performance.now() - started < 400);
  });
});

/** `{ "allowed/redis": n, … }` from the decisions counter. */
async function decisionCounts(registry: Registry) {
  const metric = await registry.getSingleMetric("vouch_rate_limit_decisions_total")!.get();
  return Object.fromEntries(metric.values.map((v) => [`${v.labels.decision}/${v.labels.source}`, v.value]));
}

/** A TCP proxy to the real Redis that the test can cut and restore, to stage an outage. */
function redisProxy() {
  let server: Server | undefined;
  const sockets = new Set<Socket>();
  let port = 0;
  async function start() {
    server = createServer((client) => {
      const upstream = connect(Number(REDIS_ADDR.port || 6379), REDIS_ADDR.hostname);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
        s.on("error", () => s.destroy());
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    server.listen(port, "127.0.0.1");
    await once(server, "listening");
    port = (server.address() as AddressInfo).port;
    return `redis://127.0.0.1:${port}`;
  }
  async function stop() {
    const closed = new Promise((resolve) => server?.close(resolve));
    for (const s of sockets) s.destroy();
    await closed;
  }
  return { start, stop };
}

describe("rate limiter across a redis outage", () => {
  test("switches to the fallback while redis is away and back to redis, budget intact, when it returns", async () => {
    const proxy = redisProxy();
    const captured = capturingLogger();
    const client = createRedis(await proxy.start(), { keyPrefix: prefix, log: captured.log, name: "ratelimit-test-outage" });
    const registry = new Registry();
    const rl = createRateLimiter(client, {
      name: `t-outage-${randomUUID().slice(0, 8)}`,
      ratePerPeriod: 1,
      periodMs: 60_000,
      burst: 3,
      fallback: { ratePerPeriod: 1, periodMs: 60_000, burst: 1 },
      log: captured.log,
      registry,
    });
    try {
      assert.equal((await rl.take("kim")).remaining, 2);
      assert.equal((await rl.take("kim")).remaining, 1);

      const down = once(client, "reconnecting");
      await proxy.stop();
      await down;
      const local = [await rl.take("kim"), await rl.take("kim")];
      assert.deepEqual(local.map((d) => d.allowed), [true, false], "the fallback's own burst of 1");

      const up = once(client, "ready");
      await proxy.start();
      await up;
      const back = await rl.take("kim");
      assert.deepEqual([back.allowed, back.remaining], [true, 0], "redis still remembers the two units taken before the outage");
      assert.equal((await rl.take("kim")).allowed, false);

      assert.deepEqual(await decisionCounts(registry), {
        "allowed/redis": 3,
        "refused/redis": 1,
        "allowed/fallback": 1,
        "refused/fallback": 1,
      });
      const msgs = captured.lines.map((l) => l.msg);
      assert.equal(msgs.filter((m) => m === "rate limiter deciding in-process: redis unavailable").length, 1);
      assert.equal(msgs.filter((m) => m === "rate limiter back on redis").length, 1);
      assert.equal(msgs.filter((m) => m === "redis available again").length, 1);
    } finally {
      client.disconnect();
      await proxy.stop();
    }
  });
});
