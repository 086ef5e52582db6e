"""The embedded engine: a local Hugging Face model served with vLLM's API and metrics.

Nothing here imports torch at import time; the gateway imports `fleetgate.engines` without the `[embedded]`
extra installed.
"""
