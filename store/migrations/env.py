"""Alembic's environment for icl's catalog: the migrations run on the connection that
``store.orm`` passes in ``config.attributes["connection"]``, inside its transaction (which
holds the catalog's write lock), so a whole upgrade commits or rolls back as one."""

from __future__ import annotations

from alembic import context

from store.orm import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("icl's catalog migrations run on the connection store.orm passes "
                       "(Store.init, Store.open), not from the alembic command line")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():  # joins the caller's transaction: commits nothing itself
    context.run_migrations()
