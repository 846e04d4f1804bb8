"""Which repository and cluster a command speaks for (``Scope``), and the attribution of catalog
rows written before revision 0008 (which recorded no repository).

The repository's id is read from its ``repo.json`` (plaintext, no key needed). The catalog
remembers the id last read at each repository URL (``catalog_meta``), so that a command that
only reads the catalog (``status`` while the storage is down) still knows its scope; a
repository never read at that URL has no scope, and nothing in the catalog is reported as its.

Rows from before revision 0008 (``repository_id`` NULL) are attributed here, once per cluster,
by the rule of ``catalog/migrations/versions/0008_scope.py``: a backup whose manifest is in this
repository's listing of the cluster is this repository's; so are the runs, drills and ``migrate``
runs that name such a backup. Every other old row stays unscoped and is reported as nobody's.
"""

from __future__ import annotations

import structlog

from contentflow_backupd.catalog.base import ScopeCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import Scope
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.base import Storage

log = structlog.get_logger(__name__)

_SEEN_KEY = "repository_id_at:"
_ADOPTED_KEY = "rows_attributed:"


def resolve_scope(
    storage: Storage, catalog: ScopeCatalog, cluster: str, *, required: bool = True, read_only: bool = False
) -> Scope | None:
    """The scope of ``cluster`` in the repository at ``storage``: its id from ``repo.json``
    (remembered in the catalog), else the id the catalog remembers for this URL (with a
    warning), else the error of reading ``repo.json`` (``required``) or None. Rows of the
    cluster from before revision 0008 are attributed on the way (``adopt_old_rows``).
    ``read_only`` (commands that only read): the catalog is not written; old rows not yet
    attributed are not reported, with a warning naming ``catalog upgrade``."""
    key = _SEEN_KEY + storage.url
    try:
        repository_id = Repository.read_config(storage).repository_id
    except BackupdError as exc:
        remembered = catalog.get_meta(key)
        if remembered is None:
            if required:
                raise
            log.warning("repository_scope_unknown", url=storage.url, error=exc.message)
            return None
        log.warning(
            "repository_unreadable_scope_remembered",
            url=storage.url,
            repository_id=remembered,
            error=exc.message,
        )
        return Scope(remembered, cluster)
    scope = Scope(repository_id, cluster)
    if read_only:
        if _adoption_pending(catalog, scope):
            log.warning(
                "catalog_rows_unattributed",
                cluster=cluster,
                hint="rows from before repositories were recorded are not shown until a writing "
                "command attributes them: run `contentflow-backupd catalog upgrade`",
            )
        return scope
    if catalog.get_meta(key) != repository_id:
        catalog.set_meta(key, repository_id)
    adopt_old_rows(storage, catalog, scope)
    return scope


def _adoption_pending(catalog: ScopeCatalog, scope: Scope) -> bool:
    done_key = f"{_ADOPTED_KEY}{scope.repository_id}:{scope.cluster}"
    return catalog.get_meta(done_key) is None and catalog.has_unscoped(scope.cluster)


def adopt_old_rows(storage: Storage, catalog: ScopeCatalog, scope: Scope) -> int:
    """Attribute the cluster's backups from before revision 0008 whose manifests this repository
    holds (and the runs, drills and ``migrate`` runs naming them) to ``scope``. Done once per
    repository and cluster (marked in ``catalog_meta``): one LIST of the cluster's manifests."""
    done_key = f"{_ADOPTED_KEY}{scope.repository_id}:{scope.cluster}"
    if not _adoption_pending(catalog, scope):
        return 0
    cluster = scope.cluster
    ids = [
        bid
        for info in storage.list(layout.backups_prefix(cluster))
        if (bid := layout.backup_id_from_manifest_key(cluster, info.key))
    ]
    adopted = catalog.adopt_unscoped(scope, ids)
    catalog.set_meta(done_key, str(adopted))
    if adopted:
        log.info(
            "catalog_rows_attributed",
            repository_id=scope.repository_id,
            cluster=cluster,
            backups=adopted,
        )
    return adopted
