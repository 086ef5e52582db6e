# syntax=docker/dockerfile:1
# fleetgate-vllm with the model inside the image (Cloud Run's pattern: no download at cold start). The hub
# token is a build secret: it is read from a file that exists only while one RUN runs, never in a layer,
# and only in the download stage, which is not shipped.
#   docker build -f deploy/docker/vllm-baked.Dockerfile --build-arg MODEL_NAME=google/gemma-3-1b-it \
#       --secret id=hf_token,env=HF_TOKEN -t fleetgate-vllm-gemma:0.1.0 .
ARG FLEETGATE_VLLM_IMAGE=fleetgate-vllm:0.1.0
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS download
ARG MODEL_NAME
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_DISABLE_TELEMETRY=1
RUN pip install huggingface-hub==0.36.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=secret,id=hf_token \
    test -n "${MODEL_NAME}" || { echo "--build-arg MODEL_NAME=<hub id> is required" >&2; exit 1; }; \
    HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
    python3 -c "import os, sys; from huggingface_hub import snapshot_download; \
snapshot_download(sys.argv[1], cache_dir='/hub', token=os.environ.get('HF_TOKEN') or None, \
ignore_patterns=['*.pth', 'original/*'])" "${MODEL_NAME}"

FROM ${FLEETGATE_VLLM_IMAGE}
ARG MODEL_NAME
LABEL org.opencontainers.image.title="fleetgate-vllm (model baked in)" \
      org.opencontainers.image.description="fleetgate-vllm serving ${MODEL_NAME} from the image"
COPY --from=download --chown=10001:10001 /hub /home/fleetgate/.cache/huggingface/hub
# Offline at run time: the weights are here, and a cold start must never wait on (or fail with) the hub.
ENV MODEL=${MODEL_NAME} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
