"""The Alembic environment of the catalog, run programmatically (there is no alembic.ini).

``SqlCatalog.migrate`` builds the ``Config`` in code and hands over a connection that is already
inside a transaction holding the migration lock, in ``config.attributes["connection"]``; the
revisions run in that transaction. This file never configures logging: the daemon owns it.

For development, a new revision is made with ``contentflow_backupd.catalog.sql.alembic_config``::

    from alembic import command
    from contentflow_backupd.catalog.sql import alembic_config
    command.revision(alembic_config(url="sqlite:///dev.db"), "add wal_segments", autogenerate=True)
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from contentflow_backupd.catalog.models import VERSION_TABLE, Base

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things: autogenerate batch operations
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline(url: str) -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given: Connection | None = config.attributes.get("connection")
if given is not None:
    run_on(given)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("catalog migrations need a connection or sqlalchemy.url")
    if context.is_offline_mode():
        run_offline(url)
    else:
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine.begin() as connection:
                run_on(connection)
        finally:
            engine.dispose()
