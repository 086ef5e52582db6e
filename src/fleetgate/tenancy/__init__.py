"""Tenancy: API keys issued at run time, limits and budgets per key and tenant, the usage ledger and the
response cache.

Nothing here reads a database on the request path. Keys live in memory (`keycache`), refreshed when the
store's version row changes; limits and budgets are counted in memory (one replica) or in Redis with one
atomic script per admission (`limiter`); usage rows are buffered and written in batches (`ledger`).

Modules: `keys` (records and secrets), `schema` (the tables), `store` (the database: keys and usage rows),
`migrations` (alembic), `keycache`, `limiter` (memory and Redis), `batcher` (Redis script calls sharing
pipelines), `ledger`, `runtime` (what the gateway holds), `commands` (the `keys` and `usage` CLI).
"""
