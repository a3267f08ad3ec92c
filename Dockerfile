# One image for every Vouch process; the command picks the service:
#   docker run vouch services/auth/main.ts
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production HOST=0.0.0.0
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY gen ./gen
COPY services ./services
USER node
ENTRYPOINT ["node", "--import", "tsx"]
CMD ["services/edge/main.ts"]
