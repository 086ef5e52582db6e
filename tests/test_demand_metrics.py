"""The demand an external autoscaler (KEDA, HPA) scales a pool on: `fleetgate_queue_depth` and
`fleetgate_pool_in_flight` per pool, both present while the pool has no endpoint at all (a Deployment at zero
replicas), through the real gateway and a simulator upstream."""

from __future__ import annotations

import threading

import httpx

from tests.conftest import GatewayFactory, GatewayProcess, SimFactory, until


def series(gw: GatewayProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{gw.admin}/metrics").text.splitlines():
        if line.startswith(("fleetgate_queue_depth{", "fleetgate_pool_in_flight{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


COLD = """
listen: {host: 127.0.0.1, port: {port}}
admin: {host: 127.0.0.1, port: {admin_port}}
pools:
  - name: cold
    workers:
      engine: sim
      model: h200-llama-3.1-8b
      served_model_name: llama
      engine_args: ["--startup-time", "60", "--time-scale", "20"]
      scaling: {interval: 0.1}
      stop_grace: 3
"""


def post(gw: GatewayProcess, model: str, codes: list[int]) -> None:
    body = {"model": model, "prompt": "a", "max_tokens": 2}
    codes.append(httpx.post(f"{gw.url}/v1/completions", json=body, timeout=60).status_code)


def test_a_held_request_at_zero_workers_shows_as_queue_depth_with_in_flight_zero(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(COLD)
    # Before any request and with no worker, both series exist (KEDA's query must not come back empty).
    assert series(gw) == {
        'fleetgate_queue_depth{pool="cold"}': 0.0,
        'fleetgate_pool_in_flight{pool="cold"}': 0.0,
    }
    codes: list[int] = []
    t = threading.Thread(target=post, args=(gw, "llama", codes))
    t.start()
    until(lambda: series(gw)['fleetgate_queue_depth{pool="cold"}'] == 1, "the held request counted")
    assert series(gw)['fleetgate_pool_in_flight{pool="cold"}'] == 0
    t.join(60)
    assert codes == [200]
    assert series(gw) == {
        'fleetgate_queue_depth{pool="cold"}': 0.0,
        'fleetgate_pool_in_flight{pool="cold"}': 0.0,
    }


def test_pool_in_flight_counts_requests_at_its_endpoints(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory("--model", "m1", "--fault-first-byte-delay", "3")
    gw = gateway_factory(upstreams=[sim.url])
    (pool,) = {k.split('"')[1] for k in series(gw)}
    codes: list[int] = []
    t = threading.Thread(target=post, args=(gw, "m1", codes))
    t.start()
    until(lambda: series(gw)[f'fleetgate_pool_in_flight{{pool="{pool}"}}'] == 1, "the request in flight")
    t.join(60)
    assert codes == [200]
    assert series(gw)[f'fleetgate_pool_in_flight{{pool="{pool}"}}'] == 0
