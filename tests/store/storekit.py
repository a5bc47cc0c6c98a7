"""What the store's schema tests share."""

from __future__ import annotations

import sqlalchemy as sa


def schema_differences(url: str) -> list:
    """What Alembic's autogenerate finds between the database at ``url`` and the models
    (types and server defaults compared too): what a new revision would have to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from store.orm import Base

    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            context = MigrationContext.configure(con, opts={"compare_type": True,
                                                            "compare_server_default": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
