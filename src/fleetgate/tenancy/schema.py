"""The tables (SQLAlchemy Core): the same definitions on SQLite and PostgreSQL. Migrations in `migrations/`
create them; this module only describes them for queries."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["keys", "metadata", "store_version", "usage"]

metadata = MetaData()

# One row (id 1) whose version grows with every change to `keys`: replicas poll it to know when to reload.
store_version = Table(
    "store_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
)

keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("digest", LargeBinary(32), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("tenant", String(128), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("models", Text, nullable=False),  # JSON list
    Column("pools", Text, nullable=False),  # JSON list
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("concurrency", Integer),
    Column("budget_amount", Float),
    Column("budget_unit", String(8)),
    Column("budget_window", String(8)),
    Column("expires_at", Float),
    Column("meta", Text, nullable=False),  # JSON object
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

usage = Table(
    "usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),  # Unix seconds when the answer ended
    Column("day", String(10), nullable=False, index=True),  # UTC date, for rollups
    Column("request_id", String(128), nullable=False),
    Column("tenant", String(128), nullable=False, index=True),
    Column("key_id", String(32)),
    Column("model", String(256), nullable=False),
    Column("pool", String(128), nullable=False),
    Column("endpoint", String(64), nullable=False),  # the route: chat, completions, ...
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("cache_hit", Boolean, nullable=False),
    Column("cost", Float, nullable=False),
)
