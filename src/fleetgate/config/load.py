"""Reading a fleet file: which file, YAML with positions, validation problems placed at file:line:column, and
the effective file dumped back."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from fleetgate.config.fleet import FleetConfig
from fleetgate.config.problems import ConfigError, ConfigWarning, Loc, Problem, explain, render_loc

CONFIG_ENV_VAR = "FLEETGATE_CONFIG"
DEFAULT_CONFIG_FILE = "fleet.yaml"


def config_path(cli_value: str | None, env: Mapping[str, str], *, cwd: Path | None = None) -> Path | None:
    """Which fleet file to load, highest precedence first: the --config flag, then $FLEETGATE_CONFIG, then
    ./fleet.yaml when it exists; None = no file (the gateway then needs --upstream). Empty values count as
    unset."""
    if cli_value:
        return Path(cli_value)
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    default = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


# ---- loading -----------------------------------------------------------------------------------------------


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> FleetConfig:
    """Reads and validates a fleet file. `env` (default os.environ) supplies key_env/api_key_env secrets;
    key_file paths are relative to the file's folder. Raises ConfigError listing every problem found, each at
    its file:line:column; warns (ConfigWarning) about secrets written into the file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError([Problem(str(file), 0, 0, "(file)", f"cannot read: {why}")]) from None
    return parse_config(text, source=str(file), env=env, base_dir=file.parent.absolute())


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> FleetConfig:
    """load_config on YAML text; `source` names it in errors, `base_dir` anchors relative key files (cwd)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "syntax error"
        if exc.context:
            problem += f" ({exc.context})"
        raise ConfigError([Problem(source, line, col, "(yaml)", f"not valid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, 1, 1, "(yaml)", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if root is None:
        raise ConfigError(
            [Problem(source, 1, 1, "(top level)", "the file is empty; a fleet file needs pools:")]
        )
    problems = _duplicate_keys(root, source)
    context = {"env": os.environ if env is None else env, "base_dir": base_dir or Path.cwd()}
    try:
        config = FleetConfig.model_validate(data, context=context)
    except ValidationError as exc:
        problems += [
            _place(source, root, loc, message)
            for err in exc.errors(include_url=False)
            for loc, message in explain(err, FleetConfig)
        ]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    for loc in _literal_secrets(config):
        warning = _place(
            source, root, loc, "a secret written in the fleet file; prefer the _env or _file form"
        )
        warnings.warn(str(warning), ConfigWarning, stacklevel=2)
    return config


def dump_config(config: FleetConfig, *, reveal_secrets: bool = False) -> str:
    """The effective fleet file as YAML, every default spelled out. Secrets written in the file print as
    ********** unless reveal_secrets; secrets read from env vars or files never appear (their sources do)."""
    data = config.model_dump(mode="json", exclude_none=True, context={"reveal_secrets": reveal_secrets})
    if not data["keys"]:
        del data["keys"]  # an open gateway; `keys: []` would not load
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _literal_secrets(config: FleetConfig) -> Iterator[Loc]:
    for k, key in enumerate(config.keys):
        if key.key is not None:
            yield ("keys", k, "key")
    for p, pool in enumerate(config.pools):
        for e, ep in enumerate(pool.endpoints):
            if ep.api_key is not None:
                yield ("pools", p, "endpoints", e, "api_key")


def _place(source: str, root: yaml.Node, loc: Loc, message: str) -> Problem:
    """The problem at the YAML node `loc` names: the value for a key that is there, the key itself for an
    unknown key, the enclosing mapping for a key that is missing."""
    node: yaml.Node = root
    point_at_key = message.startswith("unknown ")  # an unknown key, an unknown scorer
    for i, seg in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(
                ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(seg)),
                None,
            )
            if pair is None:
                break
            node = pair[0] if point_at_key and i == len(loc) - 1 else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
            node = node.value[seg]
        else:
            break
    mark = node.start_mark
    return Problem(source, mark.line + 1, mark.column + 1, render_loc(loc) or "(top level)", message)


def _duplicate_keys(root: yaml.Node, source: str) -> list[Problem]:
    """YAML lets a key repeat (the last wins); in a fleet file that is always a mistake."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    continue
                if k.value in first:
                    line = first[k.value].start_mark.line + 1
                    problems.append(
                        Problem(
                            source,
                            k.start_mark.line + 1,
                            k.start_mark.column + 1,
                            render_loc((*loc, k.value)),
                            f"duplicate key (first at line {line}); the last one would silently win",
                        )
                    )
                first.setdefault(k.value, k)
                walk(v, (*loc, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    walk(root, ())
    return problems
