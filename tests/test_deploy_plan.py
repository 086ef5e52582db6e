"""The container entrypoint's translation: environment and arguments in, one fleetgate command line out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from fleetgate.config import config_for_model, load_config
from fleetgate.container.plan import Plan, PlanError, plan

RUNTIME = Path("/run/fleetgate")


def run(*args: str, **env: str) -> Plan:
    return plan(list(args), env, runtime_dir=RUNTIME)


def fleet_file(p: Plan) -> dict[str, object]:
    assert p.fleet_file is not None
    path, text = p.fleet_file
    assert path == RUNTIME / "fleetgate-serve.json"
    data: dict[str, object] = json.loads(text)
    return data


def test_vllm_environment_becomes_serve_flags_and_vllm_flags() -> None:
    p = run(
        "--",
        "--enable-prefix-caching",
        MODEL="Qwen/Qwen2.5-7B-Instruct",
        SERVED_MODEL_NAME="qwen",
        MAX_MODEL_LEN="8192",
        GPU_MEMORY_UTILIZATION="0.9",
        PORT="8080",
        HF_TOKEN="hf_x",
    )
    assert p.argv == [
        "fleetgate",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct",
        "--port",
        "8080",
        "--served-model-name",
        "qwen",
        "--",
        "--enable-prefix-caching",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.9",
    ]
    # HF_TOKEN is not translated: the worker inherits it (and nothing shows it).
    assert "hf_x" not in p.describe()
    assert p.fleet_file is None and p.unset_env == frozenset()


def test_runpod_names_and_their_precedence() -> None:
    p = run(MODEL_NAME="meta-llama/Llama-3.1-8B-Instruct", OPENAI_SERVED_MODEL_NAME_OVERRIDE="llama")
    assert p.argv == [
        "fleetgate",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name",
        "llama",
    ]
    # vLLM's MODEL beats RunPod's MODEL_NAME; our SERVED_MODEL_NAME beats RunPod's override.
    p = run(MODEL="a", MODEL_NAME="b", SERVED_MODEL_NAME="x", OPENAI_SERVED_MODEL_NAME_OVERRIDE="y")
    assert p.argv[2:] == ["a", "--served-model-name", "x"]


def test_arguments_beat_flags_after_dashes_which_beat_the_environment() -> None:
    env = {"MODEL": "env-model", "PORT": "8080", "MAX_MODEL_LEN": "4096", "SERVED_MODEL_NAME": "env-name"}
    p = run("arg-model", "--port", "9000", "--", "--port", "9100", "--max-model-len", "2048", **env)
    assert p.argv == [
        "fleetgate",
        "serve",
        "arg-model",
        "--port",
        "9000",
        "--served-model-name",
        "env-name",
        "--",
        "--max-model-len",
        "2048",
    ]
    p = run("--", "--served-model-name=flag-name", "--port=9100", **env)
    assert p.argv == [
        "fleetgate",
        "serve",
        "env-model",
        "--port",
        "9100",
        "--served-model-name",
        "flag-name",
        "--",
        "--max-model-len",
        "4096",
    ]


def test_vllm_image_style_arguments_are_lifted_where_the_gateway_must_own_them() -> None:
    """`docker run vllm/vllm-openai --model M --host 0.0.0.0 --port 8000 --served-model-name n ...` works the
    same on this image: the worker stays on loopback under fleetgate's name and port."""
    p = run(
        "--model",
        "M",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        "n",
        "--max-model-len",
        "1024",
        "--enforce-eager",
    )
    assert p.argv == [
        "fleetgate",
        "serve",
        "M",
        "--port",
        "8000",
        "--host",
        "0.0.0.0",
        "--served-model-name",
        "n",
        "--",
        "--max-model-len",
        "1024",
        "--enforce-eager",
    ]
    # `serve` as the first argument is the same thing.
    assert run("serve", "M", "--max-workers", "2").argv == ["fleetgate", "serve", "M", "--max-workers", "2"]


