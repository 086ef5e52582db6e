from __future__ import annotations

import copy
import datetime
import json
import random
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError

from fleetgate.sim.jsongen import MAX_SIZE, MAX_VALUES, generate, malformed

SEEDS = range(60)

SEARCH = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "city": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["query"],
}
ITINERARY = {
    "type": "object",
    "properties": {"segments": {"type": "array", "items": {"type": "integer"}}, "days": {"type": "integer"}},
    "required": ["segments", "days"],
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
BOOKING = {
    "type": "object",
    "properties": {
        "hotel": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 2, "maxLength": 40},
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    },
                    "required": ["city", "zip"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "address"],
        },
        "guests": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "check_in": {"type": "string", "format": "date"},
        "room": {"enum": ["single", "double", "suite"]},
        "smoking": {"type": "boolean"},
        "notes": {"type": ["string", "null"]},
        "budget": {"type": "number", "exclusiveMinimum": 0, "maximum": 500},
    },
    "required": ["hotel", "guests", "check_in", "room"],
    "additionalProperties": False,
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name", "children"],
        }
    },
    "$ref": "#/$defs/node",
}
LINKED = {
    "definitions": {
        "item": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "next": {"anyOf": [{"$ref": "#/definitions/item"}, {"type": "null"}]},
            },
            "required": ["value", "next"],
        }
    },
    "$ref": "#/definitions/item",
}
SELF_ROOT = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "sub": {"$ref": "#"}},
    "required": ["label", "sub"],
    "minProperties": 1,
}

SELF_OPTIONAL = {
    "type": "object",
    "properties": {"sub": {"$ref": "#"}, "v": {"type": "integer"}},
    "required": ["v"],
}

CASES: list[Any] = [
    SEARCH,
    ITINERARY,
    WEATHER,
    BOOKING,
    TREE,
    LINKED,
    SELF_OPTIONAL,
    {"type": "array", "items": {"type": "integer"}, "minItems": 5, "maxItems": 6},
    {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    {"type": "array", "prefixItems": [{"const": 1}], "items": {"type": "boolean"}, "minItems": 3},
    {"type": "string", "enum": ["economy", "business"]},
    {"const": {"nested": [1, 2]}},
    {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string", "maxLength": 4}]},
    {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
    {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
    },
    {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "car"}, "seats": {"type": "integer"}}},
            {"type": "object", "properties": {"kind": {"const": "bus"}}, "required": ["kind"]},
        ],
        "required": ["kind"],
    },
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}, "required": ["a"]},
            {"properties": {"a": {"maximum": 4}, "b": {"type": "string"}}, "required": ["b"]},
        ]
    },
    {"allOf": [{"type": ["number", "string"]}, {"type": "integer"}], "minimum": 5, "maximum": 5},
    {
        "allOf": [
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                "required": ["a"],
            },
            {"properties": {"a": {"minimum": 0}}, "additionalProperties": False},
        ]
    },
    {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"additionalProperties": {"type": "integer"}}]},
    {"allOf": [{"enum": [1, 2, 3]}, {"enum": [2, 3, 4]}]},
    {"type": "string", "enum": ["a", 1, None, True]},
    {
        "type": "object",
        "properties": {"x": {"const": 3, "type": "string"}, "y": {"const": 3, "type": "integer"}},
    },
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "number", "minimum": 0.001, "maximum": 0.002},
    {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
    {"type": "integer", "minimum": 10, "maximum": 30, "multipleOf": 7},
    {"type": "integer", "multipleOf": 0.5},
    {"type": "number", "multipleOf": 0.1, "minimum": -5, "maximum": 5},
    {"type": "number", "multipleOf": 0.25, "exclusiveMaximum": -100},
    {"type": "integer", "minimum": 1_000_000},
    {"type": "string", "minLength": 30},
    {"type": "string", "maxLength": 3},
    {"type": "string", "minLength": 5, "maxLength": 5},
    {"type": "string", "pattern": "^[A-Z]{3}$"},
    {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    {"type": "string", "pattern": "^(LH|BA|AF)[0-9]{2,4}$"},
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2, "maxProperties": 3},
    {
        "type": "object",
        "properties": {k: {"type": "integer"} for k in "abcdef"},
        "required": ["a"],
        "maxProperties": 2,
    },
    {"type": "object", "properties": {"a": {}, "b": {}}, "additionalProperties": False, "minProperties": 2},
    {"properties": {"x": {"type": "integer"}}, "required": ["x"]},
    {"items": {"type": "boolean"}, "minItems": 1},
    {"minimum": 7},
    {},
    True,
]


