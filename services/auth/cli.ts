// Operator commands that work straight on auth's database (no token needed), with the
// same environment as the service:
//
//   npx tsx services/auth/cli.ts rotate-key   publish-next/activate/retire rotation (see keys.ts)
//   npx tsx services/auth/cli.ts list-keys    kid, state and times of every signing key
//
// Running auth replicas pick a rotation up within 30 s; until then they keep signing with
// the previous key, which stays in the JWKS until every such token has expired.
import { loadConfig } from "../kit/config.js";
import { createDb } from "../kit/db.js";
import { createLogger } from "../kit/log.js";
import { MAX_ACCESS_TOKEN_TTL_MS } from "../kit/revocation.js";
import { KeyRing, type KeyInfo } from "./keys.js";
import { loadAuthSettings } from "./settings.js";
import type { AuthDB } from "./store/schema.js";

const [command] = process.argv.slice(2);
const config = loadConfig("auth");
const log = createLogger("auth-cli", process.env.LOG_LEVEL ?? "warn");
const db = createDb<AuthDB>({ url: config.databaseUrl, schema: config.dbSchema, log, max: 2 });
const keys = new KeyRing({
  db,
  encryptionSecret: loadAuthSettings().keyEncryptionSecret,
  retireAfterMs: MAX_ACCESS_TOKEN_TTL_MS + 30_000 + 60_000, // as in main.ts
  reloadEveryMs: 3_600_000,
  log,
});

const line = (k: KeyInfo) =>
  [k.kid, k.state.padEnd(9), k.algorithm, `created ${k.createdAt.toISOString()}`, k.activatedAt ? `active since ${k.activatedAt.toISOString()}` : "", k.retireAt ? `retires ${k.retireAt.toISOString()}` : ""]
    .filter(Boolean)
    .join("  ");

try {
  if (command === "rotate-key") {
    const { newKey, previousKey } = await keys.rotate();
    console.log(`signing with ${newKey.kid}`);
    if (previousKey) console.log(`previous key ${previousKey.kid} retires at ${previousKey.retireAt?.toISOString()}`);
  } else if (command === "list-keys") {
    for (const k of await keys.list(undefined, 1000)) console.log(line(k));
  } else {
    console.error("usage: tsx services/auth/cli.ts rotate-key | list-keys");
    process.exitCode = 2;
  }
} finally {
  keys.stop();
  await db.destroy();
}
