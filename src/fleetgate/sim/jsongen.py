"""Generate small, plausible JSON values that validate against a client-supplied JSON Schema.

The simulator uses this for tool-call arguments and ``response_format`` output, so clients that
validate what they get back see the same shape a real model constrained by guided decoding would emit.
Covers the draft 2020-12 keywords that appear in tool schemas; anything rarer is ignored.
"""

from __future__ import annotations

import copy
import importlib
import math
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

__all__ = ["MAX_SIZE", "generate", "malformed"]

# The stdlib regex parser is private and untyped; loading it lazily by name keeps mypy quiet and lets
# `pattern` support degrade to "no attempt" if a future Python moves it.
try:
    _SRE: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover
    _SRE = None

_WORDS = (
    "paris", "tokyo", "lisbon", "kyoto", "berlin", "madrid", "rome", "oslo", "cairo", "lima", "seoul",
    "hotel", "flight", "museum", "beach", "train", "ticket", "dinner", "harbor", "market", "sunset",
    "ferry", "castle", "garden", "airport", "weekend", "budget", "luggage", "temple", "island",
)  # fmt: skip
_CJK = ("北京", "上海", "东京", "酒店", "机场")
# Past this depth we steer towards terminating choices so recursive $refs stay small; past the hard
# limit there may be no finite instance at all, so we give up with null rather than recurse forever.
_SOFT_DEPTH = 7
_HARD_DEPTH = 48
# The longest string or array generated, and the most values in one answer, whatever minLength/minItems ask:
# the answer is cut at max_tokens long before, and building a billion of them would stall the simulator.
MAX_SIZE = 4096
MAX_VALUES = 20_000
_TYPE_COST = ("null", "boolean", "integer", "number", "string", "array", "object")
_CATEGORY = {"DIGIT": "0123456789", "WORD": "abcdefgh", "SPACE": " ", "NOT_DIGIT": "ab", "NOT_WORD": "-"}
_INFER = (
    ("object", ("properties", "required", "additionalProperties", "minProperties", "maxProperties")),
    ("array", ("items", "prefixItems", "minItems", "maxItems", "uniqueItems")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


def generate(schema: Mapping[str, Any] | bool | None, rng: random.Random) -> Any:
    """A JSON value valid against `schema` (draft 2020-12 subset), deterministic for a given rng state."""
    root: Any = {} if schema is None or schema is True else schema
    return _Gen(root, rng).value(root, 0)


# What the draft 2020-12 metaschema requires of the keywords the generator reads.
_SIMPLE_TYPES = frozenset(("null", "boolean", "integer", "number", "string", "array", "object"))
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "contains", "propertyNames")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_STRINGS = ("pattern", "$ref", "format")


def malformed(schema: Any, where: str = "(root)", depth: int = 0) -> str | None:
    """Where `schema` breaks the JSON Schema metaschema in a keyword the generator reads, or None.

    A client's tool parameters or response_format can be anything; vLLM refuses a schema its grammar
    backend cannot compile with a 400, and the generator must never be handed one it would crash on.
    """
    if isinstance(schema, bool) or depth > _HARD_DEPTH:
        return None
    if not isinstance(schema, Mapping):
        return where
    at = (lambda k: k) if where == "(root)" else (lambda k: f"{where}.{k}")
    t = schema.get("type")
    if t is not None and not all(
        isinstance(x, str) and x in _SIMPLE_TYPES for x in (t if isinstance(t, list) else [t])
    ):
        return at("type")
    for k in _SCHEMA_MAPS:
        if k in schema:
            if not isinstance(schema[k], Mapping):
                return at(k)
            for name, sub in schema[k].items():
                if (bad := malformed(sub, at(f"{k}.{name}"), depth + 1)) is not None:
                    return bad
    for k in _SCHEMA_LISTS:
        if k in schema:
            if not isinstance(schema[k], list) or not schema[k]:
                return at(k)
            for i, sub in enumerate(schema[k]):
                if (bad := malformed(sub, at(f"{k}.{i}"), depth + 1)) is not None:
                    return bad
    for k in _SUBSCHEMAS:
        if k in schema and (bad := malformed(schema[k], at(k), depth + 1)) is not None:
            return bad
    for k in ("required", "enum"):
        v = schema.get(k, [])
        if not isinstance(v, list) or (k == "required" and not all(isinstance(x, str) for x in v)):
            return at(k)
    for k in _NUMBERS:
        if k in schema and (not _is_type(schema[k], "number") or (k == "multipleOf" and schema[k] <= 0)):
            return at(k)
    for k in _COUNTS:
        if k in schema and (not _is_type(schema[k], "integer") or schema[k] < 0):
            return at(k)
    for k in _STRINGS:
        if k in schema and not isinstance(schema[k], str):
            return at(k)
    if "uniqueItems" in schema and not isinstance(schema["uniqueItems"], bool):
        return at("uniqueItems")
    return None


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Conjunction of two (ref-free) schemas, approximated keyword by keyword, for allOf and branches."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif k == "properties":
            out[k] = {
                **out[k],
                **{p: ({"allOf": [out[k][p], s]} if p in out[k] else s) for p, s in v.items()},
            }
        elif k == "required":
            out[k] = [*out[k], *(r for r in v if r not in out[k])]
        elif k == "type":
            out[k] = _meet(_types(out[k]), _types(v))  # empty marks the conjunction unsatisfiable
        elif k == "enum":
            out[k] = [e for e in out[k] if any(_eq(e, x) for x in v)]
        elif k == "const" and not _eq(out[k], v):
            out["type"] = []  # contradictory consts: mark the conjunction unsatisfiable
        elif k in _LOWER or k in _UPPER:
            out[k] = (max if k in _LOWER else min)(out[k], v)
        elif k in ("anyOf", "oneOf"):
            # Cross product keeps both disjunctions without re-introducing a nested allOf to flatten.
            out[k] = [{"allOf": [x, y]} for x in out[k] for y in v]
        elif k in ("items", "additionalProperties"):
            if out[k] is True or v is False:
                out[k] = v
            elif isinstance(out[k], Mapping) and isinstance(v, Mapping):
                out[k] = {"allOf": [out[k], v]}
        else:
            out[k] = v
    # A property declared on one side only is still bound by the other side's additionalProperties.
    for mine, other in ((a, b), (b, a)):
        extra, known = other.get("additionalProperties", True), other.get("properties", {})
        loose = [p for p in mine.get("properties", {}) if p not in known and extra is not True]
        if loose:
            props = out["properties"] = dict(out["properties"])  # never write into the client's schema
            props.update({p: False if extra is False else {"allOf": [props[p], extra]} for p in loose})
    return out


def _types(t: Any) -> list[str]:
    return list(t) if isinstance(t, list) else [t]


def _meet(a: list[str], b: list[str]) -> list[str]:
    """Type intersection, where integer is the overlap of integer with number."""
    both = [t for t in a if t in b or (t == "integer" and "number" in b)]
    return both + ["integer"] * ("integer" not in both and "number" in a and "integer" in b)


def _choices(s: Mapping[str, Any]) -> list[Any] | None:
    return [s["const"]] if "const" in s else list(s["enum"]) if "enum" in s else None


def _copy(v: Any) -> Any:
    # Callers may mutate what they get back; that must not leak into the client's schema.
    return copy.deepcopy(v) if isinstance(v, dict | list) else v


def _search(pattern: Any, v: str) -> bool:
    try:
        return re.search(pattern, v) is not None
    except (re.error, TypeError):  # ECMA-only syntax: nothing to check against, so do not reject
        return True


def _is_type(v: Any, t: str) -> bool:
    if t == "integer":
        return not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and v.is_integer()))
    if t == "number":
        return not isinstance(v, bool) and isinstance(v, int | float)
    py = {"null": type(None), "boolean": bool, "string": str, "array": list, "object": dict}.get(t)
    return py is not None and isinstance(v, py)