def _validator(schema: Any) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


@pytest.mark.parametrize("schema", CASES, ids=lambda s: json.dumps(s, ensure_ascii=False)[:60])
def test_output_validates(schema: Any) -> None:
    validator = _validator(schema)
    for seed in SEEDS:
        value = generate(schema, random.Random(seed))
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (seed, value, errors)
        json.dumps(value)


@pytest.mark.parametrize("schema", CASES, ids=lambda s: json.dumps(s, ensure_ascii=False)[:60])
def test_deterministic_per_seed_and_schema_untouched(schema: Any) -> None:
    before = copy.deepcopy(schema)
    for seed in range(10):
        assert generate(schema, random.Random(seed)) == generate(schema, random.Random(seed))
    assert schema == before


def test_seeds_vary_output() -> None:
    outputs = {json.dumps(generate(BOOKING, random.Random(seed)), sort_keys=True) for seed in range(20)}
    assert len(outputs) > 10


def test_shared_rng_advances() -> None:
    rng = random.Random(5)
    first, second = generate(SEARCH, rng), generate(SEARCH, rng)
    rng = random.Random(5)
    assert [generate(SEARCH, rng), generate(SEARCH, rng)] == [first, second]


def test_none_and_true_mean_any_short_string() -> None:
    schemas: list[Any] = [None, True, {}]
    for schema in schemas:
        value = generate(schema, random.Random(1))
        assert isinstance(value, str)
        assert 0 < len(value) <= 12


def test_false_schema_gives_none() -> None:
    assert generate(False, random.Random(0)) is None


def test_const_is_a_copy() -> None:
    schema: dict[str, Any] = {"const": {"nested": [1, 2]}}
    value = generate(schema, random.Random(0))
    value["nested"].append(3)
    assert schema == {"const": {"nested": [1, 2]}}


def test_required_always_optional_about_half() -> None:
    included = 0
    for seed in range(400):
        value = generate(SEARCH, random.Random(seed))
        assert isinstance(value["query"], str)
        included += "city" in value
    assert 120 < included < 280


def test_values_small_and_plausible() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "n": {"type": "integer"},
            "x": {"type": "number"},
        },
        "required": ["tags", "n", "x"],
    }
    for seed in range(100):
        value = generate(schema, random.Random(seed))
        assert 1 <= len(value["tags"]) <= 3
        assert all(0 < len(t) <= 12 and "\n" not in t for t in value["tags"])
        assert abs(value["n"]) <= 1000
        assert abs(value["x"]) <= 1000


def test_recursion_stays_shallow() -> None:
    for schema in (TREE, LINKED, SELF_OPTIONAL):
        for seed in SEEDS:
            value = generate(schema, random.Random(seed))
            assert _depth(value) <= 12, (seed, value)
            assert len(json.dumps(value)) < 2000, (seed, value)
            assert not list(_validator(schema).iter_errors(value))


def test_required_self_reference_terminates() -> None:
    # No finite instance exists; the generator must still return instead of recursing without end.
    value = generate(SELF_ROOT, random.Random(0))
    assert 10 < _depth(value) < 100


def test_ref_cycle_without_descent_terminates() -> None:
    schema = {
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
        "$ref": "#/$defs/a",
    }
    assert generate(schema, random.Random(0)) is not None


