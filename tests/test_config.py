"""The fleet file: examples load, defaults, every validation error at its file:line:column and key path,
secrets never shown, precedence of the config path, the no-file mode, and property tests (round trip,
mutations only ever raise ConfigError with positions)."""

from __future__ import annotations

import re
import string
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fleetgate import config as config_module
from fleetgate.config import (
    SCORERS,
    AdminConfig,
    ConfigError,
    ConfigWarning,
    EndpointConfig,
    FleetConfig,
    KeyConfig,
    ModelEntry,
    config_from_upstreams,
    config_path,
    dump_config,
    load_config,
    normalize_url,
    parse_config,
    resolve_secret,
)

DOCS = Path(__file__).parent.parent / "docs" / "fleet-file.md"

DESIGN_EXAMPLE = """\
listen: {host: 0.0.0.0, port: 8000}
admin:  {host: 127.0.0.1, port: 8001}          # /admin/*, /metrics may also be served here
keys:                                          # absent = open gateway
  - {name: travel-web, key_env: TRAVEL_KEY, priority: 10}
  - {name: batch-jobs, key_file: SECRET_FILE, priority: -1}   # < 0 = sheddable
pools:
  - name: qwen
    models: [qwen2.5-7b, {alias: gpt-4o-mini}]
    endpoints:                                 # static upstreams; a bare URL string is short for {url: ...}
      - {url: http://10.0.0.5:8000}
      - {url: https://api.runpod.ai/v2/ENDPOINT_ID/openai, api_key_env: RUNPOD_KEY}
    limits: {max_tokens_default: 1024, max_tokens_cap: 8192, max_body_bytes: 4194304}
    timeouts: {connect: 2, first_byte_stream: 30, first_byte_nonstream: 300, idle_gap: 60, total: 900}
    routing: {scorers: {load: 1.0, prefix: 2.0, lora: 1.0, session: 1.0}}
"""

MINIMAL = """\
pools:
  - name: llama
    models: [llama-8b]
    endpoints: [http://127.0.0.1:9001, http://127.0.0.1:9002]
"""

ENV = {"TRAVEL_KEY": "travel-secret-1", "RUNPOD_KEY": "runpod-secret-2"}


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """The lines of the ConfigError that loading `text` raises, the file named as fleet.yaml."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    for problem in info.value.problems:
        assert problem.file == str(path)
    return [line.replace(str(path), "fleet.yaml") for line in str(info.value).splitlines()]


def design_example(tmp_path: Path) -> Path:
    secret = tmp_path / "batch"
    secret.write_text("batch-secret-3\n", encoding="utf-8")
    return write(tmp_path, DESIGN_EXAMPLE.replace("SECRET_FILE", str(secret)))


# ---- examples and defaults ---------------------------------------------------------------------------------


def test_design_example_loads(tmp_path: Path) -> None:
    config = load_config(design_example(tmp_path), env=ENV)

    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8000)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 8001)
    travel, batch = config.keys
    assert (travel.name, travel.priority) == ("travel-web", 10)
    assert travel.secret.get_secret_value() == ENV["TRAVEL_KEY"]
    assert (batch.name, batch.priority) == ("batch-jobs", -1)
    assert batch.secret.get_secret_value() == "batch-secret-3"
    (pool,) = config.pools
    direct, runpod = pool.endpoints
    assert (direct.url, direct.name, direct.secret) == ("http://10.0.0.5:8000", "10.0.0.5:8000", None)
    assert runpod.url == "https://api.runpod.ai/v2/ENDPOINT_ID/openai"
    assert runpod.name == "api.runpod.ai:443/v2/ENDPOINT_ID/openai"
    assert runpod.secret is not None and runpod.secret.get_secret_value() == ENV["RUNPOD_KEY"]
    assert pool.routing.scorers == {"load": 1.0, "prefix": 2.0, "lora": 1.0, "session": 1.0}
    assert config.pool_for_model() == {
        "qwen2.5-7b": (pool, "qwen2.5-7b"),
        "gpt-4o-mini": (pool, "qwen2.5-7b"),
    }


def test_minimal_example_loads_with_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})

    assert config.keys == []  # open gateway
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8000)
    assert config.admin.model_dump() == {"host": "127.0.0.1", "port": 8001}
    assert config.shutdown.model_dump() == {"pre_stop_delay": 5.0, "drain_timeout": 30.0}
    assert config.keepalive_after == 10.0
    assert config.log.model_dump() == {"format": "text", "level": "info"}
    (pool,) = config.pools
    assert pool.name == "llama"
    assert pool.models == [ModelEntry(name="llama-8b")]
    assert [(e.url, e.name, e.weight, e.secret) for e in pool.endpoints] == [
        ("http://127.0.0.1:9001", "127.0.0.1:9001", 1.0, None),
        ("http://127.0.0.1:9002", "127.0.0.1:9002", 1.0, None),
    ]
    assert pool.priority_header is False
    assert pool.limits.model_dump() == {
        "max_tokens_default": 1024,
        "max_tokens_cap": 8192,
        "max_body_bytes": 4194304,
        "max_n": 16,
        "max_queue": 1024,
        "max_queue_wait": 30.0,
    }
    assert pool.timeouts.model_dump() == {
        "connect": 2.0,
        "first_byte_stream": 30.0,
        "first_byte_nonstream": 300.0,
        "idle_gap": 60.0,
        "total": 900.0,
        "stall_after": None,
    }
    assert pool.stall_after == 5.0
    assert pool.retries.model_dump() == {"attempts": 3, "backoff_base": 0.05, "backoff_max": 1.0}
    assert pool.health.model_dump() == {
        "interval": 1.0,
        "timeout": 2.0,
        "path": "/health",
        "discovery_interval": 5.0,
    }
    assert pool.scrape.model_dump() == {"interval": 0.1, "stale_after": 1.0, "timeout": 1.0}
    assert pool.routing.scorers == SCORERS
    routing = pool.routing
    assert (routing.picker, routing.tokenizer, routing.block_size, routing.debug_headers) == (
        "max",
        "none",
        16,
        False,
    )
    assert routing.saturation.model_dump() == {"max_waiting": 5.0, "max_kv_usage": 0.8, "max_imbalance": 16.0}
    assert routing.session.model_dump() == {"header": "x-session-id", "ttl": 600.0}
    assert pool.adapters == [] and all(e.kv_events is None for e in pool.endpoints)
    assert config.pool_for_model() == {"llama-8b": (pool, "llama-8b")}


def test_every_field_is_set_from_the_file(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            listen: {host: 127.0.0.1, port: 9000}
            admin: {host: 127.0.0.1, port: 9001}
            shutdown: {pre_stop_delay: 0, drain_timeout: 12.5}
            keepalive_after: 3
            log: {format: JSON, level: DEBUG}
            pools:
              - name: p
                priority_header: true
                models: [a, {name: b}, {alias: c}, {alias: d, target: b}]
                endpoints:
                  - {url: "HTTPS://Example.COM:443/prefix/v1/", name: ex, weight: 2.5}
                limits: {max_tokens_default: 16, max_tokens_cap: 16, max_body_bytes: 10, max_queue: 1}
                retries: {attempts: 1, backoff_base: 0, backoff_max: 0}
                health: {interval: 0.5, timeout: 0.25, path: /ping}
                scrape: {interval: 0.5, stale_after: 0.5}
                routing: {scorers: {prefix: 3}}
            """,
        ),
        env={},
    )
    (pool,) = config.pools
    assert config.log.format == "json" and config.log.level == "debug"
    assert config.keepalive_after == 3.0 and config.shutdown.drain_timeout == 12.5
    assert pool.priority_header is True
    assert (pool.endpoints[0].url, pool.endpoints[0].name) == ("https://example.com/prefix", "ex")
    assert pool.routing.scorers == {"prefix": 3.0}  # listing scorers replaces the default set
    assert pool.health.path == "/ping" and pool.retries.attempts == 1
    assert {name: upstream for name, (_, upstream) in config.pool_for_model().items()} == {
        "a": "a",
        "b": "b",
        "c": "a",  # an alias without target stands for the pool's first named model
        "d": "b",
    }


