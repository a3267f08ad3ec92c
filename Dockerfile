# syntax=docker/dockerfile:1
# One image for every Vouch process; SERVICE (or the first argument) picks which one runs:
#   docker build -t vouch .
#   docker run -e SERVICE=auth vouch          # or: docker run vouch auth
# SERVICE is one of auth, promotion, voucher, provider, edge, provider-sim (default edge).
ARG NODE_IMAGE=node:24-bookworm-slim

# 1. Build: every dependency, then TypeScript → JavaScript (dist/) and, when the repo has
#    one, the admin console's static build (web/dist/, served by the edge).
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build:server
# The console is optional: built by the root `build:web` script, else by web/'s own
# `build` script; without either the image serves the rpcs alone (an empty web/dist/).
RUN if node -e "process.exit(require('./package.json').scripts?.['build:web'] ? 0 : 1)"; then \
      npm run build:web; \
    elif [ -f web/package.json ] && node -e "process.exit(require('./web/package.json').scripts?.build ? 0 : 1)"; then \
      (cd web && { [ -f package-lock.json ] && npm ci --no-audit --no-fund || true; } && npm run build); \
    fi && mkdir -p web/dist

# 2. Production dependencies only (no TypeScript, buf, vite, test tools).
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# 3. Runtime: plain node on compiled JavaScript, as the unprivileged `node` user (uid 1000).
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    SERVICE=edge \
    EDGE_STATIC_DIR=/app/web/dist \
    NODE_OPTIONS=--enable-source-maps
WORKDIR /app
COPY --from=prod-deps --chown=root:root /app/node_modules ./node_modules
COPY --chown=root:root package.json ./
COPY --from=build --chown=root:root /src/dist ./dist
COPY --from=build --chown=root:root /src/web/dist ./web/dist
COPY --chown=root:root deploy/docker/entrypoint.sh deploy/docker/healthcheck.mjs ./deploy/docker/
# The code is owned by root and read-only for the process; nothing is written at run
# time (logs go to stdout), so the container also runs with a read-only root filesystem.
USER node
EXPOSE 50051 50052 50053 50054 8080 8090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["node", "deploy/docker/healthcheck.mjs"]
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
