# syntax=docker/dockerfile:1
# fleetgate-vllm: the gateway and a vLLM worker in one container (`fleetgate serve`), built FROM the official
# vLLM image. It takes vLLM's and RunPod's conventions (MODEL/MODEL_NAME, SERVED_MODEL_NAME, HF_TOKEN,
# MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, PORT) and vLLM's flags after `--`:
#   docker build -f deploy/docker/vllm.Dockerfile -t fleetgate-vllm:0.1.0 .
#   docker run --gpus all -p 8000:8000 -e MODEL=Qwen/Qwen2.5-7B-Instruct -e HF_TOKEN fleetgate-vllm:0.1.0 \
#       -- --enable-auto-tool-choice --tool-call-parser hermes
ARG VLLM_IMAGE=vllm/vllm-openai:v0.26.0
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${VLLM_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fleetgate-vllm" \
      org.opencontainers.image.description="fleetgate gateway and a vLLM worker in one container" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/fleetgate/fleetgate" \
      org.opencontainers.image.documentation="https://github.com/fleetgate/fleetgate/blob/main/docs/deploy.md"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /tmp/wheels
COPY deploy/docker/requirements-gateway.txt /tmp/requirements-gateway.txt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# fleetgate gets a venv of its own: vLLM's pins (pydantic, httpx, ...) stay vLLM's. `vllm` stays first on PATH.
# (The vLLM image's Python has venv; `uv` is the fallback where a release ships it without ensurepip.)
RUN { python3 -m venv /opt/fleetgate || uv venv --seed --python python3 /opt/fleetgate; } \
    && /opt/fleetgate/bin/pip install -c /tmp/requirements-gateway.txt /tmp/wheels/*.whl \
    && /opt/fleetgate/bin/pip uninstall -y pip \
    && rm -rf /tmp/wheels /tmp/requirements-gateway.txt \
    && groupadd --gid 10001 fleetgate \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /home/fleetgate --create-home fleetgate
# Hub downloads, torch.compile and Triton caches go under HOME: mount a volume there to keep them.
ENV PATH=$PATH:/opt/fleetgate/bin \
    HOME=/home/fleetgate \
    HF_HOME=/home/fleetgate/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    FLEETGATE_ENGINE=vllm \
    FLEETGATE_ADMIN_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/fleetgate
EXPOSE 8000 8001
# Healthy while the model loads too: fleetgate holds requests until vLLM is ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/fleetgate/bin/python", "-m", "fleetgate.container.healthcheck"]
ENTRYPOINT ["/opt/fleetgate/bin/python", "-m", "fleetgate.container"]
