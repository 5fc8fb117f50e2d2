"""Alembic environment: runs on the connection memvault hands it.

``migrate.upgrade`` passes a connection already inside the backend's migration
transaction, so Alembic opens none of its own: every pending revision runs in
that one transaction, which commits or rolls back as a whole.
"""

from __future__ import annotations

from alembic import context

from memvault.backends.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=False,
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
