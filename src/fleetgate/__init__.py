"""fleetgate: an OpenAI-compatible serving layer for fleets of vLLM servers."""

__version__ = "0.1.0"
