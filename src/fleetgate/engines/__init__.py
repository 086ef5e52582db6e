"""How workers run: vLLM (a command line), the in-tree embedded engine, the simulator."""
