"""The Helm chart (deploy/helm/fleetgate), rendered by Helm's own Go SDK (helm-python-sdk: libhelm_c through
ctypes, no helm binary) for several value sets; every object validated against Kubernetes' schemas
(kubernetes-validate) in strict mode, the values against the chart's values.schema.json. The tests read what
matters at run time: probes, grace periods, preStop hooks, RBAC, and the fleet file the gateway loads."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fleetgate.config import FleetConfig

CHART = Path(__file__).parent.parent / "deploy" / "helm" / "fleetgate"
KUBE_VERSION = "1.30.0"  # the oldest the chart supports (Chart.yaml kubeVersion)
CRDS = {"keda.sh/v1alpha1", "monitoring.coreos.com/v1"}  # not in Kubernetes' schemas: checked field by field

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: Obj | None = None) -> list[Obj]:
    """What `helm install rel -n ml` would apply: values checked by the schema first, as Helm does."""
    chart.validate_schema(values or {})
    out = chart.render(values or {}, name="rel", namespace="ml", is_install=True)
    docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    for d in docs:
        if d["apiVersion"] not in CRDS:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
    return docs


def one(docs: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def fleet_file(docs: list[Obj]) -> Obj:
    data: Obj = yaml.safe_load(one(docs, "ConfigMap", "rel-fleetgate")["data"]["fleet.yaml"])
    return data


def container(deployment: Obj) -> Obj:
    c: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return c


def pool(name: str, **extra: Any) -> Obj:
    return {"name": name, "modelURL": f"org/model-{name}", **extra}


def test_helm_lint_in_strict_mode_finds_no_error(chart: helm.Chart) -> None:
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_render_valid_objects_with_the_guides_probes(chart: helm.Chart) -> None:
    docs = render(chart)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "rel-fleetgate"),
        ("Deployment", "rel-fleetgate"),
        ("Deployment", "rel-fleetgate-vllm-llama"),
        ("PodDisruptionBudget", "rel-fleetgate"),
        ("Role", "rel-fleetgate"),
        ("RoleBinding", "rel-fleetgate"),
        ("Service", "rel-fleetgate"),
        ("Service", "rel-fleetgate-admin"),
        ("Service", "rel-fleetgate-vllm-llama"),
        ("ServiceAccount", "rel-fleetgate"),
    ]
    vllm = container(one(docs, "Deployment", "rel-fleetgate-vllm-llama"))
    health = {"path": "/health", "port": "http"}
    assert vllm["startupProbe"] == {
        "httpGet": health, "initialDelaySeconds": 2, "periodSeconds": 1, "failureThreshold": 600,
    }  # fmt: skip
    assert vllm["livenessProbe"]["httpGet"] == health
    assert (vllm["livenessProbe"]["periodSeconds"], vllm["livenessProbe"]["failureThreshold"]) == (1, 5)
    assert vllm["readinessProbe"]["httpGet"] == health
    assert (vllm["readinessProbe"]["periodSeconds"], vllm["readinessProbe"]["failureThreshold"]) == (1, 1)
    assert vllm["lifecycle"] == {"preStop": {"sleep": {"seconds": 30}}}
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "shm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    # The pool's pods are found through the headless Service's EndpointSlices.
    svc = one(docs, "Service", "rel-fleetgate-vllm-llama")
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "kv-events"}


def test_vllm_grace_period_is_the_guides_derivation_from_max_model_len_and_throughput(
    chart: helm.Chart,
) -> None:
    # The guide's numbers: 4096 tokens at 100 tok/s, +40 % for prompts, +30 s preStop, x1.5 -> about 130 s.
    docs = render(chart)
    spec = one(docs, "Deployment", "rel-fleetgate-vllm-llama")["spec"]["template"]["spec"]
    drain = math.ceil(4096 / 100 * 1.4)
    assert spec["terminationGracePeriodSeconds"] == math.ceil((drain + 30) * 1.5) == 132
    assert fleet_file(docs)["pools"][0]["workers"]["drain_deadline"] == drain
    # A long context at a slow decode rate needs far longer; an explicit value wins.
    long = pool("long", vllmConfig={"maxModelLen": 32768}, drain={"outputTokensPerSecond": 50})
    fixed = pool("fixed", drain={"terminationGracePeriodSeconds": 200})
    docs = render(chart, {"pools": [long, fixed]})
    grace = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    drain = math.ceil(32768 / 50 * 1.4)
    assert grace == {
        "rel-fleetgate": 80,
        "rel-fleetgate-vllm-long": math.ceil((drain + 30) * 1.5),
        "rel-fleetgate-vllm-fixed": 200,
    }


def test_gateway_probes_prestop_and_grace_follow_the_shutdown_values(chart: helm.Chart) -> None:
    docs = render(chart, {"gateway": {"shutdown": {"preStopDelay": 7, "drainTimeout": 120}}})
    gw = one(docs, "Deployment", "rel-fleetgate")
    c = container(gw)
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 7}}}
    # preStop sleep, then pre_stop_delay serving with /ready failing, then the drain, + 10 s to exit.
    assert gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 7 + 7 + 120 + 10
    assert fleet_file(docs)["shutdown"] == {"pre_stop_delay": 7, "drain_timeout": 120}
    assert gw["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pdb = one(docs, "PodDisruptionBudget", "rel-fleetgate")
    assert pdb["spec"]["selector"]["matchLabels"] == gw["spec"]["selector"]["matchLabels"]
    # The image's entrypoint (an init forwarding SIGTERM) stays: only its command line is given.
    assert "command" not in c and c["args"] == ["gateway", "--config", "/etc/fleetgate/fleet.yaml"]
    # One replica with a budget of one would block every node drain: no budget then.
    assert not [d for d in render(chart, {"gateway": {"replicas": 1}}) if d["kind"] == "PodDisruptionBudget"]


def test_rbac_is_exactly_what_discovery_scaling_and_leader_election_use(chart: helm.Chart) -> None:
    docs = render(chart)
    rules = {
        (g, r): sorted(rule["verbs"])
        for rule in one(docs, "Role", "rel-fleetgate")["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("discovery.k8s.io", "endpointslices"): ["list", "watch"],
        ("", "pods"): ["get", "list", "patch", "watch"],
        ("", "events"): ["list"],
        ("apps", "deployments"): ["get"],
        ("apps", "deployments/scale"): ["get", "patch"],
        ("coordination.k8s.io", "leases"): ["create", "get", "update"],
    }
    binding = one(docs, "RoleBinding", "rel-fleetgate")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-fleetgate", "namespace": "ml"}]
    assert one(docs, "Deployment", "rel-fleetgate")["spec"]["template"]["spec"]["serviceAccountName"] == (
        "rel-fleetgate"
    )


def test_fleet_file_has_discovery_workers_and_leader_election_per_scaler(chart: helm.Chart) -> None:
    pools = [
        pool("fg", minReplicas=0, maxReplicas=3, aliases=["gpt-4o-mini"], sleep=True),
        pool("kd", scaler="keda", minReplicas=0, maxReplicas=5, kvEvents={"enabled": False}),
        pool("fixed", scaler="none", replicaCount=2, fleet={"limits": {"max_queue": 10}}),
    ]
    docs = render(chart, {"pools": pools, "gateway": {"fleet": {"keepalive_after": 3}}})
    fleet = fleet_file(docs)
    assert fleet["kubernetes"] == {
        "leader_election": {"lease_name": "rel-fleetgate-leader", "namespace": "ml"}
    }
    assert fleet["keepalive_after"] == 3
    assert "keys" not in fleet  # no keys: an open gateway
    fg, kd, fixed = fleet["pools"]
    assert fg["models"] == [
        "org/model-fg",
        {"alias": "gpt-4o-mini", "target": "org/model-fg"},
    ]
    assert fg["discovery"] == {
        "kubernetes": {"namespace": "ml", "service": "rel-fleetgate-vllm-fg", "target_port": "http",
                       "kv_events_port": 5557},
    }  # fmt: skip
    assert fg["workers"] == {
        "provider": "kubernetes", "deployment": "rel-fleetgate-vllm-fg", "namespace": "ml",
        "served_model_name": "org/model-fg", "min_workers": 0, "max_workers": 3,
        "startup_timeout": 600, "drain_deadline": 58, "sleep": True,
    }  # fmt: skip
    assert "workers" not in kd and "kv_events_port" not in kd["discovery"]["kubernetes"]
    assert kd["limits"] == {"max_queue_wait": 600}  # held at zero pods while KEDA starts one
    assert "workers" not in fixed and fixed["limits"] == {"max_queue": 10}
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"}
    assert replicas["rel-fleetgate-vllm-fixed"] == 2
    args = container(one(docs, "Deployment", "rel-fleetgate-vllm-fg"))["args"]
    assert "--enable-sleep-mode" in args
    kv = json.loads(args[args.index("--kv-events-config") + 1])
    assert kv == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5557"}
    assert "--kv-events-config" not in container(one(docs, "Deployment", "rel-fleetgate-vllm-kd"))["args"]


def test_keda_scaled_object_scales_on_the_gateways_demand_from_zero(chart: helm.Chart) -> None:
    docs = render(chart, {"pools": [pool("kd", scaler="keda", minReplicas=0, maxReplicas=5)]})
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"name": "rel-fleetgate-vllm-kd"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 5)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == (
        'sum(fleetgate_queue_depth{pool="kd"}) + (sum(fleetgate_pool_in_flight{pool="kd"}) or vector(0))'
    )
    assert (trigger["metadata"]["threshold"], trigger["metadata"]["activationThreshold"]) == ("8", "0")
    assert not [d for d in render(chart) if d["kind"] == "ScaledObject"]


def test_keys_hf_token_pvc_lora_and_service_monitor(chart: helm.Chart) -> None:
    values = {
        "gateway": {
            "keys": [
                {"name": "travel-web", "priority": 10, "value": "sk-a"},
                {"name": "batch", "priority": -1, "value": "sk-b"},
                {"name": "on", "value": "sk-c"},  # a name YAML reads as a boolean stays a string
            ]
        },
        "hfToken": {"value": "hf_x"},
        "serviceMonitor": {"enabled": True},
        "pools": [
            pool(
                "lora",
                modelURL="llama-3.1-8b",
                modelPVC={"claimName": "weights"},
                lora={"adapters": [{"name": "food-review", "path": "/models/adapters/food"}]},
                nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
            )
        ],
    }  # fmt: skip
    docs = render(chart, values)
    fleet = fleet_file(docs)
    assert fleet["keys"] == [
        {"name": "travel-web", "key_file": "/etc/fleetgate-keys/travel-web", "priority": 10},
        {"name": "batch", "key_file": "/etc/fleetgate-keys/batch", "priority": -1},
        {"name": "on", "key_file": "/etc/fleetgate-keys/on", "priority": 0},
    ]
    keys = one(docs, "Secret", "rel-fleetgate-keys")
    assert keys["stringData"] == {"travel-web": "sk-a", "batch": "sk-b", "on": "sk-c"}
    gw = one(docs, "Deployment", "rel-fleetgate")["spec"]["template"]["spec"]
    assert {"name": "keys", "secret": {"secretName": "rel-fleetgate-keys"}} in gw["volumes"]
    assert fleet["pools"][0]["adapters"] == [{"name": "food-review", "path": "/models/adapters/food"}]
    pod = one(docs, "Deployment", "rel-fleetgate-vllm-lora")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][0] == "/models/llama-3.1-8b"  # a path inside the PVC, served under its name
    assert "--served-model-name=llama-3.1-8b" in c["args"] and "--enable-lora" in c["args"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "rel-fleetgate-hf-token", "key": "token"}}
    assert (env["HF_HUB_OFFLINE"], env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]) == ("1", "true")
    assert one(docs, "Secret", "rel-fleetgate-hf-token")["stringData"] == {"token": "hf_x"}
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod[
        "volumes"
    ]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    monitors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ServiceMonitor"}
    assert monitors["rel-fleetgate"]["endpoints"][0]["port"] == "admin"
    # Each ServiceMonitor selects its Service: its labels include the selector.
    for monitor, service in (
        ("rel-fleetgate", "rel-fleetgate-admin"),
        ("rel-fleetgate-vllm", "rel-fleetgate-vllm-lora"),
    ):
        labels = one(docs, "Service", service)["metadata"]["labels"]
        assert labels | monitors[monitor]["selector"]["matchLabels"] == labels
    assert len(monitors) == 2


BAD: list[tuple[Obj, str]] = [
    (
        {"pools": [pool("x", vllmConfig={"gpuMemoryUtilization": 1.5})]},
        "/pools/0/vllmConfig/gpuMemoryUtilization",
    ),
    ({"pools": [pool("Bad_Name")]}, "/pools/0/name"),
    ({"pools": [pool("x", scaler="hpa")]}, "/pools/0/scaler"),
    ({"pools": [pool("x", vllmConfig={"maxModelLen": "4k"})]}, "/pools/0/vllmConfig/maxModelLen"),
    ({"pools": [{"name": "x"}]}, "modelURL"),
    ({"pools": []}, "/pools"),
    ({"gateway": {"replica": 2}}, "'replica' not allowed"),
    ({"gateway": {"keys": [{"priority": 1}]}}, "name"),
    ({"poolDefaults": {"requestGPU": -1}}, "/poolDefaults/requestGPU"),
]


@pytest.mark.parametrize(("values", "names"), BAD)
def test_a_wrong_value_fails_at_install_naming_it(chart: helm.Chart, values: Obj, names: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(values)
    assert names in str(err.value)


CROSS: list[tuple[Obj, str]] = [
    (
        {"pools": [pool("x", minReplicas=5, maxReplicas=2)]},
        "pools[0].minReplicas (5) must not exceed maxReplicas (2)",
    ),
    ({"pools": [pool("x"), pool("x")]}, 'pools[1].name: "x" repeats an earlier pool'),
    (
        {"pools": [pool("x", aliases=["m"]), pool("y", servedModelName="m")]},
        'pools[1]: model name "m" is served by an earlier pool too',
    ),
    ({"pools": [pool("x", scaler="keda", sleep=True)]}, "pools[0].sleep: only scaler fleetgate sleeps pods"),
    ({"gateway": {"keys": [{"name": "a"}]}}, "gateway.keys[0] (a): give its value, or gateway.keysSecret"),
    ({"gateway": {"adminPort": 8000}}, "gateway.adminPort must differ from gateway.port (both 8000)"),
]


@pytest.mark.parametrize(("values", "message"), CROSS)
def test_rules_across_values_fail_the_render_with_the_values_name(
    chart: helm.Chart, values: Obj, message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(chart, values)
    assert message in str(err.value)


def _every_container(docs: list[Obj]) -> Iterator[Obj]:
    for d in docs:
        if d["kind"] == "Deployment":
            yield from d["spec"]["template"]["spec"]["containers"]


def test_an_existing_keys_secret_is_mounted_and_no_secret_is_created(chart: helm.Chart) -> None:
    docs = render(chart, {"gateway": {"keysSecret": "my-keys", "keys": [{"name": "web"}]}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    gw = one(docs, "Deployment", "rel-fleetgate")["spec"]["template"]["spec"]
    assert {"name": "keys", "secret": {"secretName": "my-keys"}} in gw["volumes"]
    assert all(c["image"] for c in _every_container(docs))


@pytest.mark.parametrize("example", sorted((CHART.parent / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_values_files_install(chart: helm.Chart, example: Path) -> None:
    values = yaml.safe_load(example.read_text())
    docs = render(chart, values)
    fleet = fleet_file(docs)
    assert [p["name"] for p in fleet["pools"]] == [p["name"] for p in values["pools"]]
    for p in values["pools"]:
        d = one(docs, "Deployment", f"rel-fleetgate-vllm-{p['name']}")
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 0


def test_the_fleet_file_the_chart_writes_is_one_fleetgate_loads(chart: helm.Chart) -> None:
    """The keys the chart emits are the gateway's own config schema, for every scaler and every example."""
    value_sets: list[Obj] = [
        {},
        {
            "pools": [
                pool("fg", sleep=True, aliases=["gpt-4o-mini"]),
                pool("kd", scaler="keda"),
                pool("no", scaler="none"),
            ]
        },
        *(yaml.safe_load(p.read_text()) for p in sorted((CHART.parent / "examples").glob("*.yaml"))),
    ]
    for values in value_sets:
        fleet = fleet_file(render(chart, values))
        fleet.pop("keys", None)  # their files exist only in the pod
        cfg = FleetConfig.model_validate(fleet)
        for p, given in zip(cfg.pools, fleet["pools"], strict=True):
            assert p.discovery is not None
            assert p.discovery.kubernetes.service == f"rel-fleetgate-vllm-{p.name}"
            assert (p.workers is not None) == ("workers" in given)
            if p.workers is not None:
                assert (p.workers.provider, p.workers.deployment) == (
                    "kubernetes",
                    p.discovery.kubernetes.service,
                )
        assert cfg.kubernetes.leader_election.lease_name == "rel-fleetgate-leader"
