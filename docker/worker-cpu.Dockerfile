# syntax=docker/dockerfile:1
#
# A worker agent for CPU nodes: `node worker-agent/dist/main.js` with the
# llamacpp engine (node-llama-cpp and its prebuilt linux-x64 binaries, loaded
# with build: 'never'). GGUF files live in MODELS_DIR (/models): mount a volume
# there, so `hf:` sources are downloaded once.
# Build from the repository root:
#   docker build -f docker/worker-cpu.Dockerfile -t llmux/worker-cpu .

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
RUN npx tsc -b shared worker-agent

# ---- deps: the worker agent's production dependencies only ----
# node-llama-cpp 3.21.1 and @node-llama-cpp/linux-x64 3.21.1 are pinned in
# worker-agent/package.json; --omit=optional leaves out the other platforms'
# binaries, --ignore-scripts its postinstall (the engine never builds).
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY shared/package.json shared/
COPY worker-agent/package.json worker-agent/
COPY gateway/package.json gateway/
COPY controller/package.json controller/
COPY load-tests/package.json load-tests/
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund --workspace=@llmux/worker-agent \
  && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE}
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/* \
  && mkdir -p /models \
  && chown 1000:1000 /models
WORKDIR /app
ENV NODE_ENV=production \
    MODELS_DIR=/models \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9464
COPY --from=deps /app/node_modules node_modules/
COPY --from=build /src/package.json ./
COPY --from=build /src/shared/package.json shared/
COPY --from=build /src/shared/dist shared/dist/
COPY --from=build /src/shared/lua shared/lua/
COPY --from=build /src/worker-agent/package.json worker-agent/
COPY --from=build /src/worker-agent/dist worker-agent/dist/
# uid 1000 is the `node` user of the Node.js image; numeric so that
# Kubernetes' runAsNonRoot can check it.
USER 1000:1000
EXPOSE 9464
# /healthz answers 200 once the engines are ready (503 while a model loads or
# downloads, and while draining).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.METRICS_PORT || 9464) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# tini forwards SIGTERM, on which the agent drains (DRAIN_TIMEOUT_MS) and hands back the rest.
ENTRYPOINT ["tini", "--"]
CMD ["node", "--enable-source-maps", "worker-agent/dist/main.js"]
