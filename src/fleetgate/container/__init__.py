"""What fleetgate's container images run at start: `python -m fleetgate.container [ARGS]`.

`plan` turns the container's arguments and environment (vLLM's and RunPod's conventions: MODEL, MODEL_NAME,
SERVED_MODEL_NAME, MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, PORT, FLEETGATE_CONFIG, vLLM flags after `--`) into
one `fleetgate serve` or `fleetgate gateway` command line; `init` runs it as a tiny init (signals forwarded,
orphans reaped); `probe` and `ping` answer health checks (Docker's HEALTHCHECK, RunPod's /ping).
docs/deploy.md is the user's side of this contract.
"""
