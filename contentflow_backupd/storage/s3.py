"""Storage in an S3 bucket (AWS S3 or an S3-compatible store). The only module that uses boto3.

Credentials come from the standard AWS chain (environment, profile, container or instance role);
this module never sees them. botocore retries are off (``total_max_attempts=1``):
:mod:`contentflow_backupd.storage.retry` does the retrying. Every botocore error is translated in
one place, :meth:`S3Storage._errors`; messages name the bucket and key, never credentials.

Writes:

- Objects smaller than ``multipart_threshold`` go up in one ``PutObject`` with ``Content-MD5``;
  the returned ETag must equal the MD5 of the body, else ``IncompleteWrite`` (an acknowledged put
  that did not store what was sent). This assumes SSE-S3 or no encryption: SSE-KMS and SSE-C
  ETags are not MD5s and are not supported yet.
- Larger objects use multipart upload (each part with ``Content-MD5`` and its ETag checked); any
  failure aborts the upload. After completion a ``HeadObject`` must report the number of bytes
  sent, else ``IncompleteWrite``. Uploads orphaned by a crash are left to the bucket's
  ``AbortIncompleteMultipartUpload`` lifecycle rule.
- ``if_absent=True`` sends ``If-None-Match: *`` (S3 conditional writes, on ``PutObject`` and
  ``CompleteMultipartUpload``); ``412 PreconditionFailed`` becomes ``ObjectExists``. AWS S3
  honours it since 2024-08. moto's server (5.x) honours it too, on both calls: it answers
  ``412 PreconditionFailed`` when the key exists (checked in tests/storage). For stores that
  ignore the header pass ``conditional_writes=False``: ``if_absent`` then does ``HeadObject``
  and ``PutObject`` (racy) and ``features.create_only`` is False.

Request checksums are only sent when an operation requires them (``when_required``): the
``Content-MD5`` above already protects the body, and many S3-compatible stores reject the newer
trailing-checksum encoding.

Object Lock (``object_lock="GOVERNANCE"|"COMPLIANCE"`` with a ``retain_until(key)`` rule; the
bucket must have Object Lock enabled, which makes it versioned):

- ``put`` sends ``ObjectLockMode`` and ``ObjectLockRetainUntilDate`` (on ``PutObject`` or
  ``CreateMultipartUpload``) for every key the rule gives a date for; other keys (``repo.json``,
  ``keys/``) are written without a lock and stay replaceable.
- ``delete`` removes every version and delete marker of the key (a plain ``DeleteObject`` would
  only hide the data behind a delete marker). A version still under lock makes S3 answer
  ``AccessDenied``; when ``HeadObject`` then shows a retain-until date in the future or a legal
  hold, ``ObjectLocked`` is raised (not retryable), else ``StorageAccessDenied``.
- ``object_lock_status(storage)`` reports whether the bucket has Object Lock enabled
  (``GetObjectLockConfiguration``), for ``check``.

``as_of=T`` makes a read-only view of the bucket as it was at ``T``: ``list``, ``open`` and
``stat`` see, for each key, the version that was current then (``ListObjectVersions``, read once
on first use). For restoring after objects were overwritten or hidden by delete markers; ``put``
and ``delete`` raise ``StorageError``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypedDict

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.loaders import Loader, create_loader

from contentflow_backupd.errors import (
    IncompleteWrite,
    ObjectExists,
    ObjectLocked,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
    StorageUnavailable,
)
from contentflow_backupd.storage import s3_versions
from contentflow_backupd.storage.base import ObjectInfo, StorageFeatures, read_up_to, validate_key

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_TRANSIENT = frozenset(
    {
        "BandwidthLimitExceeded",
        "ConditionalRequestConflict",
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestThrottled",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
    }
)
_CREDENTIALS_HINT = (
    "check the S3 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the "
    "instance role) and that the bucket policy allows this operation"
)
_CA_HINT = (
    "if the endpoint uses a private certificate authority, set BACKUPD_S3__CA_BUNDLE to its "
    "PEM bundle; check that endpoint_url uses the right scheme and port"
)


_loader_lock = threading.Lock()
_shared_loader: Loader | None = None


def _new_session() -> boto3.session.Session:
    """A fresh session (credentials resolved anew) sharing one loader of botocore's API models.

    Loading and parsing the S3 model is most of the ~150 ms a new client costs; the loader
    caches it, so later storages (and tests) get a client in a few milliseconds.
    """
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = create_loader()
        core = botocore.session.Session()
        core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(botocore_session=core)


LockMode = Literal["GOVERNANCE", "COMPLIANCE"]


class _IfNoneMatch(TypedDict, total=False):
    IfNoneMatch: str


class _VersionArg(TypedDict, total=False):
    VersionId: str


def _version_of(version_id: str | None) -> _VersionArg:
    return {"VersionId": version_id} if version_id else {}


class _LockArgs(TypedDict, total=False):
    ObjectLockMode: LockMode
    ObjectLockRetainUntilDate: datetime


def _if_none(conditional: bool) -> _IfNoneMatch:
    """Extra arguments of a conditional create (``If-None-Match: *``)."""
    return {"IfNoneMatch": "*"} if conditional else {}


def _md5(data: bytes) -> Any:
    return hashlib.md5(data, usedforsecurity=False)


class _BodyReader(io.RawIOBase):
    """A ``get_object`` body whose read errors come out as storage errors."""

    def __init__(self, body: StreamingBody, errors: Callable[[], AbstractContextManager[None]]) -> None:
        self._body = body
        self._errors = errors

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        with self._errors():
            data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        with self._errors():
            return self._body.read()

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Storage:
    """Objects under ``prefix`` in ``bucket``. See the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        force_path_style: bool = False,
        ca_bundle: str | None = None,
        multipart_threshold: int = 16 * MiB,
        part_size: int = 16 * MiB,
        max_concurrency: int = 8,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        conditional_writes: bool = True,
        object_lock: LockMode | None = None,
        retain_until: Callable[[str], datetime | None] | None = None,
        as_of: datetime | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if multipart_threshold < 1 or max_concurrency < 1:
            raise ValueError("multipart_threshold and max_concurrency must be positive")
        self._bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._threshold = multipart_threshold
        self._part_size = part_size
        self._conditional = conditional_writes
        if object_lock is not None and retain_until is None:
            raise ValueError("object_lock needs a retain_until rule")
        self._lock_mode = object_lock
        self._retain_until = retain_until
        self._as_of = as_of if as_of is None or as_of.tzinfo else as_of.replace(tzinfo=UTC)
        self._versions: dict[str, s3_versions.Version] | None = None
        self._versions_lock = threading.Lock()
        self._features = StorageFeatures(
            atomic_put=True,
            ranged_get=True,
            create_only=conditional_writes,
            object_lock=object_lock is not None,
            max_concurrency=max_concurrency,
            local_path=False,
            lock_report=True,
        )
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, max_concurrency),
            s3={"addressing_style": "path"} if force_path_style else None,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with self._errors(None):
            self._client: S3Client = _new_session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                verify=ca_bundle or None,
                config=config,
            )

    @property
    def features(self) -> StorageFeatures:
        return self._features

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix.rstrip('/')}".rstrip("/")

    @property
    def object_lock_mode(self) -> LockMode | None:
        """The mode objects are locked with (None: no lock)."""
        return self._lock_mode

    # -- error translation ----------------------------------------------------------------

    def _where(self, key: str | None) -> str:
        return f"s3://{self._bucket}/{self._prefix}{key or ''}"

    @contextlib.contextmanager
    def _errors(self, key: str | None, what: str | None = None) -> Iterator[None]:
        """The one place where botocore errors become storage errors."""
        try:
            yield
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._translate(exc, key, what or self._where(key)) from exc

    def _translate(self, exc: Exception, key: str | None, where: str) -> StorageError:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            said = f"{code} (HTTP {status})" if code and code != str(status) else f"HTTP {status}"
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {self._bucket!r} does not exist ({where})",
                    key=key,
                    hint="create the bucket first, or fix the bucket name and endpoint",
                )
            if code in _NOT_FOUND or (status == 404 and not code):
                return ObjectNotFound(f"no such object: {where}", key=key)
            if code in _DENIED or status == 403:
                return StorageAccessDenied(
                    f"S3 denied access to {where}: {said}", key=key, hint=_CREDENTIALS_HINT
                )
            if code == "PreconditionFailed" or status == 412:
                return ObjectExists(f"object already exists: {where}", key=key)
            if code == "InvalidRequest" and "objectlock" in str(exc).lower().replace(" ", ""):
                return StorageError(
                    f"S3 refused an object-locked write to {where}: {said} "
                    f"{exc.response.get('Error', {}).get('Message', '')}",
                    key=key,
                    hint=f"enable Object Lock on bucket {self._bucket!r}, or unset BACKUPD_S3__OBJECT_LOCK",
                )
            if code in _TRANSIENT or status >= 500 or status == 429:
                return StorageUnavailable(f"S3 is unavailable for {where}: {said}", key=key)
            message = exc.response.get("Error", {}).get("Message", "")
            return StorageError(f"S3 refused the request for {where}: {said} {message}", key=key)
        if isinstance(exc, SSLError):
            return StorageError(f"TLS error talking to S3 for {where}: {exc}", key=key, hint=_CA_HINT)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return StorageAccessDenied(
                f"no usable S3 credentials for {where}: {exc}", key=key, hint=_CREDENTIALS_HINT
            )
        transient = (
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
            ChecksumError,
            OSError,
        )
        if isinstance(exc, transient):
            return StorageUnavailable(f"cannot reach S3 for {where}: {exc}", key=key)
        return StorageError(f"S3 client error for {where}: {exc}", key=key)

    # -- writing --------------------------------------------------------------------------

    def _read_only(self, key: str) -> StorageError:
        return StorageError(
            f"{self._where(key)}: the storage is a read-only view of the bucket as of "
            f"{self._as_of:%Y-%m-%dT%H:%M:%SZ} (BACKUPD_S3__AS_OF)",
            key=key,
            hint="unset BACKUPD_S3__AS_OF to write to the repository",
        )

    def _lock_args(self, key: str) -> _LockArgs:
        """Object Lock arguments of a write of ``key`` (empty: not locked)."""
        if self._lock_mode is None or self._retain_until is None:
            return {}
        until = self._retain_until(key)
        if until is None:
            return {}
        return {"ObjectLockMode": self._lock_mode, "ObjectLockRetainUntilDate": until}

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False, sync: bool = True) -> int:
        full = self._prefix + validate_key(key)
        if self._as_of is not None:
            raise self._read_only(key)
        if if_absent and not self._conditional and self._exists(key):
            raise ObjectExists(f"object already exists: {self._where(key)}", key=key)
        conditional = if_absent and self._conditional
        first = read_up_to(stream, self._threshold)
        try:
            if len(first) < self._threshold:
                return self._put_single(key, full, first, conditional)
            if conditional and self._exists(key):  # spare the upload; the complete still checks
                raise ObjectExists(f"object already exists: {self._where(key)}", key=key)
            return self._put_multipart(key, full, first, stream, conditional)
        except IncompleteWrite:
            if conditional:
                # The object under ``key`` is ours (the conditional create succeeded) but not
                # whole: remove it, or a retry would find it and report ObjectExists.
                with contextlib.suppress(StorageError):
                    self.delete(key)
            raise

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def _put_single(self, key: str, full: str, data: bytes, conditional: bool) -> int:
        digest = _md5(data)
        md5_b64 = base64.b64encode(digest.digest()).decode()
        with self._errors(key):
            resp = self._client.put_object(
                Bucket=self._bucket,
                Key=full,
                Body=data,
                ContentMD5=md5_b64,
                **_if_none(conditional),
                **self._lock_args(key),
            )
        self._check_etag(key, resp.get("ETag"), digest.hexdigest(), len(data))
        return len(data)

    def _check_etag(self, key: str, etag: str | None, md5_hex: str, size: int) -> None:
        if not etag or etag.strip('"') != md5_hex:
            raise IncompleteWrite(
                f"S3 acknowledged {size} bytes for {self._where(key)} but returned ETag "
                f"{etag!r}, not the MD5 of what was sent ({md5_hex})",
                key=key,
            )

    def _put_multipart(self, key: str, full: str, first: bytes, stream: BinaryIO, conditional: bool) -> int:
        with self._errors(key):
            upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=full, **self._lock_args(key)
            )["UploadId"]
        total = 0
        try:
            parts: list[CompletedPartTypeDef] = []
            buf = bytearray(first)
            eof = False
            while True:
                while len(buf) < self._part_size and not eof:
                    chunk = stream.read(self._part_size - len(buf))
                    eof = not chunk
                    buf += chunk
                if not buf:
                    break
                part = bytes(buf[: self._part_size])
                del buf[: self._part_size]
                if len(parts) >= MAX_PARTS:
                    raise StorageError(
                        f"{self._where(key)}: more than {MAX_PARTS} parts; raise part_size",
                        key=key,
                    )
                parts.append(self._upload_part(key, full, upload_id, len(parts) + 1, part))
                total += len(part)
            with self._errors(key):
                done = self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **_if_none(conditional),
                )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError, OSError):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=full, UploadId=upload_id)
            raise
        lock = self._lock_args(key)
        if lock:
            # Some stores ignore the lock headers of CreateMultipartUpload (moto does): set the
            # retention of the new version explicitly (the same date again is allowed).
            with self._errors(key):
                self._client.put_object_retention(
                    Bucket=self._bucket,
                    Key=full,
                    Retention={
                        "Mode": lock["ObjectLockMode"],
                        "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
                    },
                    **_version_of(done.get("VersionId")),
                )
        stored = self.stat(key).size
        if stored != total:
            raise IncompleteWrite(
                f"S3 completed the upload of {self._where(key)} but stores {stored} bytes, "
                f"not the {total} sent",
                key=key,
            )
        return total

    def _upload_part(
        self, key: str, full: str, upload_id: str, number: int, part: bytes
    ) -> CompletedPartTypeDef:
        digest = _md5(part)
        with self._errors(key):
            resp = self._client.upload_part(
                Bucket=self._bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=part,
                ContentMD5=base64.b64encode(digest.digest()).decode(),
            )
        self._check_etag(key, resp.get("ETag"), digest.hexdigest(), len(part))
        return {"ETag": resp["ETag"], "PartNumber": number}

    # -- reading --------------------------------------------------------------------------

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        full = self._prefix + validate_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"invalid range offset={offset} length={length}", key=key)
        if length == 0:
            self.stat(key)
            return io.BytesIO(b"")
        version = self._version_args(key)
        with self._errors(key):
            try:
                if offset == 0 and length is None:
                    resp = self._client.get_object(Bucket=self._bucket, Key=full, **version)
                else:
                    end = "" if length is None else str(offset + length - 1)
                    resp = self._client.get_object(
                        Bucket=self._bucket, Key=full, Range=f"bytes={offset}-{end}", **version
                    )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                return io.BytesIO(b"")  # the object exists; offset is at or past its end
        return io.BufferedReader(_BodyReader(resp["Body"], lambda: self._errors(key)))

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def stat(self, key: str) -> ObjectInfo:
        full = self._prefix + validate_key(key)
        if self._as_of is not None:
            v = self._version(key)
            return ObjectInfo(key=key, size=v.size, modified=v.modified)
        with self._errors(key):
            resp = self._client.head_object(Bucket=self._bucket, Key=full)
        return ObjectInfo(key=key, size=resp["ContentLength"], modified=resp.get("LastModified"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # S3 lists keys in ascending order of their UTF-8 bytes, as the contract asks.
        cut = len(self._prefix)
        if self._as_of is not None:
            start = self._prefix + prefix
            for full, v in sorted(self._version_map().items(), key=lambda kv: kv[0].encode()):
                if full.startswith(start):
                    yield ObjectInfo(key=full[cut:], size=v.size, modified=v.modified)
            return
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix)
        with self._errors(None, f"{self._where(None)}{prefix}*"):
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(key=obj["Key"][cut:], size=obj["Size"], modified=obj.get("LastModified"))

    # -- deleting -------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        full = self._prefix + validate_key(key)
        if self._as_of is not None:
            raise self._read_only(key)
        if self._lock_mode is not None:
            self._delete_versions(key, full)
            return
        with self._errors(key):
            self._client.delete_object(Bucket=self._bucket, Key=full)

    def _delete_versions(self, key: str, full: str) -> None:
        """Delete every version and delete marker of ``key`` (see the module docstring)."""
        with self._errors(key):
            versions = s3_versions.key_versions(self._client, self._bucket, full)
        for v in versions:
            try:
                with self._errors(key):
                    self._client.delete_object(Bucket=self._bucket, Key=full, VersionId=v.version_id)
            except StorageAccessDenied as exc:
                raise self._refusal(key, full, v, exc) from exc

    def _refusal(self, key: str, full: str, v: s3_versions.Version, exc: StorageAccessDenied) -> StorageError:
        """``ObjectLocked`` when the refused version is under lock, else the denial itself."""
        if v.delete_marker:
            return exc
        try:
            with self._errors(key):
                mode, until, hold = s3_versions.lock_of(self._client, self._bucket, full, v.version_id)
        except StorageError:
            return exc
        if hold or (until is not None and until > datetime.now(UTC)):
            why = "a legal hold" if hold else f"{mode} object lock until {until:%Y-%m-%dT%H:%M:%SZ}"
            return ObjectLocked(
                f"S3 refused to delete {self._where(key)} (version {v.version_id}): it is under {why}",
                key=key,
                hint="retention deletes it on a run after that date; nothing to do",
            )
        return exc

    # -- object versions (as_of) ----------------------------------------------------------

    def _version_map(self) -> dict[str, s3_versions.Version]:
        assert self._as_of is not None
        with self._versions_lock:
            if self._versions is None:
                with self._errors(None, f"{self._where(None)}* (versions)"):
                    self._versions = s3_versions.versions_as_of(
                        self._client, self._bucket, self._prefix, self._as_of
                    )
            return self._versions

    def _version(self, key: str) -> s3_versions.Version:
        v = self._version_map().get(self._prefix + key)
        if v is None:
            raise ObjectNotFound(
                f"no such object as of {self._as_of:%Y-%m-%dT%H:%M:%SZ}: {self._where(key)}", key=key
            )
        return v

    def _version_args(self, key: str) -> _VersionArg:
        return {} if self._as_of is None else {"VersionId": self._version(key).version_id}

    # -- object lock ----------------------------------------------------------------------

    def object_lock_configuration(self) -> tuple[bool, str | None, str | None]:
        """``(enabled, default_mode, default_period)`` of the bucket's Object Lock
        configuration (``GetObjectLockConfiguration``); a bucket without one gives
        ``(False, None, None)``."""
        try:
            with self._errors(None, f"s3://{self._bucket} (object lock configuration)"):
                conf = self._client.get_object_lock_configuration(Bucket=self._bucket)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
                "ObjectLockConfigurationNotFoundError",
                "ObjectLockConfigurationNotFound",
            ):
                return False, None, None
            raise
        lock = conf.get("ObjectLockConfiguration", {})
        retention = lock.get("Rule", {}).get("DefaultRetention", {})
        period = (
            f"{retention['Days']}d"
            if "Days" in retention
            else f"{retention['Years']}y"
            if "Years" in retention
            else None
        )
        return lock.get("ObjectLockEnabled") == "Enabled", retention.get("Mode"), period

    def object_lock_status(self) -> tuple[bool, str | None, str]:
        """:class:`~contentflow_backupd.storage.base.ObjectLockReport`, for ``check``: whether
        the bucket has Object Lock enabled (``GetObjectLockConfiguration``), the mode objects are
        written with (``BACKUPD_S3__OBJECT_LOCK``, lower case) and one sentence. A mode set on a
        bucket without Object Lock is a problem (``check`` fails)."""
        mode = self.object_lock_mode.lower() if self.object_lock_mode else None
        enabled, default_mode, period = self.object_lock_configuration()
        return enabled, mode, s3_versions.lock_detail(self._bucket, enabled, mode, default_mode, period)

    def flush(self) -> None:
        """S3 objects are durable once acknowledged: nothing to do."""

    def close(self) -> None:
        self._client.close()
