# A fresh clone needs exactly two commands: `make run` and `make test`. Both install what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` listens here (the admin port serves /metrics, /admin/fleet and `fleetgate status`).
PORT ?= 8000
ADMIN_PORT ?= 8001
# `make run MODEL=...` serves a model directory or hub id instead of the demo model.
MODEL ?=
# PyTorch's own index of CPU-only builds: the wheel on PyPI for Linux is the CUDA build, which brings about
# 3 GB of CUDA libraries a machine without an NVIDIA GPU cannot use.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test lint typecheck unit fmt clean test-deps

$(STAMP): pyproject.toml constraints.txt
	@# Debian's python3 comes without venv: its python3-venv package is installed when apt-get is there.
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || { rm -rf $(VENV); command -v apt-get >/dev/null 2>&1 \
	  && echo "make: installing python3-venv (apt-get)" && $(SUDO) apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null \
	  && $(PY) -m venv $(VENV); } || { \
	  echo "make: '$(PY) -m venv' failed: install Python's venv module (Debian/Ubuntu: python3-venv)" >&2; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	@# torch alone first, at the version constraints.txt pins: a wheel pip already has (a local mirror or
	@# cache) as is; otherwise the CPU build unless an NVIDIA driver is present.
	$(BIN)/pip install -q -c constraints.txt --no-index --no-deps torch 2>/dev/null \
	  || if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q -c constraints.txt torch; \
	     else $(BIN)/pip install -q -c constraints.txt --no-deps --index-url $(TORCH_CPU_INDEX) torch; fi
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,embedded]'
	touch $(STAMP)

# The quick start (a demo): the gateway on :$(PORT) with one embedded worker serving a tiny model made on first
# run (random weights: its answers are meaningless). Ctrl-C stops both. `fleetgate up examples/sim-fleet.yaml`
# shows scaling without a GPU.
run: $(STAMP)
	@$(BIN)/python -c "$$PORT_CHECK" $(PORT) $(ADMIN_PORT)
ifeq ($(MODEL),)
	@echo "fleetgate DEMO: a tiny random-weight model (its output is meaningless), made on first run."
	@echo "  base URL:   http://127.0.0.1:$(PORT)/v1   (model: demo; admin and /metrics on :$(ADMIN_PORT))"
	@echo "  try:        curl -s http://127.0.0.1:$(PORT)/v1/chat/completions -H 'content-type: application/json' \\"
	@echo "                -d '{\"model\": \"demo\", \"max_tokens\": 32, \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'"
	@echo "  real model: make run MODEL=Qwen/Qwen2.5-0.5B-Instruct   (a hub id or a model directory)"
	@echo "  status:     $(BIN)/fleetgate status --admin http://127.0.0.1:$(ADMIN_PORT)   worker logs: ./fleetgate-logs/"
	@echo "  Ctrl-C stops everything."
	@exec $(BIN)/fleetgate up examples/embedded.yaml --port $(PORT) --admin-port $(ADMIN_PORT)
else
	@echo "fleetgate: $(MODEL) on the embedded engine (the first start downloads it unless it is a directory)."
	@echo "  base URL:   http://127.0.0.1:$(PORT)/v1   (model: $(MODEL); admin and /metrics on :$(ADMIN_PORT))"
	@echo "  status:     $(BIN)/fleetgate status --admin http://127.0.0.1:$(ADMIN_PORT)   worker logs: ./fleetgate-logs/"
	@exec $(BIN)/fleetgate serve '$(MODEL)' --engine embedded --host 127.0.0.1 --port $(PORT) --admin-port $(ADMIN_PORT)
endif

# Both ports are checked before anything is printed: vLLM's default port is 8000 too.
define PORT_CHECK
import sys
from fleetgate.api.serve import PortInUseError, bind
for port, var in zip(sys.argv[1:], ("PORT", "ADMIN_PORT")):
    try:
        bind("127.0.0.1", int(port), var).close()
    except PortInUseError:
        sys.exit(f"make run: port {port} is already in use (a vLLM or another fleetgate?): "
                 f"try make run {var}={int(port) + 100}")
endef
export PORT_CHECK

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Streams and load tests open many sockets: the soft limit is raised as far as the hard one allows.
unit: $(STAMP) test-deps
	ulimit -n 20000 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; $(BIN)/pytest -q

# What the tests need outside Python, from Debian's packages: Chromium renders bench reports in the browser
# tests; Redis and PostgreSQL back the tenancy tests (their fixtures start private servers on free ports).
TEST_PROGRAMS := chromium:chromium redis-server:redis-server /usr/lib/postgresql:postgresql
test-deps:
	@missing=""; for pair in $(TEST_PROGRAMS); do prog=$${pair%%:*}; pkg=$${pair##*:}; \
	  { command -v $$prog >/dev/null 2>&1 || [ -e $$prog ]; } || missing="$$missing $$pkg"; done; \
	[ -z "$$missing" ] || { \
	  command -v apt-get >/dev/null 2>&1 || { \
	    echo "make: the tests need these packages:$$missing (install them with your package manager)" >&2; exit 1; }; \
	  echo "make: installing what the tests need (apt-get install$$missing)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; }

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
