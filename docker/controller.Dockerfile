# syntax=docker/dockerfile:1
#
# The controller: `node controller/dist/main.js` (what `npm start` runs), with
# `llmctl` on the PATH. In containers it runs with CONTROLLER_MODE=cluster:
# the gateway and the worker agents are containers of their own. The image
# also holds the gateway and the worker agent, which the controller package
# depends on and forks in local mode.
# Build from the repository root:
#   docker build -f docker/controller.Dockerfile -t llmux/controller .

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
COPY worker-agent worker-agent/
COPY gateway gateway/
COPY controller controller/
RUN npx tsc -b shared worker-agent gateway controller \
  && chmod +x controller/dist/cli/main.js

# ---- deps: the controller's production dependencies only ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY shared/package.json shared/
COPY worker-agent/package.json worker-agent/
COPY gateway/package.json gateway/
COPY controller/package.json controller/
COPY load-tests/package.json load-tests/
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund --workspace=@llmux/controller \
  && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE}
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production \
    CONTROLLER_MODE=cluster \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9465
COPY --from=deps /app/node_modules node_modules/
COPY --from=build /src/package.json ./
COPY --from=build /src/shared/package.json shared/
COPY --from=build /src/shared/dist shared/dist/
COPY --from=build /src/shared/lua shared/lua/
COPY --from=build /src/shared/proto shared/proto/
COPY --from=build /src/worker-agent/package.json worker-agent/
COPY --from=build /src/worker-agent/dist worker-agent/dist/
COPY --from=build /src/gateway/package.json gateway/
COPY --from=build /src/gateway/dist gateway/dist/
COPY --from=build /src/controller/package.json controller/
COPY --from=build /src/controller/dist controller/dist/
RUN ln -s /app/controller/dist/cli/main.js /usr/local/bin/llmctl
# uid 1000 is the `node` user of the Node.js image; numeric so that
# Kubernetes' runAsNonRoot can check it.
USER 1000:1000
EXPOSE 9465
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.METRICS_PORT || 9465) + '/metrics').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# tini forwards SIGTERM, on which the controller gives its lease up.
ENTRYPOINT ["tini", "--"]
CMD ["node", "--enable-source-maps", "controller/dist/main.js"]