def test_fleetgate_settings_from_the_environment() -> None:
    p = run(
        MODEL="demo",
        FLEETGATE_ENGINE="embedded",
        FLEETGATE_MIN_WORKERS="0",
        FLEETGATE_MAX_WORKERS="2",
        FLEETGATE_IDLE_TIMEOUT="120",
        FLEETGATE_GPUS="0,1",
        FLEETGATE_HOST="127.0.0.1",
        FLEETGATE_ADMIN_HOST="0.0.0.0",
        FLEETGATE_ADMIN_PORT="9001",
        ENFORCE_EAGER="true",
        TOOL_CALL_PARSER="hermes",
        MAX_NUM_SEQS="64",
    )
    assert p.argv == [
        "fleetgate",
        "serve",
        "demo",
        "--host",
        "127.0.0.1",
        "--admin-host",
        "0.0.0.0",
        "--admin-port",
        "9001",
        "--engine",
        "embedded",
        "--gpus",
        "0,1",
        "--min-workers",
        "0",
        "--max-workers",
        "2",
        "--idle-timeout",
        "120",
        "--",
        "--max-num-seqs",
        "64",
        "--enforce-eager",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]
    # A false switch adds nothing; a flag already given is not given twice.
    p = run("--", "--enable-auto-tool-choice", MODEL="m", ENFORCE_EAGER="0", TOOL_CALL_PARSER="llama3_json")
    assert p.argv[3:] == ["--", "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json"]


@pytest.mark.parametrize("source", ["VLLM_API_KEY", "FLEETGATE_API_KEY", "--api-key"])
def test_a_key_writes_the_equivalent_fleet_file_and_keeps_the_key_out_of_argv(source: str) -> None:
    env = {"MODEL": "m", "SERVED_MODEL_NAME": "n", "PORT": "8080", "MAX_MODEL_LEN": "512"}
    args: list[str] = []
    if source == "--api-key":
        args = ["--", "--api-key", "s3cret"]
    else:
        env[source] = "s3cret"
    p = run(*args, **env)
    assert p.argv == [
        "fleetgate",
        "gateway",
        "--config",
        str(RUNTIME / "fleetgate-serve.json"),
        "--port",
        "8080",
    ]
    data = fleet_file(p)
    assert data == {
        "pools": [
            {
                "name": "default",
                "workers": {
                    "model": "m",
                    "engine_args": ["--max-model-len", "512"],
                    "served_model_name": "n",
                    "min_workers": 1,
                    "engine": "vllm",
                },
            }
        ],
        "keys": [{"name": "default", "key_env": "FLEETGATE_API_KEY"}],
    }
    assert "s3cret" not in " ".join(p.argv) and "s3cret" not in p.fleet_file[1]  # type: ignore[index]
    assert "s3cret" not in p.describe()
    environ = p.environ(
        {"VLLM_API_KEY": "s3cret", "PATH": "/bin"} if source == "VLLM_API_KEY" else {"PATH": "/bin"}
    )
    # The worker must not see VLLM_API_KEY (vLLM would demand it of the gateway); the gateway has its copy.
    assert "VLLM_API_KEY" not in environ
    if source != "FLEETGATE_API_KEY":
        assert environ["FLEETGATE_API_KEY"] == "s3cret"


def test_the_generated_fleet_file_is_the_pool_serve_builds(tmp_path: Path) -> None:
    """Same workers whichever way the container starts: the fleet file (keys, shutdown) and `fleetgate serve`
    (config_for_model with serve's defaults) build one pool."""
    p = plan(
        ["--", "--max-model-len", "512"],
        {
            "MODEL": "l4-gemma-3-1b",
            "FLEETGATE_ENGINE": "sim",
            "FLEETGATE_API_KEY_FILE": str(tmp_path / "key"),
            "FLEETGATE_PRE_STOP_DELAY": "0",
            "FLEETGATE_DRAIN_TIMEOUT": "8",
        },
        runtime_dir=tmp_path,
    )
    assert p.fleet_file is not None
    (tmp_path / "key").write_text("k\n")
    p.fleet_file[0].write_text(p.fleet_file[1])
    cfg = load_config(p.fleet_file[0])
    serve = config_for_model(
        "l4-gemma-3-1b",
        engine="sim",
        served_model_name=None,
        engine_args=["--max-model-len", "512"],
        gpus=None,
        min_workers=1,
        max_workers=1,
        idle_timeout=300.0,
    )
    assert cfg.pools[0].workers == serve.pools[0].workers
    assert (cfg.shutdown.pre_stop_delay, cfg.shutdown.drain_timeout) == (0.0, 8.0)
    assert cfg.keys[0].key_file == str(tmp_path / "key")


