"""Alembic's environment: run on the connection the manager hands over (db.upgrade)."""

from __future__ import annotations

from alembic import context

from hvds.manager.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
