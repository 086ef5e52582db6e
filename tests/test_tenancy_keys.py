"""Issued keys: the store on SQLite and PostgreSQL (alembic migrations), the CLI and the admin API, the key
cache in a running gateway (keys work at once, stop within a second of revocation)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.tenancy.keys import Budget, LimitSpec, digest
from fleetgate.tenancy.store import open_store
from tests.conftest import GatewayFactory, GatewayProcess, SimProcess, spawn_sim, until
from tests.services import postgres_url  # noqa: F401  (a fixture)

MODEL = "llama-8b"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    proc = spawn_sim(tmp_path_factory.mktemp("sim"), "--served-model-name", MODEL, "--time-scale", "50")
    yield proc
    proc.stop()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def fleetgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db"
    return fresh_database(request.getfixturevalue("postgres_url"))


def fresh_database(url: str) -> str:
    """A new database on the session's PostgreSQL server."""
    name = f"t{time.monotonic_ns()}"

    async def create() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()

    asyncio.run(create())
    return url.rsplit("/", 1)[0] + f"/{name}"


async def test_store_issues_rotates_and_revokes(database: str) -> None:
    store = await open_store(database)
    again = await open_store(database)  # migrations are idempotent: a second replica starts cleanly
    try:
        v0 = await store.version()
        budget = Budget(1000, "tokens", "day")
        record, secret = await store.create(
            "acme", name="web", priority=5, models=["m1"], limits=LimitSpec(rpm=10, budget=budget),
            expires_at=None, metadata={"team": "games"},
        )  # fmt: skip
        assert secret.startswith("fg-") and len(secret) > 40
        version, keys = await again.snapshot()
        assert version == v0 + 1
        assert keys[digest(secret)] == record
        assert keys[digest(secret)].limits.budget == budget and record.metadata == {"team": "games"}
        rotated = await store.rotate(record.id)
        assert rotated is not None
        _, new_secret = rotated
        _, keys = await again.snapshot()
        assert digest(secret) not in keys and keys[digest(new_secret)].id == record.id
        assert await store.revoke(record.id)
        assert not await store.revoke(record.id)  # already revoked
        assert await store.rotate(record.id) is None
        version, keys = await again.snapshot()
        assert keys == {} and version == v0 + 3
        listed = await store.list_keys(include_revoked=True)
        assert [k.id for k in listed] == [record.id] and listed[0].revoked_at is not None
        assert await store.list_keys() == []
    finally:
        await store.close()
        await again.close()


def test_the_secret_is_never_stored(tmp_path: Path) -> None:
    async def issue() -> str:
        store = await open_store(f"sqlite:///{tmp_path}/keys.db")
        _, secret = await store.create("acme")
        await store.close()
        return secret

    secret = asyncio.run(issue())
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))
    assert secret.encode() not in raw and secret[10:].encode() not in raw and digest(secret) in raw
    with sqlite3.connect(tmp_path / "keys.db") as db:  # alembic owns the schema
        assert db.execute("select version_num from alembic_version").fetchone() == ("0001",)


def _config(sim: SimProcess, database: str, extra: str = "") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keys:
  - {{name: static-web, key: sk-static-123, priority: 3}}
tenancy:
  database: {database}
  refresh_interval: 0.1
{extra}
pools:
  - name: main
    models: [{MODEL}, other-model]
    endpoints: [{sim.url}]