def test_pools_without_models_discover_and_are_not_in_the_model_map(tmp_path: Path) -> None:
    text = "pools:\n  - {name: p, endpoints: [http://h:1]}\n  - {name: q, models: [m], endpoints: [http://h:2]}\n"
    config = load_config(write(tmp_path, text), env={})
    assert config.pools[0].models == []
    assert list(config.pool_for_model()) == ["m"]


@pytest.mark.parametrize(
    ("url", "normalised", "name"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000", "10.0.0.5:8000"),
        ("http://10.0.0.5:8000/", "http://10.0.0.5:8000", "10.0.0.5:8000"),
        ("HTTP://Host.Example:80/", "http://host.example", "host.example:80"),
        ("https://h/v2/ID/openai/v1/", "https://h/v2/ID/openai", "h:443/v2/ID/openai"),
        ("https://h:8443/a/b", "https://h:8443/a/b", "h:8443/a/b"),
        ("http://[::1]:9001/v1", "http://[::1]:9001", "[::1]:9001"),
        ("  http://h:1  ", "http://h:1", "h:1"),
    ],
)
def test_urls_are_normalised(url: str, normalised: str, name: str) -> None:
    assert normalize_url(url) == (normalised, name)
    endpoint = EndpointConfig.model_validate(url)
    assert (endpoint.url, endpoint.name) == (normalised, name)


# ---- errors, each at its file:line:column and key path -----------------------------------------------------


