// The "empty rpc" ceiling: our runtime (listener, protocol handling, interceptors, metrics,
// the access-policy check) serving a PUBLIC rpc whose handler returns at once. Started as
// its own process by bench/ceilings.ts so the load generator does not share its event loop.
import { PromotionService } from "../gen/vouch/promotion/v1/promotion_pb.js";
import { loadConfig } from "../services/kit/config.js";
import { serve, startPlatform } from "../services/kit/platform.js";

const platform = await startPlatform(loadConfig("promotion"), {});
await serve(platform, { services: [PromotionService], routes: (router) => router.service(PromotionService, { listActiveCampaigns: () => ({}) }) });
