#!/bin/sh
# Runs one Vouch process: the first argument, else $SERVICE. `exec` makes node PID 1, so
# SIGTERM reaches it directly and the service shuts down gracefully.
set -eu
SERVICE="${1:-${SERVICE:-edge}}"
case "$SERVICE" in
  auth|promotion|voucher|provider|edge|provider-sim) ;;
  *) echo "entrypoint: unknown service '$SERVICE' (auth, promotion, voucher, provider, edge, provider-sim)" >&2; exit 64 ;;
esac
export SERVICE
# The tracing preload first (a no-op unless OTEL_EXPORTER_OTLP_ENDPOINT is set): it must
# patch pg and ioredis before the service imports them.
exec node --import /app/dist/services/kit/tracing-preload.js "/app/dist/services/$SERVICE/main.js"
