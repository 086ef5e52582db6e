"""What `fleetgate bench` tells a person at the end of a run: a failed run fails (exit 4) and says why, and
prompt sizing behind a gateway with keys uses a tenant's key instead of failing with a 401."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import GatewayFactory, SimFactory


def bench(url: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "fleetgate",
        "bench",
        "--url",
        f"{url}/v1",
        "--model",
        "m",
        "--out",
        str(out),
    ]
    return subprocess.run([*cmd, "--processes", "1", *flags], capture_output=True, text=True, timeout=120)


def test_every_request_failing_is_a_failed_run_with_the_errors_listed(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = sim_factory("--served-model-name", "m", "--fault-error-rate", "503=1")
    result = bench(sim.url, tmp_path / "out", "--num-requests", "6", "--load", "concurrency=2")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "every one of the 6 requests failed" in result.stdout
    assert "6 of 6 requests failed" in result.stdout and "(HTTP 503)" in result.stdout
    assert (tmp_path / "out" / "results.json").exists()  # the record of the failure is kept


def test_sizing_behind_a_gateway_with_keys_uses_a_tenants_key(
    sim_factory: SimFactory, gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    sim = sim_factory("--served-model-name", "m")
    gw = gateway_factory(f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keys:
  - {{name: web, key: sk-web}}
pools:
  - name: main
    models: [m]
    endpoints: [{sim.url}]
""")
    result = bench(gw.url, tmp_path / "out", "--num-requests", "2", "--tenant", "web:sk-web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "401" not in result.stdout
    assert "prompt lengths are in the target's tokens" in result.stdout.replace("\n", " ")
