# syntax=docker/dockerfile:1
#
# A worker agent for GPU nodes, on the official vLLM image: the agent
# (`node worker-agent/dist/main.js`) runs `vllm serve` as its child for each
# deployment whose engine is `vllm` (command `vllm`, on the image's PATH), on
# 127.0.0.1 inside the container. Node.js 20 is copied in from the official
# Node.js image (the same binary as the CPU images).
# Build from the repository root:
#   docker build -f docker/worker-gpu.Dockerfile -t llmux/worker-gpu .
# Pin VLLM_IMAGE to the vLLM release you have tested with your models.

ARG NODE_IMAGE=node:20-bookworm-slim
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

# ---- the Node.js runtime to copy into the vLLM image ----
FROM ${NODE_IMAGE} AS node

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

# ---- runtime: vLLM + Node.js + the agent ----
FROM ${VLLM_IMAGE}
COPY --from=node /usr/local/bin/node /usr/local/bin/node
# The user vLLM runs as: uid 1000 with a home for its caches (torch, triton).
# Weights downloaded by vLLM go to HF_HOME under /models: mount a volume there.
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/* \
  && useradd --uid 1000 --user-group --create-home --home-dir /home/llmux llmux \
  && mkdir -p /models \
  && chown 1000:1000 /models
WORKDIR /app
ENV NODE_ENV=production \
    HOME=/home/llmux \
    HF_HOME=/models/huggingface \
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
USER 1000:1000
EXPOSE 9464
# /healthz answers 200 once every vLLM process answers its /health; loading
# weights can take minutes (the engine's healthTimeoutMs is 10 min by default).
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.METRICS_PORT || 9464) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# tini reaps the processes vLLM leaves behind and forwards SIGTERM, on which the
# agent drains (DRAIN_TIMEOUT_MS), hands back the rest and stops vLLM.
ENTRYPOINT ["tini", "--"]
CMD ["node", "--enable-source-maps", "worker-agent/dist/main.js"]