def _numbers(*vals: Any) -> list[float]:
    return [v for v in vals if _is_type(v, "number")]


def _eq(a: Any, b: Any) -> bool:
    # JSON Schema equality distinguishes true from 1, which Python's == does not.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _multiple(v: float, m: float) -> bool:
    # Mirror the float-division check of common validators: 0.3 / 0.1 is not integral to them.
    if isinstance(m, float) or isinstance(v, float):
        q = v / m
        return math.isfinite(q) and int(q) == q
    return v % m == 0


class _Gen:
    __slots__ = ("left", "rng", "root")

    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.left = MAX_VALUES  # values still to generate; arrays stop growing at 0

    def lookup(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node = self.root
        for part in filter(None, ref[1:].split("/")):
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(key)] if isinstance(node, list) else node[key]
            except (KeyError, IndexError, ValueError, TypeError):
                return {}
        return node

    def flatten(self, s: Any, depth: int = 0) -> Any:
        """Inline $ref and allOf so the rest of the generator sees one plain schema."""
        # Bounded: a $ref cycle that never descends into a property or item has no finite resolution.
        for _ in range(32 if depth < 32 else 0):
            if not isinstance(s, Mapping):
                return s
            if "$ref" not in s and "allOf" not in s:
                return s
            s = dict(s)
            if "$ref" in s:
                target = self.lookup(s.pop("$ref"))
                if target is False:
                    return False
                s = _merge(target, s) if isinstance(target, Mapping) else s
            for part in s.pop("allOf", ()):
                part = self.flatten(part, depth + 1)
                if part is False:
                    return False
                s = _merge(s, part) if isinstance(part, Mapping) else s
        return {}

    def resolve(self, s: Any) -> Any:
        """flatten(), plus False for schemas (usually produced by merging) that nothing can satisfy."""
        s = self.flatten(s)
        if not isinstance(s, Mapping):
            return s
        vals = _choices(s)
        if s.get("type") == [] or (vals is not None and not any(self.valid(s, v) for v in vals)):
            return False
        return s

    def valid(self, s: Any, v: Any, depth: int = 0) -> bool:
        """Small validator for the generator's own checks: oneOf exclusivity, enum values versus siblings."""
        s = self.flatten(s)
        if not isinstance(s, Mapping) or depth > _HARD_DEPTH:
            return s is not False
        if ("const" in s and not _eq(s["const"], v)) or (
            "enum" in s and not any(_eq(e, v) for e in s["enum"])
        ):
            return False
        if "type" in s and not any(_is_type(v, t) for t in _types(s["type"])):
            return False
        if "anyOf" in s and not any(self.valid(b, v, depth + 1) for b in s["anyOf"]):
            return False
        if "oneOf" in s and sum(self.valid(b, v, depth + 1) for b in s["oneOf"]) != 1:
            return False
        size: int | None = None
        if isinstance(v, dict):
            props, extra, size = s.get("properties", {}), s.get("additionalProperties", True), len(v)
            if any(r not in v for r in s.get("required", ())) or not all(
                self.valid(props.get(k, extra), x, depth + 1) for k, x in v.items()
            ):
                return False
            lo, hi = s.get("minProperties", 0), s.get("maxProperties", size)
        elif isinstance(v, list):
            prefix, size = s.get("prefixItems", []), len(v)
            subs = [prefix[i] if i < len(prefix) else s.get("items", True) for i in range(size)]
            if not all(self.valid(sub, x, depth + 1) for sub, x in zip(subs, v, strict=True)):
                return False
            if s.get("uniqueItems") and any(_eq(x, y) for i, x in enumerate(v) for y in v[i + 1 :]):
                return False
            lo, hi = s.get("minItems", 0), s.get("maxItems", size)
        elif isinstance(v, str):
            size, lo, hi = len(v), s.get("minLength", 0), s.get("maxLength", len(v))
            if "pattern" in s and not _search(s["pattern"], v):
                return False
        elif _is_type(v, "number"):
            return self.in_bounds(s, v)
        return size is None or lo <= size <= hi

    @staticmethod
    def in_bounds(s: Mapping[str, Any], v: float) -> bool:
        m = s.get("multipleOf")
        return (
            all(v >= x for x in _numbers(s.get("minimum")))
            and all(v <= x for x in _numbers(s.get("maximum")))
            and all(v > x for x in _numbers(s.get("exclusiveMinimum")))
            and all(v < x for x in _numbers(s.get("exclusiveMaximum")))
            and (not m or _multiple(v, m))
        )

    def value(self, schema: Any, depth: int) -> Any:
        self.left -= 1
        # Recursion can only come through $ref, so each hop costs extra depth to bottom out sooner.
        if isinstance(schema, Mapping) and "$ref" in schema:
            depth += 1
        s = self.resolve(schema)
        if s is False or depth > _HARD_DEPTH:
            return None
        if not isinstance(s, Mapping):
            return self.word()
        if (vals := _choices(s)) is not None:
            pick = self.rng.choice(vals)
            if not self.valid(s, pick):  # sibling keywords reject some listed values; resolve() saw one pass
                pick = self.rng.choice([v for v in vals if self.valid(s, v)])
            return _copy(pick)
        for key in ("anyOf", "oneOf"):
            if s.get(key):
                return self.branch(s, key, depth)
        inferred = next((t for t, keys in _INFER if any(k in s for k in keys)), "string")
        ts = (_types(s["type"]) if "type" in s else [inferred]) or ["string"]
        if depth >= _SOFT_DEPTH:
            t = min(ts, key=lambda x: _TYPE_COST.index(x) if x in _TYPE_COST else len(_TYPE_COST))
        else:
            t = self.rng.choice(ts)
        if t == "object":
            return self.obj(s, depth)
        if t == "array":
            return self.arr(s, depth)
        if t in ("integer", "number"):
            return self.num(s, t == "integer")
        if t == "boolean":
            return self.rng.random() < 0.5
        return None if t == "null" else self.text(s)

    def branch(self, s: Mapping[str, Any], key: str, depth: int) -> Any:
        base = {k: v for k, v in s.items() if k != key}
        options = list(s[key])
        if depth >= _SOFT_DEPTH:
            # Prefer branches that do not recurse so a recursive schema bottoms out quickly.
            options.sort(
                key=lambda b: (repr(b).count("$ref"), not isinstance(b, Mapping) or b.get("type") != "null")
            )
        else:
            self.rng.shuffle(options)
        first: Any = None
        for i, b in enumerate(options * (3 if key == "oneOf" else 1)):
            b = self.flatten(b)
            # The second round generates minimally (no optional extras), which is what usually separates
            # overlapping oneOf branches such as {"required": ["a"]} versus {"required": ["b"]}.
            sub = max(depth + 1, _SOFT_DEPTH) if i // len(options) == 1 else depth + 1
            v = self.value(_merge(base, b) if isinstance(b, Mapping) else base if b is True else b, sub)
            if key == "anyOf" or sum(self.valid(o, v) for o in s[key]) == 1:
                return v
            first = v if i == 0 else first
        return first

    def obj(self, s: Mapping[str, Any], depth: int) -> dict[str, Any]:
        props: Mapping[str, Any] = s.get("properties", {})
        required = list(s.get("required", ()))
        extra = s.get("additionalProperties", True)
        lo, hi = int(s.get("minProperties", 0)), s.get("maxProperties", math.inf)
        allowed = [k for k in props if self.resolve(props[k]) is not False]
        keys = [k for k in allowed if k in required or (depth < _SOFT_DEPTH and self.rng.random() < 0.5)]
        keys += [k for k in required if k not in keys]
        keys += [k for k in allowed if k not in keys][: max(0, lo - len(keys))]
        for w in _WORDS if extra is not False and len(keys) < lo else ():
            if len(keys) >= lo:
                break
            keys += [w] if w not in keys and w not in props else []
        while len(keys) > hi and any(k not in required for k in keys):
            keys.remove(next(k for k in reversed(keys) if k not in required))
        return {k: self.value(props.get(k, extra), depth + 1) for k in keys}

    def arr(self, s: Mapping[str, Any], depth: int) -> list[Any]:
        prefix = list(s.get("prefixItems", ()))
        items = s.get("items", True)
        lo, hi = min(int(s.get("minItems", 0)), MAX_SIZE), min(s.get("maxItems", math.inf), MAX_SIZE)
        if items is False:
            hi = min(hi, len(prefix))
        if depth >= _SOFT_DEPTH:
            n = lo
        elif prefix:
            n = max(lo, min(hi, len(prefix)))
        else:
            n = self.rng.randint(max(lo, min(1, hi)), max(lo, min(hi, 3)))
        out: list[Any] = []
        for _ in range(n * 8 if s.get("uniqueItems") else n):
            if len(out) >= n or self.left <= 0:
                break
            v = self.value(prefix[len(out)] if len(out) < len(prefix) else items, depth + 1)
            if not s.get("uniqueItems") or not any(_eq(v, o) for o in out):
                out.append(v)
        return out

    def num(self, s: Mapping[str, Any], integer: bool) -> int | float:
        rng = self.rng
        lows = _numbers(s.get("minimum"), s.get("exclusiveMinimum"))
        highs = _numbers(s.get("maximum"), s.get("exclusiveMaximum"))
        a, b = (max(lows) if lows else None), (min(highs) if highs else None)
        if a is None:
            a = 1 if b is None else min(0, b - 10)
        b = a + 99 if b is None else min(b, a + 99)
        m = s.get("multipleOf")
        first: int | float | None = None
        for _ in range(40):
            if m and not (integer and isinstance(m, float) and not m.is_integer()):
                k = rng.randint(math.ceil(a / m), max(math.ceil(a / m), math.floor(b / m)))
                v: int | float = round(k * m, 10)
            elif integer or m:
                v = rng.randint(math.ceil(a), max(math.ceil(a), math.floor(b)))
            else:
                v = round(rng.uniform(a, b), 2)
            v = int(v) if isinstance(v, float) and v.is_integer() and (integer or m) else v
            if self.in_bounds(s, v) and (not integer or _is_type(v, "integer")):
                return v
            first = v if first is None else first
        mid = (a + b) / 2
        return 0 if self.in_bounds(s, 0) else mid if not integer and self.in_bounds(s, mid) else first or 0

    def word(self) -> str:
        return self.rng.choice(_CJK) if self.rng.random() < 0.05 else self.rng.choice(_WORDS)

    def text(self, s: Mapping[str, Any]) -> str:
        lo, hi = int(s.get("minLength", 0)), int(s.get("maxLength", 1 << 30))
        lo, hi = min(lo, MAX_SIZE), min(hi, MAX_SIZE)
        pattern = s.get("pattern")
        fmt = self.formatted(s.get("format"))
        if fmt is not None and lo <= len(fmt) <= hi and (pattern is None or _search(pattern, fmt)):
            return fmt
        for _ in range(5 if pattern is not None else 0):
            cand = self.from_pattern(pattern)
            if cand is not None and lo <= len(cand) <= hi and _search(pattern, cand):
                return cand
        out = self.word()
        while len(out) < lo and self.left > 0:
            out += " " + self.word()
            self.left -= 8  # a word's worth of the answer's budget
        out = out[:hi]
        return out[:-1] + "s" if out.endswith(" ") else out

    def formatted(self, fmt: Any) -> str | None:
        if not isinstance(fmt, str):
            return None
        rng, w = self.rng, self.rng.choice(_WORDS)
        date = f"{rng.randint(2024, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        clock = f"{rng.randint(0, 23):02d}:{rng.choice((0, 15, 30, 45)):02d}:00Z"
        return {
            "date": date,
            "date-time": f"{date}T{clock}",
            "time": clock,
            "email": f"{w}@example.com",
            "uri": f"https://example.com/{w}",
            "hostname": f"{w}.example.com",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        }.get(fmt)

    def from_pattern(self, pattern: Any) -> str | None:
        """A string built from the parsed regex; the caller re-checks it, so shortcuts here are safe."""
        try:
            out: list[str] = []
            self.emit(_SRE.parse(pattern).data, out)
            return "".join(out)
        except Exception:
            return None

    def emit(self, items: Any, out: list[str]) -> None:
        rng = self.rng
        for op, av in items:
            name = op.name
            if name == "LITERAL":
                out.append(chr(av))
            elif name in ("NOT_LITERAL", "ANY"):
                out.append("b" if av == ord("a") else "a")
            elif name == "IN":
                o, x = rng.choice(av)
                if any(n.name == "NEGATE" for n, _ in av):
                    out.append("~")  # a guess; the caller's re-check decides whether it was good enough
                elif o.name in ("RANGE", "LITERAL"):
                    out.append(chr(rng.randint(*x) if o.name == "RANGE" else x))
                else:
                    self.emit([(o, x)], out)
            elif name == "CATEGORY":
                out.append(rng.choice(_CATEGORY.get(av.name.removeprefix("CATEGORY_"), "a")))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                for _ in range(rng.randint(av[0], min(av[1], av[0] + 3))):
                    self.emit(av[2], out)
            elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
                self.emit(av[-1], out)
            elif name == "BRANCH":
                self.emit(rng.choice(av[1]), out)
            elif name != "AT":
                raise ValueError(name)
