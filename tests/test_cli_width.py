"""The command line at 80 columns: every help page and table reads whole (no flag or name cut, no emoji)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from fleetgate.api.status import render_fleet
from fleetgate.cli import command
from fleetgate.sim.profiles import profile_names

WIDTH = 80


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not sub.hidden:
            yield from _commands(sub, (*path, name))


PAGES = list(_commands(command()))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(WIDTH), "TERM": "xterm-256color"}
    env.pop("TERMINAL_WIDTH", None)
    return subprocess.run(
        [sys.executable, "-m", "fleetgate", *args], capture_output=True, text=True, env=env, timeout=60
    )


def _assert_readable(text: str) -> None:
    for line in text.splitlines():
        assert len(line) <= WIDTH, f"wider than {WIDTH} columns: {line!r}"
    assert "…" not in text, "something was cut"
    # Emoji and the rich markup that turns ':A:' into one; plain ASCII apart from a few typographic marks.
    odd = {c for c in text if not c.isascii() and c not in "—–’ ─━"}
    assert not odd, f"unexpected characters {odd}"


def test_every_command_has_a_help_page() -> None:
    names = {" ".join(path) for path, _ in PAGES}
    assert {"", "serve", "up", "gateway", "status", "sim", "sim profiles", "bench", "bench compare"} <= names


@pytest.mark.parametrize("path", [p for p, _ in PAGES], ids=lambda p: " ".join(p) or "fleetgate")
def test_help_page_reads_whole_at_80_columns(path: tuple[str, ...]) -> None:
    cmd = dict(PAGES)[path]
    result = _run(*path, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    _assert_readable(text)
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        for flag in [*param.opts, *param.secondary_opts]:
            if flag.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{flag} cut or missing"
        # Values are named as people name them, not as Python types.
        assert not re.search(r"<\w+(\[\w+\])?( range)?>", text), "a Python type as a metavar"
    if getattr(cmd, "commands", None) and getattr(cmd, "invoke_without_command", False):
        # sim and bench run without a subcommand: the usage line must not demand one.
        assert "[COMMAND [ARGS]...]" in text.splitlines()[0]


def test_bench_input_len_forms_are_not_emoji() -> None:
    text = _run("bench", "--help").stdout
    assert "uniform:A:B" in text and "normal:M:SD" in text


def test_serve_examples_are_not_wrapped_mid_command() -> None:
    lines = _run("serve", "--help").stdout.splitlines()
    examples = [line.strip() for line in lines if line.strip().startswith("fleetgate serve ")]
    assert len(examples) == 3
    assert "fleetgate serve Qwen/Qwen2.5-7B-Instruct -- --max-model-len 8192" in examples


def test_sim_profiles_table_keeps_every_name_whole() -> None:
    result = _run("sim", "profiles")
    assert result.returncode == 0
    _assert_readable(result.stdout)
    first_column = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(profile_names()) <= first_column


def test_status_tables_keep_ids_and_urls_whole() -> None:
    worker = {
        "id": "qwen2.5-7b-instruct-12",
        "state": "starting",
        "phase": "download",
        "progress": 0.42,
        "starting_s": 73.4,
        "restarts": 1,
        "wakes": 0,
        "url": "http://127.0.0.1:45678",
        "gpus": ["0", "1"],
        "log": "fleetgate-logs/qwen2.5-7b-instruct-12.log",
        "last_error": None,
    }
    endpoint = {
        "name": "qwen2.5-7b-instruct-12",
        "url": "http://127.0.0.1:45678",
        "routable": False,
        "in_flight": 0,
        "last_error": "connection refused by the upstream while it was starting",
    }
    fleet = {
        "pools": {
            "qwen2.5-7b-instruct": {
                "queue": {"waiting": 3},
                "workers": [worker],
                "workers_desired": 1,
                "endpoints": [endpoint],
            }
        }
    }
    console = Console(width=WIDTH, record=True, emoji=False, force_terminal=False)
    render_fleet(fleet, console)
    text = console.export_text()
    _assert_readable(text)
    for name in ("qwen2.5-7b-instruct-12", "http://127.0.0.1:45678", "qwen2.5-7b-instruct"):
        assert name in text
    assert "download 42%" in text and "73 s so far" in text
    assert "fleetgate-logs/" in text  # where the worker's own log is
