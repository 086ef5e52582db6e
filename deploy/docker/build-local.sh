#!/usr/bin/env bash
# Build the gateway image for real without a registry: a Debian root file system from debootstrap becomes the
# base image (instead of python:*-slim), buildah builds deploy/docker/gateway.Dockerfile on it and runs it in
# front of a simulator on the host, one chat completion goes through it, then SIGTERM to its PID 1 must end
# it with status 0 (drained). Needs root (or rootless podman set up), debootstrap, buildah, podman,
# and access to deb.debian.org and PyPI. Not part of `make test`: docs/deploy.md says what it showed.
#   sudo deploy/docker/build-local.sh            (WORK=/tmp/fleetgate-image by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/fleetgate-image}
RUNTIME=${RUNTIME:-runc}        # crun 1.8 refuses cgroup v1/hybrid hosts; runc does not
BASE=localhost/debian-python:bookworm
IMAGE=localhost/fleetgate:dev
SIM_PORT=${SIM_PORT:-18601}
PORT=${PORT:-18600}
ADMIN_PORT=${ADMIN_PORT:-18602}
mkdir -p "$WORK"
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "debootstrap (bookworm, minbase + python3)"
if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
fi
step "import as $BASE"
# Where PyPI is reached through a TLS-inspecting proxy, only the host's CA bundle trusts it: the base image
# gets that bundle, and pip (whose own bundle would not) is pointed at it.
cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
podman image exists "$BASE" || tar -C "$WORK/rootfs" -c . \
    | podman import --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" - "$BASE" >/dev/null

step "buildah bud gateway.Dockerfile"
buildah bud --runtime "$RUNTIME" --network host --layers --format docker \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg REVISION="$(git rev-parse --short HEAD)" \
    -f deploy/docker/gateway.Dockerfile -t "$IMAGE" . | tail -n 5
podman image inspect "$IMAGE" --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}}'
podman image inspect "$IMAGE" --format '{{index .Config.Labels "org.opencontainers.image.title"}} {{index .Config.Labels "org.opencontainers.image.version"}}'
podman image ls "$IMAGE" --format 'size={{.Size}}'

step "simulator on the host :$SIM_PORT"
.venv/bin/fleetgate sim --port "$SIM_PORT" --startup-time 0 --served-model-name demo-sim >"$WORK/sim.log" 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SIM_PORT/health" >/dev/null && break; sleep 0.1; done

# `podman run` cannot start containers on this kind of host (runc: "error setting rlimits ... operation not
# permitted", whatever --ulimit says); `buildah run` on a container from the image can, with the image's user,
# environment and a PID namespace of its own (the entrypoint is PID 1 there). It runs the ENTRYPOINT by hand.
step "buildah run the image (FLEETGATE_UPSTREAMS, host network)"
buildah rm fleetgate-local >/dev/null 2>&1 || true
CTR=$(buildah from --name fleetgate-local "$IMAGE")
ENTRY=(/opt/fleetgate/bin/python -m fleetgate.container)
ENVS=(--env FLEETGATE_UPSTREAMS="http://127.0.0.1:$SIM_PORT" --env PORT="$PORT" --env FLEETGATE_ADMIN_PORT="$ADMIN_PORT")
buildah run --runtime "$RUNTIME" --network host "${ENVS[@]}" "$CTR" -- "${ENTRY[@]}" gateway \
    >"$WORK/container.log" 2>&1 &
RUN=$!
trap 'kill $SIM 2>/dev/null || true; buildah rm fleetgate-local >/dev/null 2>&1 || true' EXIT
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done
# The entrypoint as the host sees it: PID 1 of its own namespace, running as the image's user.
PID1=""
for status in /proc/[0-9]*/status; do
    pid=${status#/proc/}; pid=${pid%/status}
    if grep -qE '^NSpid:\s+[0-9]+\s+1$' "$status" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '^/opt/fleetgate/bin/python -m fleetgate.container'; then
        PID1=$pid
    fi
done
trap 'kill $SIM 2>/dev/null || true; kill -TERM "$PID1" 2>/dev/null || true; wait "$RUN" 2>/dev/null || true
      buildah rm fleetgate-local >/dev/null 2>&1 || true' EXIT
echo "entrypoint: host pid $PID1, $(grep -E '^(NSpid|Uid)' "/proc/$PID1/status" | tr '\n\t' '  ')"
buildah run --runtime "$RUNTIME" --network host "${ENVS[@]}" "$CTR" -- \
    /opt/fleetgate/bin/python -m fleetgate.container.healthcheck
curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "demo-sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}'
echo
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" -o "$WORK/metrics.txt"
grep -m 3 '^fleetgate_' "$WORK/metrics.txt"

step "SIGTERM to the container's PID 1 (the pre-stop delay, then the drain)"
kill -TERM "$PID1"
set +e; wait "$RUN"; CODE=$?; set -e
echo "exit=$CODE"
head -n 2 "$WORK/container.log"
grep -m 2 -i 'sigterm' "$WORK/container.log"
step "done"
