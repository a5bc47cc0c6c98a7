"""One Alembic revision per catalog schema version (see ``store.migrations``)."""
