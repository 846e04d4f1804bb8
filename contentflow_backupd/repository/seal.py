"""``repo.seal``: an encrypted record of the exact bytes of ``repo.json`` and of every key file.

``repo.json`` is plaintext and a key file (``keys/<kek-id>.json``) authenticates only what its
wrapped master key covers, so a changed description (a creation time, a chunker parameter, the
KDF parameters of a key this process cannot open) would otherwise go unnoticed. The seal holds the
SHA-256 of each of these files; it is sealed like every object (AES-256-GCM under its own name),
written by ``init`` and rewritten by every key operation (``keys add``, ``keys remove``,
``keys rotate``). ``verify --all`` compares the files with it. A repository created before the
seal existed gets one from its first ``verify --all`` (reported as a warning)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from contentflow_backupd.errors import BackupdError, ObjectNotFound
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.keys import KEYSET_PREFIX, USED_PREFIX
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.base import Storage

SEAL_KEY = "repo.seal"
SEAL_FORMAT = 1


def sealed_files(storage: Storage) -> dict[str, str]:
    """Key -> SHA-256 of ``repo.json`` and of every key file (not keyset versions, which are
    authenticated themselves, nor the last-use marks, which describe nothing)."""
    out: dict[str, str] = {}
    keys = [layout.REPO_FILE] + [
        info.key
        for info in storage.list(layout.KEYS_PREFIX)
        if not info.key.startswith((KEYSET_PREFIX, USED_PREFIX)) and info.key.endswith(".json")
    ]
    for key in keys:
        try:
            out[key] = hashlib.sha256(storage.get(key)).hexdigest()
        except ObjectNotFound:
            continue
    return out


def write_seal(repo: Repository) -> None:
    """Record the current ``repo.json`` and key files in ``repo.seal`` (nothing is written when
    the seal already records them: a data key rotation rewrites no object)."""
    data = json.dumps({"format": SEAL_FORMAT, "files": sealed_files(repo.storage)}, sort_keys=True).encode()
    try:
        if repo.get_object(SEAL_KEY) == data:
            return
    except BackupdError:
        pass  # missing or unreadable: written anew
    repo.put_object(SEAL_KEY, data)


@dataclass
class SealCheck:
    present: bool
    problems: dict[str, str] = field(default_factory=dict)
    """Key -> what differs from the seal."""


def check_seal(repo: Repository) -> SealCheck:
    """Compare ``repo.json`` and the key files with ``repo.seal``. A missing seal is reported as
    ``present=False`` (a repository from before the seal); an unreadable one is a problem."""
    try:
        raw = repo.get_object(SEAL_KEY)
    except ObjectNotFound:
        return SealCheck(present=False)
    except BackupdError as exc:
        return SealCheck(present=True, problems={SEAL_KEY: f"unreadable: {exc.message}"})
    try:
        doc = json.loads(raw)
        expected = {str(k): str(v) for k, v in doc["files"].items()}
        if doc.get("format") != SEAL_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return SealCheck(present=True, problems={SEAL_KEY: f"malformed: {exc}"})
    actual = sealed_files(repo.storage)
    check = SealCheck(present=True)
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            check.problems[key] = "missing (the seal records it)"
        elif key not in expected:
            check.problems[key] = "not recorded in the seal (added by hand?)"
        elif actual[key] != expected[key]:
            check.problems[key] = "its content differs from the sealed one (altered)"
    return check
