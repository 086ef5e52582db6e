"""What is wrong with a fleet file or a command line: problems at key paths, pydantic's errors explained."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]

# Nothing under these keys is ever echoed in a message: a misplaced secret must not reach a log.
_SECRET_FIELDS = frozenset({"key", "api_key"})
_RENAMED = {"auth": "keys", "api_keys": "keys", "upstreams": "endpoints", "backends": "endpoints"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a fleet file: where (file, 1-based line and column; 0 = no position) and what."""

    file: str
    line: int
    column: int
    path: str  # key path, e.g. "pools[1].endpoints[0].url"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        return f"{where}: {self.path}: {self.message}"


class ConfigError(ValueError):
    """A fleet file (or command line) that does not validate; `problems` lists each, `str()` one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigWarning(UserWarning):
    """A fleet file that loads but does something discouraged (a literal secret in the file)."""


def invalid(*items: tuple[Loc, str]) -> PydanticCustomError:
    """A validation error that carries several problems, each at a key path relative to the model raising it;
    load_config maps each to its own YAML position."""
    summary = "; ".join(f"{render_loc(loc)}: {msg}" if loc else msg for loc, msg in items)
    return PydanticCustomError("fleetgate", "{summary}", {"summary": summary, "problems": list(items)})


def render_loc(loc: Loc) -> str:
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def explain(err: Any, root: type[BaseModel]) -> Iterator[tuple[Loc, str]]:
    """(absolute loc, message) for each problem one pydantic error stands for; `root` validated the whole."""
    loc: Loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "fleetgate":
        for sub, message in ctx["problems"]:
            yield (*loc, *sub), message
        return
    message = str(err["msg"]).removeprefix("Value error, ")
    kind = err["type"]
    value = err.get("input")
    # Nothing under keys: nor in an api_key is ever echoed: a misplaced secret must not reach a log.
    secret = loc[:1] == ("keys",) or any(seg in _SECRET_FIELDS for seg in loc)
    if kind == "missing":
        message = "required key is missing"
    elif kind == "extra_forbidden":
        message = "unknown key" + _key_hint(loc, root)
    elif kind in ("model_type", "dict_type", "model_attributes_type", "list_type"):
        shape = "a list" if kind == "list_type" else "a mapping"
        message = f"should be {shape}" + ("" if secret else f" (got {kind_of(value)})")
    elif kind != "value_error":  # our own messages say what they were given, where that is safe
        for noun in ("Input", "String", "List", "Value"):
            message = message.replace(f"{noun} should", "should")
        if not secret and ", got " not in message and isinstance(value, str | int | float | bool):
            message += f" (got {value!r})"
    yield loc, message


def kind_of(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _key_hint(loc: Loc, root: type[BaseModel]) -> str:
    model = _model_at(loc[:-1], root)
    if model is None:
        return ""
    known = list(model.model_fields)
    wrong = str(loc[-1])
    close = [_RENAMED[wrong]] if wrong in _RENAMED else difflib.get_close_matches(wrong, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (expected one of: {', '.join(known)})"


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class validating the mapping at `loc`, following field annotations."""
    tp: Any = root
    for seg in loc:
        if isinstance(seg, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(seg)
            if field is None:
                return None
            tp = _unwrap(field.annotation)
        elif isinstance(seg, int) and typing.get_origin(tp) is list:
            tp = _unwrap(typing.get_args(tp)[0])
        else:
            return None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp
