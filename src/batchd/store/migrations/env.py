"""Alembic environment: migrations always run on a connection handed in by batchd.store.migrate."""

from __future__ import annotations

from alembic import context

from batchd.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - batchd always passes a connection
    raise RuntimeError("batchd migrations run through batchd.store.migrate, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
