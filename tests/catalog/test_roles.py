"""``SqlCatalog`` fills every role of the catalog contract (``catalog/base.py``).

mypy checks the same in the package (``catalog/sql.py``: ``_conforms``, one assignment per role);
this test checks it at run time, method by method and signature by signature, so that a role
method added to a protocol but not to ``SqlCatalog`` (or spelled differently) fails here too."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from contentflow_backupd.catalog import base
from contentflow_backupd.catalog.base import ROLES, Catalog
from contentflow_backupd.catalog.sql import SqlCatalog


def members(protocol: type[Any]) -> set[str]:
    """The names a protocol declares itself (not those of the roles it inherits)."""
    return {name for name in vars(protocol) if not name.startswith("_")}


def every_member(protocol: type[Any]) -> set[str]:
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls is not object and getattr(cls, "_is_protocol", False):
            names |= members(cls)
    return names


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.__name__)
def test_sql_catalog_has_every_method_of_the_role_with_its_signature(role: type[Any]) -> None:
    assert members(role), f"{role.__name__} declares nothing"
    for name in members(role):
        declared = inspect.getattr_static(role, name)
        implemented = inspect.getattr_static(SqlCatalog, name, None)
        assert implemented is not None, f"SqlCatalog lacks {role.__name__}.{name}"
        if isinstance(declared, property):
            assert isinstance(implemented, property), f"SqlCatalog.{name} is not a property"
            continue
        want = inspect.signature(declared)
        got = inspect.signature(implemented)
        assert list(got.parameters) == list(want.parameters), f"{name}: {got} vs {want}"
        for param in want.parameters.values():
            other = got.parameters[param.name]
            assert (other.kind, other.default) == (param.kind, param.default), f"{name}({param.name})"


def test_catalog_is_exactly_the_union_of_the_roles() -> None:
    """``Catalog`` adds nothing of its own, and no two roles declare the same method."""
    assert members(Catalog) == set()
    assert set(Catalog.__mro__) >= set(ROLES)
    declared = [name for role in ROLES for name in members(role)]
    assert len(declared) == len(set(declared)), "a method belongs to two roles"
    assert every_member(Catalog) == set(declared)


def test_the_named_combinations_are_made_of_roles_only() -> None:
    """The protocols that are not roles (``Catalog``, ``BackupJobCatalog`` ...) only combine
    roles: a use case never gets a method that no role's contract describes."""
    protocols = [
        value
        for value in vars(base).values()
        if isinstance(value, type)
        and getattr(value, "_is_protocol", False)
        and value.__module__ == base.__name__
    ]
    combinations = [p for p in protocols if p not in ROLES]
    assert Catalog in combinations
    for protocol in combinations:
        assert members(protocol) == set(), protocol.__name__
        assert every_member(protocol) <= every_member(Catalog), protocol.__name__


def test_the_fleet_role_is_a_role_with_the_methods_of_step_8() -> None:
    """docs/design/fleet.md, step 8: the daemon's wiring is built against exactly these."""
    assert base.FleetCatalog in ROLES
    assert members(base.FleetCatalog) == {
        "announce",
        "heartbeat_and_renew",
        "claim",
        "release",
        "leases",
        "live_daemons",
        "reap_runs_of",
        "start_run_fenced",
    }
