"""Settings -> the catalog: ``BACKUPD_CATALOG_URL``, else SQLite in the state directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contentflow_backupd.settings import Settings
from contentflow_backupd.wiring.storage import state_dir

if TYPE_CHECKING:  # SQLAlchemy: only in the commands that open the catalog
    from contentflow_backupd.catalog.base import Catalog


def open_catalog(settings: Settings, *, read_only: bool = False) -> Catalog:
    """The catalog, opened and migrated (the caller closes it); ``read_only``: changing nothing,
    not even creating the state directory (``catalog.sql.open_catalog``)."""
    if settings.catalog_url is None and not read_only:
        state_dir(settings)
    from contentflow_backupd.catalog.sql import open_catalog as _open

    return _open(settings.catalog_sqlalchemy_url, read_only=read_only)
