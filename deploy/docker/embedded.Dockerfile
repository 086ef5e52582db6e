# syntax=docker/dockerfile:1
# fleetgate with its embedded engine on the CPU: the gateway and a torch worker, for laptops and CI (where
# Ollama would go). `docker run -p 8000:8000 fleetgate-embedded:0.1.0` serves the tiny random-weight demo
# model; mount a model directory and set MODEL for a real one.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
COPY deploy/docker/requirements-gateway.txt /tmp/requirements-gateway.txt
# CPU-only torch (constraints.txt pins it): the default wheel pulls gigabytes of CUDA libraries.
RUN python3 -m venv /opt/fleetgate \
    && /opt/fleetgate/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu \
       -c constraints.txt -c /tmp/requirements-gateway.txt ".[embedded]" \
    && /opt/fleetgate/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fleetgate-embedded" \
      org.opencontainers.image.description="fleetgate with its embedded CPU engine, for development and CI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/fleetgate/fleetgate" \
      org.opencontainers.image.documentation="https://github.com/fleetgate/fleetgate/blob/main/docs/deploy.md"
RUN groupadd --gid 10001 fleetgate \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /home/fleetgate --create-home fleetgate
COPY --from=build /opt/fleetgate /opt/fleetgate
ENV PATH=/opt/fleetgate/bin:$PATH \
    HOME=/home/fleetgate \
    PYTHONUNBUFFERED=1 \
    FLEETGATE_ENGINE=embedded \
    FLEETGATE_ADMIN_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/fleetgate
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/fleetgate/bin/python", "-m", "fleetgate.container.healthcheck"]
ENTRYPOINT ["/opt/fleetgate/bin/python", "-m", "fleetgate.container"]
CMD ["demo"]
