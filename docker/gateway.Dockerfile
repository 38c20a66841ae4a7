# syntax=docker/dockerfile:1
#
# The gateway: `node gateway/dist/main.js` on PORT (8000), bound to 0.0.0.0.
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t llmux/gateway .

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: every workspace's dependencies, then tsc ----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
COPY shared/package.json shared/
COPY worker-agent/package.json worker-agent/
COPY gateway/package.json gateway/
COPY controller/package.json controller/
COPY load-tests/package.json load-tests/
RUN npm ci --omit=optional --ignore-scripts --no-audit --no-fund
COPY tsconfig.base.json ./
COPY shared shared/
COPY gateway gateway/
RUN npx tsc -b shared gateway

# ---- deps: the gateway's production dependencies only ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY shared/package.json shared/
COPY worker-agent/package.json worker-agent/
COPY gateway/package.json gateway/
COPY controller/package.json controller/
COPY load-tests/package.json load-tests/
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund --workspace=@llmux/gateway \
  && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE}
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000
COPY --from=deps /app/node_modules node_modules/
COPY --from=build /src/package.json ./
COPY --from=build /src/shared/package.json shared/
COPY --from=build /src/shared/dist shared/dist/
COPY --from=build /src/shared/lua shared/lua/
COPY --from=build /src/gateway/package.json gateway/
COPY --from=build /src/gateway/dist gateway/dist/
# uid 1000 is the `node` user of the Node.js image; numeric so that
# Kubernetes' runAsNonRoot can check it.
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# tini reaps orphans and forwards SIGTERM, on which the gateway drains (DRAIN_TIMEOUT_MS).
ENTRYPOINT ["tini", "--"]
CMD ["node", "--enable-source-maps", "gateway/dist/main.js"]
