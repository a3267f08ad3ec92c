// Structured JSON logs. One root logger per process; each service and request gets a
// child logger so every line carries `service` and, inside a call, `requestId`; a line
// written inside a traced rpc or event also carries its `traceId` and `spanId`.
import { pino, type DestinationStream, type Logger } from "pino";
import { traceLogFields } from "./tracing.js";

export type { Logger };

/** `destination` defaults to stdout; tests pass a stream to read the lines back. */
export function createLogger(service: string, level = process.env.LOG_LEVEL ?? "info", destination?: DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin: traceLogFields,
    // Tokens, passwords and keys must never reach a log line, even by accident.
    redact: {
      paths: ["password", "*.password", "token", "*.token", "refreshToken", "*.refreshToken", "privateKey", "*.privateKey", "authorization", "*.authorization"],
      censor: "[redacted]",
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
