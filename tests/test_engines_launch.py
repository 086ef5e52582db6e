"""Engine command lines and worker environments: what each engine is started with."""

from __future__ import annotations

import sys

from fleetgate.engines import embedded_launch, sim, vllm
from fleetgate.engines.base import LaunchArgs
from fleetgate.engines.registry import ENGINES

# What every engine is told: loopback only, its port, its served name.
SERVE = ["--host", "127.0.0.1", "--port", "8123", "--served-model-name", "m"]


def args(**changes: object) -> LaunchArgs:
    fields: dict[str, object] = {"model": "org/model", "served_model_name": "m", "port": 8123}
    return LaunchArgs(**{**fields, **changes})  # type: ignore[arg-type]


def test_vllm_command_line() -> None:
    launch = vllm.command(args(sleep=True, engine_args=["--max-model-len", "4096"]))
    assert launch.argv == [
        "vllm",
        "serve",
        "org/model",
        *SERVE,
        "--enable-sleep-mode",
        "--max-model-len",
        "4096",
    ]
    # vLLM serves /sleep and /wake_up only in dev mode.
    assert launch.env["VLLM_SERVER_DEV_MODE"] == "1"


def test_sim_and_embedded_command_lines() -> None:
    s = sim.command(args(model="l4-gemma-3-1b", engine_args=["--time-scale", "10"]))
    assert s.argv[:6] == [sys.executable, "-m", "fleetgate", "sim", "--profile", "l4-gemma-3-1b"]
    assert s.argv[-2:] == ["--time-scale", "10"]
    assert "--enable-sleep-mode" not in s.argv
    e = embedded_launch.command(args(model="/models/tiny", engine_args=["--dtype", "float32"]))
    module = [sys.executable, "-m", "fleetgate.engines.embedded"]
    assert e.argv == [*module, "--model", "/models/tiny", *SERVE, "--device", "cpu", "--dtype", "float32"]
    assert "--device" in (g := embedded_launch.command(args(gpus=["1"]))).argv
    assert g.argv[g.argv.index("--device") + 1] == "cuda"
    assert embedded_launch.command(args(model="demo")).argv[3:5] == ["--demo", "--host"]


def test_environment_gpus_token_offline_and_gates() -> None:
    launch = vllm.command(args(gpus=["2", "3"], hf_token="hf_secret", offline=True, env={"VLLM_X": "1"}))
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert launch.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert launch.env["HF_TOKEN"] == "hf_secret"
    assert launch.env["HF_HUB_OFFLINE"] == "1"
    assert launch.env["VLLM_X"] == "1"
    # The operator's shell may have dev mode on; a worker that does not sleep must not inherit it.
    child = launch.environ({"PATH": "/bin", "VLLM_SERVER_DEV_MODE": "1", "HF_TOKEN": "old"})
    assert child["PATH"] == "/bin"
    assert "VLLM_SERVER_DEV_MODE" not in child
    assert child["HF_TOKEN"] == "hf_secret"
    shown = launch.describe()
    assert "hf_secret" not in shown
    assert "HF_TOKEN=***" in shown
    assert "CUDA_VISIBLE_DEVICES=2,3" in shown


def test_no_gpus_no_token_sets_nothing() -> None:
    launch = sim.command(args())
    assert launch.env == {}
    assert "HF_TOKEN" not in launch.describe()


def test_registry() -> None:
    assert set(ENGINES) == {"vllm", "sim", "embedded"}
    assert all(name == e.name for name, e in ENGINES.items())
    assert not ENGINES["embedded"].sleeps