"""


def test_cli_keys_work_at_once_and_stop_within_a_second_of_revocation(
    gateway_factory: GatewayFactory, sim: SimProcess, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/keys.db"
    gw = gateway_factory(_config(sim, url))
    out = fleetgate("keys", "create", "--tenant", "travel", "--name", "web", "--database", url, "--json")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    secret, key_id = created["key"], created["id"]

    def works(key: str) -> bool:
        r = httpx.post(f"{gw.url}/v1/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": MODEL, "prompt": "hi", "max_tokens": 1})  # fmt: skip
        return r.status_code == 200

    until(lambda: works(secret), "the new key to work", within=1.0)
    assert client(gw.url, secret).completions.create(model=MODEL, prompt="x", max_tokens=2).usage
    assert client(gw.url, "sk-static-123").completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    listed = fleetgate("keys", "list", "--database", url, "--json")
    assert [k["id"] for k in json.loads(listed.stdout)] == [key_id] and secret not in listed.stdout

    rotated = fleetgate("keys", "rotate", key_id, "--database", url)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = next(w for w in rotated.stdout.split() if w.startswith("fg-"))
    until(lambda: not works(secret) and works(new_secret), "rotation", within=1.0)

    revoked = fleetgate("keys", "revoke", key_id, "--database", url)
    assert revoked.returncode == 0, revoked.stderr
    until(lambda: not works(new_secret), "revocation to reach the gateway", within=1.0)
    with pytest.raises(openai.AuthenticationError):
        client(gw.url, new_secret).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert fleetgate("keys", "revoke", key_id, "--database", url).returncode == 1
    assert works("sk-static-123")  # fleet-file keys keep working beside issued ones


def test_admin_api_issues_keys_with_models_expiry_and_errors(
    gateway_factory: GatewayFactory, sim: SimProcess, tmp_path: Path
) -> None:
    gw = gateway_factory(_config(sim, f"sqlite:///{tmp_path}/keys.db"))
    r = httpx.post(f"{gw.admin}/admin/keys", json={"tenant": "bots", "models": [MODEL], "priority": -1,
                                                   "metadata": {"owner": "ops"}})  # fmt: skip
    assert r.status_code == 201, r.text
    body = r.json()
    secret = body["key"]
    assert body["models"] == [MODEL] and body["priority"] == -1 and body["metadata"] == {"owner": "ops"}
    c = client(gw.url, secret)
    until(lambda: httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code
          == 200, "the admin-issued key")  # fmt: skip
    assert c.completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    assert [m.id for m in c.models.list()] == [MODEL]  # it sees only what it may use
    with pytest.raises(openai.PermissionDeniedError) as denied:
        c.completions.create(model="other-model", prompt="x", max_tokens=1)
    assert denied.value.status_code == 403

    listed = httpx.get(f"{gw.admin}/admin/keys").json()["keys"]
    assert [k["tenant"] for k in listed] == ["bots"] and "key" not in listed[0]
    assert httpx.get(f"{gw.admin}/admin/keys/{body['id']}").json()["tenant"] == "bots"
    assert secret not in httpx.get(f"{gw.admin}/admin/keys").text

    short = httpx.post(f"{gw.admin}/admin/keys", json={"tenant": "temp", "expires_in": 1.5}).json()
    until(lambda: httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {short['key']}"})
          .status_code == 200, "the short key")  # fmt: skip
    until(lambda: httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {short['key']}"})
          .status_code == 401, "the key to expire", within=5)  # fmt: skip

    limited = httpx.post(f"{gw.admin}/admin/keys", json={"tenant": "bots", "rpm": 2}).json()["key"]
    lc = client(gw.url, limited)
    until(lambda: httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {limited}"})
          .status_code == 200, "the limited key")  # fmt: skip
    for _ in range(2):
        lc.completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        lc.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert c.completions.create(model=MODEL, prompt="x", max_tokens=1).choices  # the tenant's other key

    bad = httpx.post(f"{gw.admin}/admin/keys", json={"tenant": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    assert httpx.post(f"{gw.admin}/admin/keys", content=b"{").status_code == 400
    assert httpx.delete(f"{gw.admin}/admin/keys/nope").status_code == 404
    assert httpx.put(f"{gw.admin}/admin/keys").status_code == 405
    gone = httpx.delete(f"{gw.admin}/admin/keys/{body['id']}")
    assert gone.status_code == 200
    until(lambda: httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {secret}"})
          .status_code == 401, "revocation", within=1.0)  # fmt: skip
    # The tenant-facing port knows nothing of the admin routes.
    assert httpx.get(f"{gw.url}/admin/keys").status_code == 404

    # Issued keys' tenants are unbounded: only names the fleet file gives get a metric label of their own.
    assert client(gw.url, "sk-static-123").completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    families = list(text_string_to_metric_families(httpx.get(f"{gw.admin}/metrics").text))
    samples = [s for f in families for s in f.samples]
    tenants = {s.labels["tenant"] for s in samples if s.name == "fleetgate_requests_total"}
    assert "static-web" in tenants and "other" in tenants and "bots" not in tenants
    limited_total = [s.value for s in samples if s.name == "fleetgate_rate_limited_total"]
    assert limited_total == [1.0]

    def usage() -> dict[str, int]:
        by: dict[str, int] = {}
        for r in httpx.get(f"{gw.admin}/admin/usage").json()["usage"]:
            by[r["tenant"]] = by.get(r["tenant"], 0) + r["requests"]
        return by

    until(lambda: usage().get("static-web") == 1, "the ledger's rows on the admin API")
    # bots: 1 + 2 + the refused one + 1 + the 403 on another model; every answered request is a row.
    assert usage()["bots"] == 6


def test_cli_without_a_database_says_how_to_give_one(tmp_path: Path) -> None:
    out = fleetgate("keys", "list")
    assert out.returncode == 2 and "--database" in out.stderr and "Traceback" not in out.stderr


def test_the_gateway_runs_without_the_tenancy_extra() -> None:
    """sqlalchemy, alembic and redis are the `tenancy` extra: the gateway imports without them and says what
    to install when the fleet file asks for them."""
    code = """
import asyncio, sys
for m in ("sqlalchemy", "alembic", "redis", "aiosqlite", "asyncpg"):
    sys.modules[m] = None
from fleetgate.api.app import create_app
from fleetgate.config import parse_config
from fleetgate.tenancy.runtime import MissingExtraError
pools = 'pools: [{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}]'
create_app(parse_config(pools))
try:
    create_app(parse_config('tenancy: {redis: "redis://127.0.0.1:1/0"}\\n' + pools))
except MissingExtraError as e:
    print(e)
public, _ = create_app(parse_config('tenancy: {database: "sqlite:///x.db"}\\n' + pools))
try:
    asyncio.run(public.gw.tenancy.start())
except MissingExtraError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("pip install 'fleetgate[tenancy]'" in line for line in lines)


def test_replicas_sharing_postgresql_see_each_others_keys_and_revocations(
    gateway_factory: GatewayFactory,
    sim: SimProcess,
    postgres_url: str,  # noqa: F811
) -> None:
    database = fresh_database(postgres_url)
    one, two = (gateway_factory(_config(sim, database)) for _ in range(2))
    issued = httpx.post(f"{one.admin}/admin/keys", json={"tenant": "shared"}).json()

    def status(gw: GatewayProcess) -> int:
        headers = {"authorization": f"Bearer {issued['key']}"}
        return httpx.get(f"{gw.url}/v1/models", headers=headers).status_code

    until(lambda: status(two) == 200, "the other replica to learn the key", within=1.0)
    assert httpx.delete(f"{one.admin}/admin/keys/{issued['id']}").status_code == 200
    until(lambda: status(two) == 401 and status(one) == 401, "revocation on both replicas", within=1.0)