def test_bad_url_scheme_points_at_the_url(tmp_path: Path) -> None:
    text = """\
        # fleet
        listen: {host: 0.0.0.0, port: 8000}
        admin: {host: 127.0.0.1, port: 8001}
        pools:
          - name: a
            models: [m1]
            endpoints:
              - http://127.0.0.1:9001
          - name: b
            models: [m2]
            endpoints:
              - ftp://x
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:12:9: pools[1].endpoints[0].url: must be an http:// or https:// URL (got 'ftp://x')"
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "must be an http:// or https:// URL (got 'ftp://x')"),
        ("10.0.0.5:8000", "must be an http:// or https:// URL (got '10.0.0.5:8000')"),
        ("http:///path", "has no host (got 'http:///path')"),
        ("http://h:1/?a=1", "must not carry a query string (got 'http://h:1/?a=1')"),
        ("http://h:1/#top", "must not carry a fragment (got 'http://h:1/#top')"),
        ("http://h:99999", "is not a valid URL (got 'http://h:99999')"),
        ("http://u:pw@h", "must not carry credentials (user:password@); use api_key_env or api_key_file"),
    ],
)
def test_bad_urls(tmp_path: Path, url: str, message: str) -> None:
    text = f"pools:\n  - name: p\n    endpoints:\n      - url: '{url}'\n"
    assert errors(tmp_path, text) == [f"fleet.yaml:4:14: pools[0].endpoints[0].url: {message}"]


def test_missing_key_points_at_the_parent_mapping(tmp_path: Path) -> None:
    text = """\
        pools:
          - models: [m]
            endpoints: [http://h:1]
        """
    assert errors(tmp_path, text) == ["fleet.yaml:2:5: pools[0].name: required key is missing"]
    assert errors(tmp_path, "listen: {port: 1}\n") == ["fleet.yaml:1:1: pools: required key is missing"]


def test_unknown_key_points_at_the_key_and_suggests(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: p
            endpoints: [http://h:1]
            timeouts: {conect: 2}
        auth: {api_keys: [x]}
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:4:16: pools[0].timeouts.conect: unknown key; did you mean 'connect'? (expected one of: "
        "connect, first_byte_stream, first_byte_nonstream, idle_gap, total, stall_after)",
        "fleet.yaml:5:1: auth: unknown key; did you mean 'keys'? (expected one of: listen, admin, keys, "
        "pools, shutdown, keepalive_after, log, tenancy, kubernetes)",
    ]


def test_wrong_types(tmp_path: Path) -> None:
    text = """\
        listen:
          port: eighty
        pools:
          - name: p
            endpoints: [http://h:1]
            models: [5]
            priority_header: maybe
        log: {format: xml}
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:2:9: listen.port: should be a valid integer, unable to parse string as an integer "
        "(got 'eighty')",
        "fleet.yaml:6:14: pools[0].models[0]: should be a model name or a mapping with name, or alias and "
        "target (got int 5)",
        "fleet.yaml:7:22: pools[0].priority_header: should be a valid boolean, unable to interpret input "
        "(got 'maybe')",
        "fleet.yaml:8:15: log.format: should be 'json' or 'text' (got 'xml')",
    ]


def test_duplicate_pool_names(tmp_path: Path) -> None:
    text = """\
        pools:
          - {name: p, endpoints: [http://h:1]}
          - {name: p, endpoints: [http://h:2]}
        """
    assert errors(tmp_path, text) == ["fleet.yaml:3:12: pools[1].name: pool name 'p' repeats pools[0]"]


def test_model_in_two_pools_names_both(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: small
            models: [llama-8b, {alias: gpt-4o-mini}]
            endpoints: [http://h:1]
          - name: big
            models:
              - llama-70b
              - alias: gpt-4o-mini
                target: llama-70b
            endpoints: [http://h:2]
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:8:9: pools[1].models[1]: model name 'gpt-4o-mini' appears in pools 'small' and 'big' "
        "(first at pools[0].models[1]); a name may be served by one pool only"
    ]


def test_model_twice_in_one_pool(tmp_path: Path) -> None:
    text = "pools:\n  - {name: p, models: [a, {alias: a}], endpoints: [http://h:1]}\n"
    assert errors(tmp_path, text) == [
        "fleet.yaml:2:27: pools[0].models[1]: model name 'a' appears twice in pool 'p' "
        "(first at pools[0].models[0]); a name may be served by one pool only"
    ]


def test_model_entry_shapes(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: p
            models:
              - {alias: a}
              - {name: b, alias: c}
              - {name: d, target: b}
              - {}
              - " padded "
            endpoints: [http://h:1]
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:5:9: pools[0].models[1]: needs exactly one of name, alias",
        "fleet.yaml:6:27: pools[0].models[2].target: target goes with alias only",
        "fleet.yaml:7:9: pools[0].models[3]: needs exactly one of name, alias",
        "fleet.yaml:8:9: pools[0].models[4].name: must be a model name without surrounding spaces "
        "(got ' padded ')",
    ]


def test_alias_needs_a_model_to_stand_for(tmp_path: Path) -> None:
    text = "pools:\n  - name: p\n    models: [{alias: a}]\n    endpoints: [http://h:1]\n"
    assert errors(tmp_path, text) == [
        "fleet.yaml:3:14: pools[0].models[0]: an alias without target needs a named model in the pool to "
        "stand for"
    ]


def test_duplicate_endpoints_in_a_pool(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: p
            endpoints:
              - http://h:1
              - http://H:1/
              - {url: http://h:2, name: "h:1"}
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:5:9: pools[0].endpoints[1].url: endpoint url 'http://h:1' repeats endpoints[0]",
        "fleet.yaml:5:9: pools[0].endpoints[1].name: endpoint name 'h:1' repeats endpoints[0]",
        "fleet.yaml:6:33: pools[0].endpoints[2].name: endpoint name 'h:1' repeats endpoints[0]",
    ]


def test_key_names_unique_and_secrets_distinct(tmp_path: Path) -> None:
    text = """\
        keys:
          - {name: a, key_env: KEY_A}
          - {name: a, key_env: KEY_B}
          - name: c
            key_env: KEY_C
        pools:
          - {name: p, endpoints: [http://h:1]}
        """
    same = "the-same-secret"
    lines = errors(tmp_path, text, env={"KEY_A": "one", "KEY_B": same, "KEY_C": same})
    assert lines == [
        "fleet.yaml:3:12: keys[1].name: key name 'a' repeats keys[0]",
        "fleet.yaml:4:5: keys[2]: resolves to the same secret as keys[1] ('a'); every key must be distinct",
    ]
    assert same not in "\n".join(lines)


def test_key_sources(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    text = f"""\
        keys:
          - {{name: none}}
          - {{name: two, key_env: A, key_file: /x}}
          - {{name: env, key_env: NOT_SET}}
          - {{name: file, key_file: {missing}}}
          - {{name: empty, key_env: EMPTY}}
          - {{name: bad-env, key_env: 9LIVES}}
          - {{name: "bad name"}}
        pools:
          - {{name: p, endpoints: [http://h:1]}}
        """
    assert errors(tmp_path, text, env={"A": "x", "EMPTY": " "}) == [
        "fleet.yaml:2:5: keys[0]: needs one of key_env, key_file, key",
        "fleet.yaml:3:39: keys[1].key_file: give only one of key_env, key_file, key "
        "(got key_env and key_file)",
        "fleet.yaml:4:26: keys[2].key_env: environment variable NOT_SET is not set",
        f"fleet.yaml:5:28: keys[3].key_file: cannot read {missing}: No such file or directory",
        "fleet.yaml:6:28: keys[4].key_env: environment variable EMPTY is empty",
        "fleet.yaml:7:30: keys[5].key_env: must be an environment variable name "
        "(letters, digits and _, not a digit first)",
        "fleet.yaml:8:12: keys[6].name: must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
        "letter or digit (got 'bad name')",
    ]


def test_empty_keys_list_is_refused(tmp_path: Path) -> None:
    text = "keys: []\npools:\n  - {name: p, endpoints: [http://h:1]}\n"
    assert errors(tmp_path, text) == [
        "fleet.yaml:1:7: keys: an empty keys list would refuse every request; "
        "remove keys: for an open gateway"
    ]
    assert load_config(write(tmp_path, "keys:\npools: [{name: p, endpoints: [http://h:1]}]\n")).keys == []


def test_key_file_relative_to_the_fleet_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "k").write_text("from-file\n", encoding="utf-8")
    path = write(
        tmp_path, "keys: [{name: k, key_file: secrets/k}]\npools: [{name: p, endpoints: [http://h:1]}]\n"
    )
    config = load_config(path, env={})
    assert config.keys[0].key_file == str(tmp_path / "secrets" / "k")
    assert config.keys[0].secret.get_secret_value() == "from-file"


def test_endpoint_credentials(tmp_path: Path) -> None:
    (tmp_path / "up").write_text("upstream-file-secret", encoding="utf-8")
    text = """\
        pools:
          - name: p
            endpoints:
              - {url: http://h:1, api_key_env: UP}
              - {url: http://h:2, api_key_file: up}
              - {url: http://h:3, api_key_env: GONE}
              - {url: http://h:4, api_key_env: UP, api_key: lit}
        """
    assert errors(tmp_path, text, env={"UP": "upstream-env-secret"}) == [
        "fleet.yaml:6:40: pools[0].endpoints[2].api_key_env: environment variable GONE is not set",
        "fleet.yaml:7:53: pools[0].endpoints[3].api_key: give only one of api_key_env, api_key_file, api_key "
        "(got api_key_env and api_key)",
    ]
    good = "\n".join(textwrap.dedent(text).splitlines()[:5]) + "\n"
    config = load_config(write(tmp_path, good), env={"UP": "upstream-env-secret"})
    secrets = [e.secret.get_secret_value() if e.secret else None for e in config.pools[0].endpoints]
    assert secrets == ["upstream-env-secret", "upstream-file-secret"]


def test_limits(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: p
            endpoints: [http://h:1]
            limits:
              max_tokens_cap: 100
              max_tokens_default: 1000
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:6:27: pools[0].limits.max_tokens_default: must not exceed max_tokens_cap (1000 > 100)"
    ]
    text = "pools:\n  - {name: p, endpoints: [http://h:1], limits: {max_queue: 0, max_body_bytes: -1}}\n"
    assert errors(tmp_path, text) == [
        "fleet.yaml:2:79: pools[0].limits.max_body_bytes: should be greater than or equal to 1 (got -1)",
        "fleet.yaml:2:60: pools[0].limits.max_queue: should be greater than or equal to 1 (got 0)",
    ]


def test_timeouts_positive(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: p
            endpoints: [http://h:1]
            timeouts:
              connect: 0
              idle_gap: -1
              total: .inf
        keepalive_after: 0
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:5:16: pools[0].timeouts.connect: should be greater than 0 (got 0)",
        "fleet.yaml:6:17: pools[0].timeouts.idle_gap: should be greater than 0 (got -1)",
        "fleet.yaml:7:14: pools[0].timeouts.total: should be a finite number (got inf)",
        "fleet.yaml:8:18: keepalive_after: should be greater than 0 (got 0)",
    ]


def test_retries_scrape_health_routing(tmp_path: Path) -> None:
    text = """\
        pools:
          - name: p
            endpoints: [http://h:1]
            retries: {attempts: 0}
            health: {path: health}
            routing: {scorers: {load: -1, random: 1}}
          - name: q
            endpoints: [http://h:1]
            retries: {backoff_base: 2}
            scrape: {interval: 2}
        """
    assert errors(tmp_path, text) == [
        "fleet.yaml:4:25: pools[0].retries.attempts: should be greater than or equal to 1 (got 0)",
        "fleet.yaml:5:20: pools[0].health.path: must start with / and contain no spaces (got 'health')",
        "fleet.yaml:6:31: pools[0].routing.scorers.load: weight must be a finite number >= 0 (got -1.0)",
        "fleet.yaml:6:35: pools[0].routing.scorers.random: unknown scorer "
        "(known: load, prefix, lora, session, ring)",
        "fleet.yaml:9:29: pools[1].retries.backoff_base: must not exceed backoff_max",
        "fleet.yaml:10:13: pools[1].scrape.stale_after: must be at least interval",
    ]


@pytest.mark.parametrize(
    ("listen", "admin", "error"),
    [
        (
            "{host: 0.0.0.0, port: 8001}",
            "{}",
            "2:8: admin.port: admin must not listen where listen does (0.0.0.0:8001 and 127.0.0.1:8001)",
        ),
        (
            "{host: 127.0.0.1, port: 9000}",
            "{port: 9000}",
            "2:15: admin.port: admin must not listen where listen does (127.0.0.1:9000 and 127.0.0.1:9000)",
        ),
        ("{host: 10.0.0.1, port: 9000}", "{port: 9000}", None),
        ("{port: 0}", "{port: 0}", None),
    ],
)
def test_listen_and_admin_must_differ(tmp_path: Path, listen: str, admin: str, error: str | None) -> None:
    text = f"listen: {listen}\nadmin: {admin}\npools: [{{name: p, endpoints: [http://h:1]}}]\n"
    if error is None:
        load_config(write(tmp_path, text), env={})
    else:
        assert errors(tmp_path, text) == [f"fleet.yaml:{error}"]


def test_empty_pools_and_pools_without_endpoints(tmp_path: Path) -> None:
    assert errors(tmp_path, "pools: []\n") == ["fleet.yaml:1:8: pools: at least one pool is required"]
    text = "pools:\n  - name: p\n    models: [m]\n  - {name: q, endpoints: []}\n"
    lines = errors(tmp_path, text)
    assert [line.split(": a pool")[0] for line in lines] == [
        "fleet.yaml:2:5: pools[0].endpoints",
        "fleet.yaml:4:26: pools[1].endpoints",
    ]
    assert all("workers that fleetgate starts, or discovery" in line for line in lines)


WORKERS = """
pools:
  - name: sim
    workers:
      engine: sim
      model: h200-llama-3.1-8b
"""


def test_workers_defaults_map_to_a_pool_spec(tmp_path: Path) -> None:
    from fleetgate.api.gateway import pool_spec
    from fleetgate.scaling.spec import RuleKind

    cfg = load_config(write(tmp_path, WORKERS), env={})
    pool = cfg.pools[0]
    assert pool.model_map() == {"h200-llama-3.1-8b": "h200-llama-3.1-8b"}
    spec = pool_spec(pool)
    assert (spec.min_workers, spec.max_workers, spec.rule.kind) == (0, 1, RuleKind.QUEUE_DELAY)
    assert spec.worker.gpus_per_worker == 0 and not spec.worker.sleep and spec.worker.sleep_level == 1
    vllm = WORKERS.replace("engine: sim", "engine: vllm") + "      served_model_name: m\n"
    vpool = load_config(write(tmp_path, vllm), env={}).pools[0]
    assert pool_spec(vpool).worker.gpus_per_worker == 1
    assert vpool.model_map() == {"m": "m"}


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            "    endpoints: [http://a:1]\n",
            "5:7: pools[0].workers: give either endpoints or workers, not both",
        ),
        (
            "      min_workers: 3\n      max_workers: 2\n",
            "7:20: pools[0].workers.min_workers: must not exceed",
        ),
        ("      sleep: true\n", "7:14: pools[0].workers.sleep: the embedded engine has no sleep mode"),
        ("      scaling: {rule: fast}\n", "7:23: pools[0].workers.scaling.rule: should be 'queue_delay'"),
        ("      sleep_level: 3\n", "7:20: pools[0].workers.sleep_level: should be 1 or 2"),
        (
            "      gpus: ['0']\n      gpus_per_worker: 1\n      max_workers: 2\n",
            "9:20: pools[0].workers.max_workers: 2 workers of 1 GPU",
        ),
    ],
)
def test_workers_problems_point_at_the_file(tmp_path: Path, extra: str, error: str) -> None:
    text = WORKERS.replace("engine: sim", "engine: embedded") + extra
    (line,) = errors(tmp_path, text)
    assert line.startswith(f"fleet.yaml:{error}"), line


def test_yaml_level_problems(tmp_path: Path) -> None:
    assert errors(tmp_path, "") == [
        "fleet.yaml:1:1: (top level): the file is empty; a fleet file needs pools:"
    ]
    assert errors(tmp_path, "- 1\n") == ["fleet.yaml:1:1: (top level): should be a mapping (got a list)"]
    assert errors(tmp_path, "pools:\n  - name: p\n   bad: [\n") == [
        "fleet.yaml:3:4: (yaml): not valid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection)"
    ]
    text = "pools:\n  - name: p\n    endpoints: [http://h:1]\n    name: q\n"
    assert errors(tmp_path, text) == [
        "fleet.yaml:4:5: pools[0].name: duplicate key (first at line 2); the last one would silently win"
    ]
    unreadable = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(unreadable)
    assert str(info.value) == f"{unreadable}: (file): cannot read: No such file or directory"


def test_problems_are_all_reported_at_once(tmp_path: Path) -> None:
    text = "listen: {port: -1}\npools:\n  - {name: p, endpoints: [ftp://a, http://b:1], oops: 1}\n"
    assert [line.split(": ")[1] for line in errors(tmp_path, text)] == [
        "listen.port",
        "pools[0].endpoints[0].url",
        "pools[0].oops",
    ]


# ---- secrets -----------------------------------------------------------------------------------------------


def test_secrets_never_printed(tmp_path: Path) -> None:
    config = load_config(design_example(tmp_path), env=ENV)
    shown = repr(config) + str(config) + dump_config(config) + dump_config(config, reveal_secrets=True)
    for secret in (*ENV.values(), "batch-secret-3"):
        assert secret not in shown

    # a secret that is wrong in some way is not echoed either, wherever it was put
    text = """\
        keys:
          - {name: a, key: "sk live secret"}
          - sk-misplaced-secret
          - {name: b, key_env: "sk-in-the-wrong-field", key: [sk-listed-secret]}
        pools:
          - name: p
            endpoints: [{url: http://h:1, api_key: 12345678}]
        """
    message = "\n".join(errors(tmp_path, text))
    for secret in (
        "sk live secret",
        "sk-misplaced-secret",
        "sk-in-the-wrong-field",
        "sk-listed-secret",
        "1234",
    ):
        assert secret not in message
    assert "keys[0].key: the literal holds a secret with whitespace inside" in message


def test_literal_secrets_load_with_a_warning(tmp_path: Path) -> None:
    text = """\
        keys:
          - {name: a, key: literal-key-1}
        pools:
          - name: p
            endpoints: [{url: http://h:1, api_key: literal-key-2}]
        """
    path = write(tmp_path, text)
    with pytest.warns(ConfigWarning) as record:
        config = load_config(path, env={})
    assert [str(w.message).replace(str(path), "fleet.yaml") for w in record] == [
        "fleet.yaml:2:20: keys[0].key: a secret written in the fleet file; prefer the _env or _file form",
        "fleet.yaml:5:44: pools[0].endpoints[0].api_key: a secret written in the fleet file; "
        "prefer the _env or _file form",
    ]
    assert config.keys[0].secret.get_secret_value() == "literal-key-1"
    assert "literal-key" not in repr(config) + dump_config(config)
    revealed = dump_config(config, reveal_secrets=True)
    assert "literal-key-1" in revealed and "literal-key-2" in revealed


def test_resolve_secret(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("  file-secret \n", encoding="utf-8")
    assert resolve_secret() is None
    assert resolve_secret(env_var="K", env={"K": "v"}) is not None
    value = resolve_secret(file=tmp_path / "s")
    assert value is not None and value.get_secret_value() == "file-secret"
    with pytest.raises(ValueError, match="at most one"):
        resolve_secret(env_var="K", file="x", env={"K": "v"})
    with pytest.raises(ValueError, match=r"[Ii]s a directory"):
        resolve_secret(file=tmp_path)


def test_models_built_in_python_resolve_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_TEST_KEY", "from-os-environ")
    key = KeyConfig(name="k", key_env="FLEETGATE_TEST_KEY")
    assert key.secret.get_secret_value() == "from-os-environ"


# ---- environment settings, the no-file mode, command-line overrides ----------------------------------------


def test_config_path_precedence(tmp_path: Path) -> None:
    env = {"FLEETGATE_CONFIG": "/etc/fleet.yaml"}
    assert config_path("cli.yaml", env, cwd=tmp_path) == Path("cli.yaml")
    assert config_path(None, env, cwd=tmp_path) == Path("/etc/fleet.yaml")
    assert config_path("", {"FLEETGATE_CONFIG": ""}, cwd=tmp_path) is None
    (tmp_path / "fleet.yaml").write_text(MINIMAL, encoding="utf-8")
    assert config_path(None, {}, cwd=tmp_path) == tmp_path / "fleet.yaml"
    assert config_path(None, env, cwd=tmp_path) == Path("/etc/fleet.yaml")


def test_config_from_upstreams() -> None:
    config = config_from_upstreams(["http://127.0.0.1:9001/", "http://127.0.0.1:9002/v1"], "127.0.0.1", 8000)
    (pool,) = config.pools
    assert pool.name == "default" and pool.models == []
    assert [e.url for e in pool.endpoints] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8000)
    assert config.keys == [] and config.pool_for_model() == {}
    moved = config_from_upstreams(["http://h:1"], "0.0.0.0", 8001, admin=AdminConfig(port=8002))
    assert moved.admin.port == 8002
    defaults = config_from_upstreams(["http://h:1"])
    assert (defaults.listen.host, defaults.listen.port) == ("0.0.0.0", 8000)


@pytest.mark.parametrize(
    ("upstreams", "port", "message"),
    [
        (
            ["http://a:1", "ftp://b"],
            8000,
            "<command line>: --upstream #2: must be an http:// or https:// URL",
        ),
        ([], 8000, "<command line>: --upstream: a pool needs at least one endpoint"),
        (
            ["http://a:1", "http://A:1/"],
            8000,
            "<command line>: --upstream #2: endpoint url 'http://a:1' repeats",
        ),
        (["http://a:1"], 70000, "<command line>: --port: should be less than or equal to 65535 (got 70000)"),
        (["http://a:1"], 8001, "<command line>: admin.port: admin must not listen where listen does"),
    ],
)
def test_config_from_upstreams_errors(upstreams: list[str], port: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_upstreams(upstreams, "0.0.0.0", port)
    assert str(info.value).startswith(message)
    assert all(p.line == 0 and p.path for p in info.value.problems)


def test_with_addresses(tmp_path: Path) -> None:
    config = load_config(design_example(tmp_path), env=ENV)
    assert config.with_addresses() == config
    moved = config.with_addresses(port=9000, admin_host="0.0.0.0", admin_port=9001)
    assert (moved.listen.host, moved.listen.port) == ("0.0.0.0", 9000)
    assert moved.admin.model_dump() == {"host": "0.0.0.0", "port": 9001}
    assert moved.keys[0].secret.get_secret_value() == ENV["TRAVEL_KEY"]
    assert moved.pools == config.pools
    cases: list[tuple[dict[str, Any], str]] = [
        ({"port": 8001}, "<command line>: --admin-port: admin must not listen where listen does"),
        ({"port": -1}, "<command line>: --port: should be greater than or equal to 0 (got -1)"),
        ({"admin_port": 1 << 20}, "<command line>: --admin-port: should be less than or equal to 65535"),
        ({"admin_host": ""}, "<command line>: --admin-host: should have at least 1 character"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as info:
            config.with_addresses(**kwargs)
        assert str(info.value).startswith(message), str(info.value)


# ---- the reference documents every field -------------------------------------------------------------------


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        for arg in re.findall(r"\w+Config|ModelEntry", str(field.annotation)):
            yield from _models(getattr(config_module, arg))


def test_docs_name_every_field() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    missing = [
        f"{model.__name__}.{name}"
        for model in set(_models(FleetConfig))
        for name in model.model_fields
        if f"`{name}`" not in docs
    ]
    assert not missing


# ---- property tests ----------------------------------------------------------------------------------------

NAME = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum()
)
MODEL = st.text(string.ascii_letters + string.digits + "-./:_", min_size=1, max_size=16)
SECONDS = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
HOSTS = ["127.0.0.1", "10.0.0.5", "gpu-1.internal", "[::1]", "API.example.com"]
PATHS = ["", "/", "/v1", "/v2/ID/openai", "/a/b/"]
N_SECRETS = 6
SECRET_ENV = {f"FG_SECRET_{i}": f"env-secret-{i}" for i in range(N_SECRETS)}


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secrets")
    for i in range(N_SECRETS):
        (folder / f"secret-{i}").write_text(f"file-secret-{i}\n", encoding="utf-8")
    return folder


@st.composite
def secret_source(draw: st.DrawFn, index: int, prefix: str, secrets_dir: Path) -> dict[str, str]:
    kind = draw(st.sampled_from(["env", "file", "literal"]))
    if kind == "env":
        return {f"{prefix}_env": f"FG_SECRET_{index}"}
    if kind == "file":
        return {f"{prefix}_file": str(secrets_dir / f"secret-{index}")}
    return {prefix: f"literal-secret-{index}"}


@st.composite
def pool_data(draw: st.DrawFn, index: int, secrets_dir: Path) -> dict[str, Any]:
    names = draw(st.lists(MODEL, max_size=4, unique=True))
    models: list[Any] = []
    for n, name in enumerate(f"p{index}/{name}" for name in names):
        shape = draw(st.sampled_from(["bare", "name", "alias", "alias-target"])) if n else "bare"
        if shape == "bare":
            models.append(name)
        elif shape == "name":
            models.append({"name": name})
        elif shape == "alias":
            models.append({"alias": name})
        else:
            models.append({"alias": name, "target": f"p{index}/{names[0]}"})
    urls = draw(
        st.lists(
            st.tuples(st.sampled_from(HOSTS), st.integers(1, 65535), st.sampled_from(PATHS)),
            min_size=1,
            max_size=3,
            unique_by=lambda t: (t[0].lower(), t[1], t[2].rstrip("/").removesuffix("/v1")),
        )
    )
    endpoints: list[Any] = []
    for e, (host, port, path) in enumerate(urls):
        url = f"{draw(st.sampled_from(['http', 'https']))}://{host}:{port}{path}"
        if draw(st.booleans()):
            endpoints.append(url)
            continue
        endpoint: dict[str, Any] = {"url": url, "weight": draw(st.floats(0.01, 100))}
        if draw(st.booleans()):
            endpoint["name"] = f"ep-{e}"
        if draw(st.booleans()):
            endpoint.update(draw(secret_source(draw(st.integers(0, N_SECRETS - 1)), "api_key", secrets_dir)))
        endpoints.append(endpoint)
    cap = draw(st.integers(1, 1 << 20))
    base = draw(SECONDS)
    interval = draw(SECONDS)
    pool: dict[str, Any] = {
        "name": f"pool-{index}",
        "models": models,
        "endpoints": endpoints,
        "priority_header": draw(st.booleans()),
        "limits": {
            "max_tokens_default": draw(st.integers(1, cap)),
            "max_tokens_cap": cap,
            "max_body_bytes": draw(st.integers(1, 1 << 30)),
            "max_queue": draw(st.integers(1, 1 << 16)),
        },
        "timeouts": {
            k: draw(SECONDS)
            for k in ("connect", "first_byte_stream", "first_byte_nonstream", "idle_gap", "total")
        },
        "retries": {"attempts": draw(st.integers(1, 10)), "backoff_base": base, "backoff_max": base * 2},
        "health": {
            "interval": draw(SECONDS),
            "timeout": draw(SECONDS),
            "path": draw(st.sampled_from(["/h", "/"])),
        },
        "scrape": {"interval": interval, "stale_after": interval + draw(SECONDS)},
        "routing": {"scorers": draw(st.dictionaries(st.sampled_from(list(SCORERS)), st.floats(0, 10)))},
    }
    # drop some sections so that defaults are exercised too
    optional = ("models", "limits", "timeouts", "retries", "health", "scrape", "routing", "priority_header")
    for section in optional:
        if draw(st.booleans()):
            del pool[section]
    return pool


@st.composite
def fleet_data(draw: st.DrawFn, secrets_dir: Path) -> dict[str, Any]:
    # away from the default ports, so that dropping listen or admin cannot make them clash
    ports = draw(st.lists(st.integers(8002, 65535), min_size=2, max_size=2, unique=True))
    data: dict[str, Any] = {
        "listen": {"host": "0.0.0.0", "port": ports[0]},
        "admin": {"host": "127.0.0.1", "port": ports[1]},
        "pools": [draw(pool_data(i, secrets_dir)) for i in range(draw(st.integers(1, 3)))],
        "shutdown": {"pre_stop_delay": draw(st.floats(0, 100)), "drain_timeout": draw(st.floats(0, 100))},
        "keepalive_after": draw(SECONDS),
        "log": {
            "format": draw(st.sampled_from(["json", "text"])),
            "level": draw(st.sampled_from(["info", "debug"])),
        },
    }
    if draw(st.booleans()):
        names = draw(st.lists(NAME, min_size=1, max_size=N_SECRETS, unique=True))
        data["keys"] = [
            {"name": name, "priority": draw(st.integers(-5, 5)), **draw(secret_source(i, "key", secrets_dir))}
            for i, name in enumerate(names)
        ]
    for section in ("listen", "admin", "shutdown", "keepalive_after", "log"):
        if draw(st.booleans()):
            del data[section]
    return data


def _load_text(folder: Path, text: str) -> FleetConfig:
    path = folder / "fleet.yaml"
    path.write_text(text, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return load_config(path, env=SECRET_ENV)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_configs_round_trip(secrets_dir: Path, data: st.DataObject) -> None:
    source = data.draw(fleet_data(secrets_dir))
    config = _load_text(secrets_dir, yaml.safe_dump(source))
    again = _load_text(secrets_dir, dump_config(config, reveal_secrets=True))
    assert again == config
    assert dump_config(again) == dump_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        assert parse_config(dump_config(config, reveal_secrets=True), env=SECRET_ENV) == config


BAD_URLS = ["ftp://x", "http://", "http://h/?q=1", "http://h/#f", "h:1", "http://u:p@h", "http://[::1", ""]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(BAD_URLS),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(value: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield loc
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*loc, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_raise_only_config_errors_with_positions(secrets_dir: Path, data: st.DataObject) -> None:
    source = data.draw(fleet_data(secrets_dir))
    for _ in range(data.draw(st.integers(1, 3))):
        loc = data.draw(st.sampled_from(list(_paths(source))))
        action = data.draw(st.sampled_from(["replace", "add-key", "delete"]))
        if not loc:
            source = data.draw(JUNK) if action == "replace" else source
            continue
        *parent_loc, last = loc
        parent: Any = source
        for seg in parent_loc:
            parent = parent[seg]
        if action == "replace":
            parent[last] = data.draw(JUNK)
        elif action == "add-key" and isinstance(parent[last], dict):
            parent[last][data.draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=8))] = 1
        else:
            del parent[last]
    try:
        _load_text(secrets_dir, yaml.safe_dump(source))
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.line >= 1 and problem.column >= 1, problem
            assert problem.path and problem.message, problem
        shown = str(exc)
        assert not any(secret in shown for secret in SECRET_ENV.values())
        assert "file-secret-" not in shown and "literal-secret-" not in shown
