// Structured JSON logs. One root logger per process; each service and request gets a
// child logger so every line carries `service` and, inside a call, `requestId`.
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(service: string, level = process.env.LOG_LEVEL ?? "info"): Logger {
  return pino({
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Tokens, passwords and keys must never reach a log line, even by accident.
    redact: {
      paths: ["password", "*.password", "token", "*.token", "refreshToken", "*.refreshToken", "privateKey", "*.privateKey", "authorization", "*.authorization"],
      censor: "[redacted]",
    },
  });
}
