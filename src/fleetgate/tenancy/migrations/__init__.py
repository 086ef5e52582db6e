"""Alembic migrations for the tenancy store; `store.migrate` runs them to head on every start (idempotent)."""
