// provider-sim: a stand-in for the outside voucher provider (dev, tests, demos), run as its
// own process with a small HTTP JSON API (see sim.ts). Configuration:
//   PROVIDER_SIM_PORT (or PORT), HOST     where it listens (default 127.0.0.1:8090)
//   PROVIDER_SIM_BEHAVIOUR                JSON {default: {...}, byPhoneNumber: {...}} (see behaviour.ts);
//                                         changeable at runtime with PUT /sim/config
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { loadConfig } from "../kit/config.js";
import { createLogger } from "../kit/log.js";
import { parseConfig } from "./behaviour.js";
import { createProviderSim } from "./sim.js";

const config = loadConfig("provider-sim");
const log = createLogger("provider-sim", config.logLevel);
const sim = createProviderSim({ config: parseConfig(JSON.parse(process.env.PROVIDER_SIM_BEHAVIOUR || "{}")), log });
const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => sim.handle(req, res));

await new Promise<void>((resolve, reject) => {
  server.once("error", reject);
  server.listen(config.port, config.host, () => resolve());
});
const { port } = server.address() as AddressInfo;
log.info({ port, url: `http://${config.host}:${port}`, behaviour: sim.config() }, "provider-sim listening");

const stop = (signal: string) => {
  log.info({ signal }, "shutting down");
  sim.close();
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2_000).unref();
};
process.once("SIGTERM", () => stop("SIGTERM"));
process.once("SIGINT", () => stop("SIGINT"));
