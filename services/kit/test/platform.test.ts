// startPlatform against real Postgres and Redis: a start that fails part-way leaves nothing
// open behind it (no pool connection, no Redis client), so the caller's error is the end.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";
import pg from "pg";
import { loadConfig, type ServiceName } from "../config.js";
import { startPlatform } from "../platform.js";
import { createTestDatabase, createTestTokens, uniqueSuffix, waitFor, type TestDatabase } from "../testing.js";

let database: TestDatabase;
before(async () => {
  database = await createTestDatabase("platform");
});
after(() => database?.drop());

test("a start whose migration fails closes the Postgres pool and the Redis client it had opened", async () => {
  const schema = `platform_${uniqueSuffix()}`;
  // The platform's Redis client names itself after the service: a name of this test's own,
  // so that clients of other test files running meanwhile are not counted.
  const service = `platform-test-${uniqueSuffix()}` as ServiceName;
  const config = {
    ...loadConfig("voucher", { ...process.env, DATABASE_URL: database.url, DB_SCHEMA: schema, REDIS_KEY_PREFIX: `t:${uniqueSuffix()}:`, LOG_LEVEL: "silent" }),
    service,
  };
  const tokens = await createTestTokens({ issuer: config.jwt.issuer, audience: config.jwt.audience });
  const clientsNamed = async (redis: Redis) => String(await redis.call("CLIENT", "LIST")).split("\n").filter((l) => l.includes(` name=${service} `)).length;
  const admin = new pg.Client({ connectionString: database.url });
  await admin.connect();
  const redis = new Redis(config.redisUrl);
  try {
    await assert.rejects(
      startPlatform(config, {
        postgres: true,
        redis: true,
        verifier: tokens.verifier,
        migrations: {
          "0001_broken": {
            up: async () => {
              throw new Error("migration 0001 is broken");
            },
          },
        },
      }),
      /migration 0001 is broken/,
    );
    const poolConnections = async () =>
      Number((await admin.query("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1", [`vouch-${schema}`])).rows[0].n);
    await waitFor("the pool's connections to close", async () => (await poolConnections()) === 0, 5_000);
    await waitFor("the Redis client to quit", async () => (await clientsNamed(redis)) === 0, 5_000);
  } finally {
    redis.disconnect();
    await admin.end();
  }
});
