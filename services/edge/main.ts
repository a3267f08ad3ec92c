// Composition root of the browser edge. It will forward the browser-facing rpcs of every
// service; for now it serves health, reflection and its readiness (Redis, for rate limits).
import { loadConfig } from "../kit/config.js";
import { serve, startPlatform } from "../kit/platform.js";

const platform = await startPlatform(loadConfig("edge"), { redis: true });
await serve(platform, { services: [], routes: () => {} });
