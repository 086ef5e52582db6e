# syntax=docker/dockerfile:1
# fleetgate: the gateway only (no torch, no vLLM), in front of vLLM servers that run elsewhere.
#   docker build -f deploy/docker/gateway.Dockerfile -t fleetgate:0.1.0 .
#   docker run -p 8000:8000 -v $PWD/fleet.yaml:/etc/fleetgate/fleet.yaml:ro fleetgate:0.1.0
# Configuration: a fleet file (FLEETGATE_CONFIG, else ./fleet.yaml in the working directory /etc/fleetgate)
# or FLEETGATE_UPSTREAMS=url,url; docs/deploy.md lists the rest.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY deploy/docker/requirements-gateway.txt /tmp/requirements-gateway.txt
# One venv, copied whole into the final stage: no compiler, pip cache or sources there. The kubernetes extra
# (kubernetes_asyncio) is what the Helm chart's fleet file needs: EndpointSlice discovery, /scale, Leases.
RUN python3 -m venv /opt/fleetgate \
    && /opt/fleetgate/bin/pip install -c /tmp/requirements-gateway.txt ".[kubernetes]" \
    && /opt/fleetgate/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fleetgate" \
      org.opencontainers.image.description="OpenAI-compatible gateway for fleets of vLLM servers" \
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
    FLEETGATE_ADMIN_HOST=0.0.0.0
# `fleetgate gateway` reads ./fleet.yaml when FLEETGATE_CONFIG is unset: mount the fleet file here.
WORKDIR /etc/fleetgate
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/fleetgate/bin/python", "-m", "fleetgate.container.healthcheck"]
# The entrypoint is a tiny init: fleetgate runs as its child and gets SIGTERM from `docker stop`.
ENTRYPOINT ["/opt/fleetgate/bin/python", "-m", "fleetgate.container"]
CMD ["gateway"]
