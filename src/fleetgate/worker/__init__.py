"""The vLLM-compatible worker kit shared by the simulator and the embedded engine."""