def test_gateway_shapes() -> None:
    assert run(FLEETGATE_CONFIG="/etc/f.yaml", PORT="8080").argv == [
        "fleetgate",
        "gateway",
        "--config",
        "/etc/f.yaml",
        "--port",
        "8080",
    ]
    assert run("gateway", "--config", "/x.yaml", FLEETGATE_CONFIG="/etc/f.yaml").argv == [
        "fleetgate",
        "gateway",
        "--config",
        "/x.yaml",
    ]
    assert run(
        FLEETGATE_UPSTREAMS="http://vllm-0:8000, http://vllm-1:8000", FLEETGATE_ADMIN_HOST="0.0.0.0"
    ).argv == [
        "fleetgate",
        "gateway",
        "--upstream",
        "http://vllm-0:8000",
        "--upstream",
        "http://vllm-1:8000",
        "--admin-host",
        "0.0.0.0",
    ]
    # The gateway image's CMD with nothing configured: fleetgate's own default (./fleet.yaml) and message.
    assert run("gateway").argv == ["fleetgate", "gateway"]


def test_other_commands_run_as_given() -> None:
    assert run("check-config", "/etc/f.yaml", MODEL="m").argv == ["fleetgate", "check-config", "/etc/f.yaml"]
    assert run("--version").argv == ["fleetgate", "--version"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "nothing to serve: set MODEL"),
        ((), {"MODEL": "m", "PORT": "http"}, "PORT='http': not a number"),
        ((), {"MODEL": "m", "PORT": "70000"}, "PORT='70000': must be a port number"),
        (
            (),
            {"MODEL": "m", "GPU_MEMORY_UTILIZATION": "90"},
            "GPU_MEMORY_UTILIZATION='90': must be a fraction",
        ),
        ((), {"MODEL": "m", "ENFORCE_EAGER": "maybe"}, "ENFORCE_EAGER='maybe': must be true or false"),
        ((), {"MODEL": "m", "FLEETGATE_MAX_WORKERS": "-1"}, "FLEETGATE_MAX_WORKERS='-1': must be 0 or more"),
        (("m", "--port", "x"), {}, "argument --port 'x': not a number"),
        (("m", "--", "--port"), {}, "--port needs a value"),
        (
            (),
            {"MODEL": "m", "FLEETGATE_CONFIG": "/f.yaml"},
            "FLEETGATE_CONFIG and a model (MODEL) both given",
        ),
        ((), {"FLEETGATE_CONFIG": "/f.yaml", "VLLM_API_KEY": "k"}, "VLLM_API_KEY is for a single model"),
        (
            (),
            {"FLEETGATE_UPSTREAMS": "http://a", "FLEETGATE_DRAIN_TIMEOUT": "5"},
            "FLEETGATE_DRAIN_TIMEOUT is for",
        ),
        (("gateway", "--", "--max-model-len", "8"), {}, "flags after -- are vLLM's"),
        (
            (),
            {"MODEL": "m", "PORT": "8000", "PORT_HEALTH": "8000"},
            "PORT_HEALTH=8000 is the gateway's own port",
        ),
        ((), {"MODEL": "m", "PORT_HEALTH": "8000"}, "PORT_HEALTH=8000 is the gateway's own port"),
    ],
)
def test_what_cannot_run_is_one_line_naming_the_setting(
    args: tuple[str, ...], env: Mapping[str, str], message: str
) -> None:
    with pytest.raises(PlanError) as exc:
        plan(list(args), env, runtime_dir=RUNTIME)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_runpod_health_port() -> None:
    assert run(MODEL="m", PORT="8000", PORT_HEALTH="8002").health_port == 8002
    assert run(MODEL="m").health_port is None
