# A fresh clone needs exactly two commands: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit fmt clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,embedded]'
	touch $(STAMP)

# The most complete thing that exists today: the gateway on :8000 in front of two simulated vLLM servers
# (Llama-3.1-8B on an H200) on :8101 and :8102. Ctrl-C stops all three.
run: $(STAMP)
	@$(BIN)/fleetgate sim --profile h200-llama-3.1-8b --replicas 2 --port 8101 --served-model-name llama-8b \
		--startup-time 3 > .sim.log 2>&1 & SIM=$$!; \
	trap 'kill -TERM $$SIM 2>/dev/null; wait $$SIM 2>/dev/null' EXIT INT TERM; \
	echo "simulators starting on :8101 and :8102 (log: .sim.log)"; \
	$(BIN)/fleetgate gateway --upstream http://127.0.0.1:8101 --upstream http://127.0.0.1:8102 --port 8000

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
