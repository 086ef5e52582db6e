"""Alembic's environment: always handed a live connection by `fleetgate.tenancy.store.migrate`."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode lets later migrations alter columns on SQLite (which has no ALTER COLUMN).
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
