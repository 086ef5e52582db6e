# A fresh clone needs exactly two commands: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` listens here (the admin port serves /metrics, /admin/fleet and `fleetgate status`).
PORT ?= 8000
ADMIN_PORT ?= 8001

.PHONY: run test lint typecheck unit fmt clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,embedded]'
	touch $(STAMP)

# The quick start (a demo): the gateway on :$(PORT) with one embedded worker serving a tiny model made on first
# run (random weights: its answers are meaningless). Ctrl-C stops both. examples/embedded.yaml says what to
# change for a real model; `fleetgate up examples/sim-fleet.yaml` shows scaling without a GPU.
run: $(STAMP)
	@echo "fleetgate DEMO: a tiny random-weight model (its output is meaningless), made on first run."
	@echo "  base URL:  http://127.0.0.1:$(PORT)/v1   (model: demo; admin and /metrics on :$(ADMIN_PORT))"
	@echo "  try:       curl -s http://127.0.0.1:$(PORT)/v1/chat/completions -H 'content-type: application/json' \\"
	@echo "               -d '{\"model\": \"demo\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'"
	@echo "  real model: set workers.model in examples/embedded.yaml to a model directory or hub id"
	@echo "              (or: $(BIN)/fleetgate serve Qwen/Qwen2.5-0.5B-Instruct --engine embedded)"
	@echo "  status:    $(BIN)/fleetgate status --admin http://127.0.0.1:$(ADMIN_PORT)   Ctrl-C stops everything."
	@exec $(BIN)/fleetgate up examples/embedded.yaml --port $(PORT) --admin-port $(ADMIN_PORT)

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
