"""The package's layering, read from the source's imports (ast), so a move that breaks it fails here.

DESIGN.md: imports point down the request path and never back up; the simulator and the embedded engine
share the worker kit and never import each other; pydantic stays at the edges (config/, api/ and the few
places that validate input from outside, listed below with the reason each is an edge).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "fleetgate"

# Lowest first. A package may import packages of a lower layer only; packages of one layer never import
# each other. The worker side (worker/ under sim/ and engines/) and the gateway side (fleet/ up to api/)
# meet only where the gateway launches workers (scaling/ and api/ import engines/ launch recipes).
LAYERS: list[set[str]] = [
    {"protocol", "tokenizer", "chat_template"},  # the wire and text: leaves
    {"config"},  # the fleet file (pydantic models, loading, presets)
    {"worker"},  # the vLLM-compatible worker kit
    {"sim", "engines"},  # the programs on the kit
    {"fleet"},  # fleet state, scraper, health, KV events, Kubernetes discovery
    {"routing", "bench"},  # picker and scorers over fleet state; the load generator (reads fleet's parser)
    {"admission", "tenancy"},  # keys, limits, the flow queue; issued keys, limiter, ledger (one room)
    {"relay"},  # upstream HTTP client (calls the router)
    {"scaling"},  # pools, autoscaler, providers
    {"api"},  # the HTTP surface and the gateway's wiring
    {"cli", "container"},  # the command line; the container images' entrypoint
    {"__main__"},  # python -m fleetgate
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
# Packages of one layer that are one concern split in two, so they may import each other: tenancy/ is the
# store behind admission's keys and limits (DESIGN: admission owns keys, tenants, limits, the usage ledger).
ONE_ROOM = {frozenset({"admission", "tenancy"})}
# Imports that go up, each with its reason; the test fails when one is gone (then delete it).
UPWARD = {
    # the fleet file checks scorer names against the scorer registry, the one list of names (issue 13)
    "config/routing.py imports fleetgate.routing.scorers",
    "config/routing.py imports fleetgate.routing.scorers.SCORERS",
}

# Modules that may import pydantic besides config/ and api/, each an edge that validates outside input.
PYDANTIC_EDGES = {
    # vLLM validates request bodies with pydantic; the worker does the same to answer with vLLM's messages.
    "worker/requests.py",
    # the simulator's fault settings, read from flags and from the admin PATCH /sim/faults body
    "sim/faults.py",
    # --kv-events-config, a JSON flag parsed as vLLM parses it
    "sim/kv_publisher.py",
    # vLLM's rerank/score/pooling/classify bodies, validated as vLLM validates them (like worker/requests.py)
    "sim/pooling.py",
    # vLLM's Anthropic Messages bodies (/v1/messages, count_tokens), validated as vLLM validates them
    "sim/messages_request.py",
    # step-time profiles, YAML files shipped with the package or named by the user
    "sim/profiles.py",
    # the sim and bench command lines turn a ValidationError into a one-line problem and exit 2
    "sim/cli_support.py",
    "bench/cli_support.py",
    # bench workload files (YAML)
    "bench/workloads/settings.py",
    # what an operator sends to issue a key (admin API body, `fleetgate keys create` flags)
    "tenancy/requests.py",
}

# Imports of the pydantic config models below config/ and api/: the first three are what the settings
# dataclasses of issue 13 remove (plain settings built at the edge); listed so none is added, and so this
# test fails once an entry is gone (then delete the entry).
CONFIG_BELOW_EDGE = {
    "fleet/kube.py",
    "fleet/k8s_discovery.py",
    "tenancy/runtime.py",
    # edges: key commands of the CLI and the admin API's key bodies
    "tenancy/commands.py",
    "tenancy/requests.py",
}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> Iterator[str]:
    """Every absolute module name a file imports, at module level, in functions or under TYPE_CHECKING."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def package(rel: str) -> str:
    return rel.split("/", 1)[0].removesuffix(".py")


def fleetgate_package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fleetgate" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def test_every_package_has_a_layer() -> None:
    packages = {package(rel) for rel, _ in modules()} - {"__init__"}
    assert packages - RANK.keys() == set(), "a new package needs a place in LAYERS"


def test_imports_point_down() -> None:
    wrong = []
    for rel, tree in modules():
        src = package(rel)
        if src == "__init__":
            continue
        for module in imported(tree):
            dst = fleetgate_package(module)
            if dst is None or dst == src or frozenset({src, dst}) in ONE_ROOM:
                continue
            if RANK[dst] >= RANK[src]:
                wrong.append(f"{rel} imports {module}")
    assert set(wrong) == UPWARD


@pytest.mark.parametrize(("a", "b"), [("sim", "engines"), ("engines", "sim")])
def test_sim_and_engines_never_import_each_other(a: str, b: str) -> None:
    wrong = {
        f"{rel} imports {m}"
        for rel, tree in modules()
        if package(rel) == a
        for m in imported(tree)
        if fleetgate_package(m) == b
    }
    assert wrong == set()


def test_pydantic_only_at_the_edges() -> None:
    users = {
        rel
        for rel, tree in modules()
        if package(rel) not in {"config", "api", "cli"}
        and any(m == "pydantic" or m.startswith("pydantic.") for m in imported(tree))
    }
    assert users == PYDANTIC_EDGES


def test_config_models_stay_at_the_edges() -> None:
    users = {
        rel
        for rel, tree in modules()
        if package(rel) not in {"config", "api", "cli", "__main__"}
        and any(fleetgate_package(m) == "config" for m in imported(tree))
    }
    assert users == CONFIG_BELOW_EDGE


def module_name(rel: str) -> str:
    name = "fleetgate." + rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def test_no_import_cycles_between_modules() -> None:
    """No two modules import each other, directly or around a loop, even under TYPE_CHECKING."""
    trees = dict(modules())
    names = {module_name(rel) for rel in trees}
    graph: dict[str, set[str]] = {}
    for rel, tree in trees.items():
        # `from fleetgate.sim import render` names the module fleetgate.sim.render; keep only real modules.
        graph[module_name(rel)] = {m for m in imported(tree) if m in names} - {module_name(rel)}
    cycles = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
