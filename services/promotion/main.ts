// Composition root of the promotion service. Its rpcs are not implemented yet: until they are,
// it serves health, reflection and UNIMPLEMENTED for every rpc of its contract.
import { PromotionService } from "../../gen/vouch/promotion/v1/promotion_pb.js";
import { loadConfig } from "../kit/config.js";
import { serve, startPlatform } from "../kit/platform.js";

const platform = await startPlatform(loadConfig("promotion"), { postgres: true, redis: true, events: true });
await serve(platform, { services: [PromotionService], routes: (router) => router.service(PromotionService, {}) });