def test_formats() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        datetime.date.fromisoformat(generate({"type": "string", "format": "date"}, rng))
        stamp = generate({"type": "string", "format": "date-time"}, rng)
        assert datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo is not None
        assert uuid.UUID(generate({"type": "string", "format": "uuid"}, rng)).version == 4
        assert re.fullmatch(r"[a-z]+@example\.com", generate({"type": "string", "format": "email"}, rng))
        assert generate({"type": "string", "format": "uri"}, rng).startswith("https://")


def test_unsatisfiable_pattern_still_gives_a_string() -> None:
    for pattern in (r"^\p{L}+$", "^(?=x)y$", "^(a)\\1$"):
        assert isinstance(generate({"type": "string", "pattern": pattern}, random.Random(0)), str)


def test_oneof_picks_each_branch() -> None:
    schema = {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}
    kinds = {type(generate(schema, random.Random(seed))).__name__ for seed in range(40)}
    assert kinds == {"str", "int", "NoneType"}


# ---- property test over random schemas ------------------------------------------------------------

_NAMES = ("city", "query", "days", "limit", "tags", "hotel")
_PATTERNS = ["^[a-z]{2,5}$", "^[A-Z]{3}$", r"^\d+$", "^(yes|no)$", "^[a-f0-9]{4}-x$"]
_FORMATS = ["date", "date-time", "email", "uri", "uuid"]


@st.composite
def _integers(draw: st.DrawFn, number: bool = False) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "number" if number else "integer"}
    lo = draw(st.none() | st.integers(-1000, 1000))
    width = draw(st.integers(8, 200))
    if lo is not None:
        s["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = lo
    if draw(st.booleans()):
        hi = (lo if lo is not None else draw(st.integers(-1000, 1000))) + width
        s["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = hi
    multiple = draw(st.sampled_from([None, 2, 3, 0.5, 0.25, 0.1] if number else [None, 2, 3]))
    if multiple is not None:
        s["multipleOf"] = multiple
    return s


@st.composite
def _strings(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["plain", "format", "pattern"]))
    if kind == "format":
        return {"type": "string", "format": draw(st.sampled_from(_FORMATS))}
    if kind == "pattern":
        return {"type": "string", "pattern": draw(st.sampled_from(_PATTERNS))}
    lo = draw(st.integers(0, 25))
    s: dict[str, Any] = {"type": "string", "minLength": lo}
    if draw(st.booleans()):
        s["maxLength"] = lo + draw(st.integers(0, 10))
    return s


_SCALARS = st.none() | st.booleans() | st.integers(-50, 50) | st.text("abcxyz", max_size=4)
_LEAVES = st.one_of(
    _integers(),
    _integers(number=True),
    _strings(),
    st.sampled_from([{"type": "boolean"}, {"type": "null"}, {}, {"type": ["string", "null"]}]),
    st.lists(_SCALARS, min_size=1, max_size=4, unique_by=json.dumps).map(lambda v: {"enum": v}),
    _SCALARS.map(lambda v: {"const": v}),
)
# One leaf per JSON type, so the branches of a generated oneOf can never match the same value.
_BY_TYPE = {
    "integer": _integers(),
    "string": _strings(),
    "boolean": st.just({"type": "boolean"}),
    "null": st.just({"type": "null"}),
    "array": st.just({"type": "array", "items": {"type": "integer"}}),
}


@st.composite
def _objects(
    draw: st.DrawFn, children: st.SearchStrategy[Any], names: tuple[str, ...] = _NAMES, plain: bool = False
) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(names), unique=True))
    props = {n: draw(children) for n in keys}
    required = [n for n in keys if draw(st.booleans())]
    s: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if plain:
        return s
    extra = draw(st.sampled_from(["absent", "true", "false", "schema"]))
    if extra != "absent":
        s["additionalProperties"] = {"true": True, "false": False}.get(extra) or draw(_LEAVES)
    if draw(st.booleans()):
        s["minProperties"] = draw(st.integers(0, len(props) if extra == "false" else len(props) + 2))
    if draw(st.booleans()):
        s["maxProperties"] = max(len(required), s.get("minProperties", 0)) + draw(st.integers(0, 2))
    return s


