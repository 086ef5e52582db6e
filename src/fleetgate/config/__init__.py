"""The fleet file (YAML) and the gateway's environment settings: pydantic models, loading, and errors that
point at a file, line and column. This package is the only place defaults live; docs/fleet-file.md is its
reference.

    config = load_config("fleet.yaml")       # FleetConfig, or ConfigError listing every problem
    config = config_from_upstreams(["http://127.0.0.1:9001"], "0.0.0.0", 8000)   # gateway --upstream URL
    path = config_path(cli_value, os.environ)   # --config > FLEETGATE_CONFIG > ./fleet.yaml

Secrets (`keys[].key_env`/`key_file`, `endpoints[].api_key_env`/`api_key_file`) are read once, at load time,
into `SecretStr` values (`KeyConfig.secret`, `EndpointConfig.secret`) that are never printed, dumped or put in
errors.

Modules: `problems` (errors at key paths), `secrets`, `fields` (shared field rules), the models by topic
(`server`, `endpoints`, `pool`, `routing`, `workers`, `fleet`), `load` (YAML with positions) and `presets`
(fleet files built from command-line flags).
"""

from fleetgate.config.endpoints import EndpointConfig, ModelEntry, normalize_url
from fleetgate.config.fleet import FleetConfig
from fleetgate.config.kubernetes import (
    DiscoveryConfig,
    KubernetesConfig,
    KubernetesDiscovery,
    LeaderElectionConfig,
)
from fleetgate.config.load import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_FILE,
    config_path,
    dump_config,
    load_config,
    parse_config,
)
from fleetgate.config.pool import (
    AdapterConfig,
    HealthConfig,
    LimitsConfig,
    PoolConfig,
    RetriesConfig,
    ScrapeConfig,
    TimeoutsConfig,
)
from fleetgate.config.presets import config_for_model, config_from_upstreams
from fleetgate.config.problems import ConfigError, ConfigWarning, Problem
from fleetgate.config.routing import SCORERS, RingConfig, RoutingConfig, SaturationConfig, SessionConfig
from fleetgate.config.secrets import resolve_secret
from fleetgate.config.server import AdminConfig, KeyConfig, ListenConfig, LogConfig, ShutdownConfig
from fleetgate.config.tenancy import (
    BudgetConfig,
    LedgerConfig,
    PriceConfig,
    ResponseCacheConfig,
    ScopeLimitsConfig,
    TenancyConfig,
)
from fleetgate.config.workers import ScalingConfig, WorkersConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_FILE",
    "SCORERS",
    "AdapterConfig",
    "AdminConfig",
    "BudgetConfig",
    "ConfigError",
    "ConfigWarning",
    "DiscoveryConfig",
    "EndpointConfig",
    "FleetConfig",
    "HealthConfig",
    "KeyConfig",
    "KubernetesConfig",
    "KubernetesDiscovery",
    "LeaderElectionConfig",
    "LedgerConfig",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "ModelEntry",
    "PoolConfig",
    "PriceConfig",
    "Problem",
    "ResponseCacheConfig",
    "RetriesConfig",
    "RingConfig",
    "RoutingConfig",
    "SaturationConfig",
    "ScalingConfig",
    "ScopeLimitsConfig",
    "ScrapeConfig",
    "SessionConfig",
    "ShutdownConfig",
    "TenancyConfig",
    "TimeoutsConfig",
    "WorkersConfig",
    "config_for_model",
    "config_from_upstreams",
    "config_path",
    "dump_config",
    "load_config",
    "normalize_url",
    "parse_config",
    "resolve_secret",
]
