// The "empty rpc" ceiling: our runtime (listener, gRPC/Connect protocol handling, the kit's
// interceptors, metrics, and the access-token check with its revocation look-up) serving
// VoucherService.ValidateVoucher — an authenticated rpc, like every benchmarked path but
// login — with a handler that returns at once. Started as its own process by
// bench/ceilings.ts so the load generator does not share its event loop.
import { VoucherService } from "../gen/vouch/voucher/v1/voucher_pb.js";
import { loadConfig } from "../services/kit/config.js";
import { serve, startPlatform } from "../services/kit/platform.js";

const platform = await startPlatform(loadConfig("voucher"), {});
await serve(platform, { services: [VoucherService], routes: (router) => router.service(VoucherService, { validateVoucher: () => ({}) }) });
