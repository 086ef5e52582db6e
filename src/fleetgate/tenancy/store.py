"""The tenancy database: issued keys and the usage ledger, on SQLite (one file, the single-machine default)
or PostgreSQL (several replicas). SQLAlchemy's async engine (aiosqlite, asyncpg); the schema is brought to
head by alembic on open. Never used on the request path: the key cache reloads from here when the version
row moves, and the ledger writes here in batches.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from fleetgate.tenancy import schema
from fleetgate.tenancy.keys import Budget, KeyRecord, LimitSpec, digest, new_secret
from fleetgate.tenancy.rows import UsageRow

__all__ = ["KeyStore", "UsageRow", "async_url", "open_store"]

MIGRATIONS = Path(__file__).parent / "migrations"


def async_url(url: str) -> str:
    """`sqlite:///path` and `postgresql://...` as the async drivers' URLs (given drivers are kept)."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for plain in ("postgresql:", "postgres:"):
        if url.startswith(plain):
            return "postgresql+asyncpg:" + url[len(plain) :]
    return url


def _migrate(conn: sa.Connection) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _record(row: sa.RowMapping) -> KeyRecord:
    budget = None
    if row["budget_amount"] is not None:
        budget = Budget(row["budget_amount"], row["budget_unit"], row["budget_window"])
    return KeyRecord(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        prefix=row["prefix"],
        priority=row["priority"],
        models=tuple(orjson.loads(row["models"])),
        pools=tuple(orjson.loads(row["pools"])),
        limits=LimitSpec(row["rpm"], row["tpm"], row["concurrency"], budget),
        expires_at=row["expires_at"],
        metadata=orjson.loads(row["meta"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    """Keys and usage rows in one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def close(self) -> None:
        await self.engine.dispose()

    # ---- keys ------------------------------------------------------------------------------------------
    async def _bump(self, conn: AsyncConnection) -> None:
        v = schema.store_version
        await conn.execute(v.update().where(v.c.id == 1).values(version=v.c.version + 1))

    async def version(self) -> int:
        async with self.engine.connect() as conn:
            v = schema.store_version
            return int((await conn.execute(sa.select(v.c.version).where(v.c.id == 1))).scalar_one())

    async def create(
        self,
        tenant: str,
        *,
        name: str = "",
        priority: int = 0,
        models: Sequence[str] = (),
        pools: Sequence[str] = (),
        limits: LimitSpec | None = None,
        expires_at: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        secret: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret (the only time the secret exists outside the client)."""
        secret = secret or new_secret()
        record = KeyRecord(
            id=uuid.uuid4().hex,
            tenant=tenant,
            name=name or tenant,
            prefix=secret[:10],
            priority=priority,
            models=tuple(models),
            pools=tuple(pools),
            limits=limits or LimitSpec(),
            expires_at=expires_at,
            metadata=dict(metadata or {}),
            created_at=time.time(),
        )
        async with self.engine.begin() as conn:
            await conn.execute(schema.keys.insert().values(**_row(record), digest=digest(secret)))
            await self._bump(conn)
        return record, secret

    async def rotate(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """A new secret for the key (same id, tenant and limits); the old secret stops at once."""
        secret = new_secret()
        k = schema.keys
        async with self.engine.begin() as conn:
            done = await conn.execute(
                k.update()
                .where(k.c.id == key_id, k.c.revoked_at.is_(None))
                .values(digest=digest(secret), prefix=secret[:10])
            )
            if done.rowcount == 0:
                return None
            await self._bump(conn)
            row = (await conn.execute(sa.select(k).where(k.c.id == key_id))).mappings().one()
        return _record(row), secret

    async def revoke(self, key_id: str) -> bool:
        k = schema.keys
        async with self.engine.begin() as conn:
            done = await conn.execute(
                k.update().where(k.c.id == key_id, k.c.revoked_at.is_(None)).values(revoked_at=time.time())
            )
            if done.rowcount:
                await self._bump(conn)
        return bool(done.rowcount)

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(schema.keys).where(schema.keys.c.id == key_id)))
                .mappings()
                .one_or_none()
            )
        return None if row is None else _record(row)

    async def list_keys(self, tenant: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        k = schema.keys
        query = sa.select(k).order_by(k.c.created_at)
        if tenant is not None:
            query = query.where(k.c.tenant == tenant)
        if not include_revoked:
            query = query.where(k.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(r) for r in rows]

    async def snapshot(self) -> tuple[int, dict[bytes, KeyRecord]]:
        """Every live key by digest, with the version it was read at (one transaction)."""
        k, v = schema.keys, schema.store_version
        async with self.engine.begin() as conn:
            version = int((await conn.execute(sa.select(v.c.version).where(v.c.id == 1))).scalar_one())
            rows = (await conn.execute(sa.select(k).where(k.c.revoked_at.is_(None)))).mappings().all()
        return version, {bytes(r["digest"]): _record(r) for r in rows}

    # ---- usage ------------------------------------------------------------------------------------------
    async def write_usage(self, rows: Iterable[UsageRow]) -> int:
        values = [r.values() for r in rows]
        if not values:
            return 0
        async with self.engine.begin() as conn:
            await conn.execute(schema.usage.insert(), values)
        return len(values)

    async def usage_summary(
        self, since_day: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Per tenant, model and day: requests, prompt (cached apart), output tokens, cost, cache hits."""
        u = schema.usage
        query = (
            sa.select(
                u.c.tenant,
                u.c.model,
                u.c.day,
                sa.func.count().label("requests"),
                sa.func.sum(u.c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(u.c.cached_tokens).label("cached_tokens"),
                sa.func.sum(u.c.output_tokens).label("output_tokens"),
                sa.func.sum(u.c.cost).label("cost"),
                sa.func.sum(sa.case((u.c.cache_hit, 1), else_=0)).label("cache_hits"),
            )
            .group_by(u.c.tenant, u.c.model, u.c.day)
            .order_by(u.c.day, u.c.tenant, u.c.model)
        )
        if since_day is not None:
            query = query.where(u.c.day >= since_day)
        if tenant is not None:
            query = query.where(u.c.tenant == tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            {
                "tenant": r["tenant"],
                "model": r["model"],
                "day": r["day"],
                "requests": int(r["requests"]),
                "prompt_tokens": int(r["prompt_tokens"] or 0),
                "cached_tokens": int(r["cached_tokens"] or 0),
                "output_tokens": int(r["output_tokens"] or 0),
                "cost": float(r["cost"] or 0.0),
                "cache_hits": int(r["cache_hits"] or 0),
            }
            for r in rows
        ]

    async def spent(self, scope_column: str, value: str, since: float, unit: str) -> float:
        """What a key or tenant spent since `since` (tokens or cost): seeds budgets after a restart."""
        u = schema.usage
        amount = u.c.cost if unit == "usd" else u.c.prompt_tokens + u.c.output_tokens
        query = sa.select(sa.func.sum(amount)).where(u.c[scope_column] == value, u.c.at >= since)
        async with self.engine.connect() as conn:
            return float((await conn.execute(query)).scalar_one() or 0.0)


def _row(record: KeyRecord) -> dict[str, Any]:
    b = record.limits.budget
    return {
        "id": record.id,
        "prefix": record.prefix,
        "tenant": record.tenant,
        "name": record.name,
        "priority": record.priority,
        "models": orjson.dumps(list(record.models)).decode(),
        "pools": orjson.dumps(list(record.pools)).decode(),
        "rpm": record.limits.rpm,
        "tpm": record.limits.tpm,
        "concurrency": record.limits.concurrency,
        "budget_amount": None if b is None else b.amount,
        "budget_unit": None if b is None else b.unit,
        "budget_window": None if b is None else b.window,
        "expires_at": record.expires_at,
        "meta": orjson.dumps(record.metadata).decode(),
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: the gateway reads while `fleetgate keys` writes; busy_timeout waits out the other's lock.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


async def open_store(url: str) -> KeyStore:
    """Connect and bring the schema to head (alembic; a no-op when it is there already)."""
    full = async_url(url)
    if full.startswith("sqlite+aiosqlite:///"):
        Path(full[len("sqlite+aiosqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(full, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(_migrate)
    return KeyStore(engine)