@st.composite
def _arrays(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "array", "items": draw(children)}
    lo = draw(st.integers(0, 4))
    s["minItems"] = lo
    if draw(st.booleans()):
        s["maxItems"] = lo + draw(st.integers(0, 3))
    if lo <= 1 and draw(st.booleans()):
        s["uniqueItems"] = True
    if draw(st.booleans()):
        s["prefixItems"] = draw(st.lists(children, min_size=1, max_size=3))
    return s


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        _objects(children),
        _arrays(children),
        st.lists(children, min_size=1, max_size=3).map(lambda b: {"anyOf": b}),
        st.lists(st.sampled_from(sorted(_BY_TYPE)), min_size=2, max_size=4, unique=True).flatmap(
            lambda ts: st.tuples(*(_BY_TYPE[t] for t in ts)).map(lambda b: {"oneOf": list(b)})
        ),
        # Disjoint names and no counting keywords keep the conjunction satisfiable.
        st.tuples(_objects(children, _NAMES[:3], True), _objects(children, _NAMES[3:], True)).map(
            lambda p: {"allOf": list(p)}
        ),
    )


_SCHEMAS = st.recursive(_LEAVES, _extend, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_SCHEMAS, via_ref=st.booleans(), seed=st.integers(0, 2**32))
def test_random_schemas_validate(schema: Any, via_ref: bool, seed: int) -> None:
    if via_ref:
        schema = {
            "$defs": {"inner": schema},
            "type": "array",
            "items": {"$ref": "#/$defs/inner"},
            "minItems": 1,
        }
    validator = _validator(schema)
    for offset in range(3):
        value = generate(schema, random.Random(seed + offset))
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (value, errors)


@pytest.mark.parametrize("schema", CASES, ids=lambda s: json.dumps(s, ensure_ascii=False)[:60])
def test_well_formed_schemas_are_not_malformed(schema: Any) -> None:
    assert malformed(schema) is None


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "object", "properties": None}, "properties"),
        ({"properties": {"a": {"type": "string", "minLength": "3"}}}, "properties.a.minLength"),
        ({"type": "object", "required": 5}, "required"),
        ({"type": "array", "items": 3}, "items"),
        ({"anyOf": [{"type": "string"}, 7]}, "anyOf.1"),
        ({"oneOf": []}, "oneOf"),
        ({"enum": "abc"}, "enum"),
        ({"type": ["string", 3]}, "type"),
        ({"type": "strin"}, "type"),
        ({"type": "number", "multipleOf": 0}, "multipleOf"),
        ({"maxItems": True}, "maxItems"),
        ({"$defs": {"x": {"pattern": 5}}, "$ref": "#/$defs/x"}, "$defs.x.pattern"),
        ([], "(root)"),
    ],
)
def test_malformed_schemas_are_named_where_the_metaschema_agrees(schema: Any, where: str) -> None:
    """A client's schema that breaks the metaschema is reported (the simulator answers 400 instead of
    crashing on it, found by tests/test_gateway_schemathesis.py with `properties: null`)."""
    assert malformed(schema) == where
    with pytest.raises(SchemaError):
        Draft202012Validator.check_schema(schema)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_SCHEMAS)
def test_random_well_formed_schemas_are_not_malformed(schema: Any) -> None:
    assert malformed(schema) is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 10**9},
        {"type": "array", "minItems": 10**9, "items": {"type": "integer"}},
    ],
)
def test_huge_minimums_are_cut_like_max_tokens_cuts_an_answer(schema: Any) -> None:
    """A well-formed schema may ask for a billion characters; the simulator built them all (a hang). A model's
    answer is cut at max_tokens long before, so the generator stops at MAX_SIZE, and at MAX_VALUES in all."""
    assert len(generate(schema, random.Random(1))) == MAX_SIZE
    nested = generate({"type": "array", "minItems": 10**6, "items": schema}, random.Random(1))
    assert sum(len(v) for v in nested) <= MAX_VALUES * 8
