"""S3Storage beyond the contract: error translation, conditional writes, lying servers.

Everything speaks real HTTP to moto's server, directly or through the fault proxy.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from contentflow_backupd.errors import (
    IncompleteWrite,
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
    StorageUnavailable,
)
from contentflow_backupd.storage.base import Storage, put_bytes
from contentflow_backupd.storage.s3 import S3Storage
from tests.storage.conftest import S3_PREFIX, make_s3
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import (
    create_bucket,
    enforce_auth,
    free_port,
    running_moto_server,
    s3_client,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.s3

MiB = 1 << 20
OPERATIONS: dict[str, Callable[[Storage], object]] = {
    "put": lambda s: put_bytes(s, "k", b"v"),
    "get": lambda s: s.get("k"),
    "stat": lambda s: s.stat("k"),
    "list": lambda s: list(s.list()),
    "delete": lambda s: s.delete("k"),
}


def uploads(admin: S3Client, bucket: str) -> list[str]:
    return [u["Key"] for u in admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


# -- what moto's server does with conditional writes ------------------------------------------


def test_moto_server_honours_if_none_match(s3_admin: S3Client, s3_bucket: str) -> None:
    """The finding S3Storage's create_only=True relies on (see the s3 module docstring)."""
    s3_admin.put_object(Bucket=s3_bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        s3_admin.put_object(Bucket=s3_bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert excinfo.value.response["Error"]["Code"] == "PreconditionFailed"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    upload = s3_admin.create_multipart_upload(Bucket=s3_bucket, Key="k")["UploadId"]
    part = s3_admin.upload_part(Bucket=s3_bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"3")
    with pytest.raises(ClientError) as excinfo:
        s3_admin.complete_multipart_upload(
            Bucket=s3_bucket,
            Key="k",
            UploadId=upload,
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
            IfNoneMatch="*",
        )
    assert excinfo.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3_admin.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"1"


@pytest.mark.parametrize("size", [10, 6 * MiB])
def test_if_absent_uses_a_conditional_write(s3_storage: S3Storage, size: int) -> None:
    assert s3_storage.features.create_only
    put_bytes(s3_storage, "k", b"a" * size, if_absent=True)
    with pytest.raises(ObjectExists, match=r"s3://.*/repo/k"):
        put_bytes(s3_storage, "k", b"b" * size, if_absent=True)
    assert s3_storage.get("k") == b"a" * size


def test_large_if_absent_loses_to_a_writer_that_finishes_first(
    s3_storage: S3Storage, s3_admin: S3Client, s3_bucket: str
) -> None:
    class RacedStream(io.BytesIO):
        """Another writer creates the key while our parts are going up."""

        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 5 * MiB:
                s3_admin.put_object(Bucket=s3_bucket, Key=f"{S3_PREFIX}/k", Body=b"theirs")
            return super().read(size)

    with pytest.raises(ObjectExists):
        s3_storage.put("k", RacedStream(b"m" * (6 * MiB)), if_absent=True)
    assert s3_storage.get("k") == b"theirs"
    assert uploads(s3_admin, s3_bucket) == []


def test_without_conditional_writes_if_absent_is_emulated(moto_endpoint: str, s3_bucket: str) -> None:
    storage = make_s3(moto_endpoint, s3_bucket, conditional_writes=False)
    assert not storage.features.create_only
    put_bytes(storage, "k", b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        put_bytes(storage, "k", b"second", if_absent=True)
    assert storage.get("k") == b"first"
    storage.close()


# -- keys, prefix, url -----------------------------------------------------------------------


def test_keys_are_relative_to_the_prefix(s3_storage: S3Storage, s3_admin: S3Client, s3_bucket: str) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="outside", Body=b"x")
    s3_admin.put_object(Bucket=s3_bucket, Key="repository/x", Body=b"x")  # shares "repo"
    put_bytes(s3_storage, "inside/k", b"v")
    assert [i.key for i in s3_storage.list()] == ["inside/k"]
    assert s3_admin.get_object(Bucket=s3_bucket, Key=f"{S3_PREFIX}/inside/k")["Body"].read() == b"v"
    assert s3_storage.url == f"s3://{s3_bucket}/{S3_PREFIX}"
    assert S3Storage(s3_bucket, "/a/b/", endpoint_url="http://127.0.0.1:1").url == (f"s3://{s3_bucket}/a/b")
    assert S3Storage(s3_bucket, endpoint_url="http://127.0.0.1:1").url == f"s3://{s3_bucket}"


def test_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3Storage("b", part_size=MiB)


# -- error translation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_endpoint() -> Iterator[tuple[str, str, str]]:
    """A moto server of its own that checks signatures: (endpoint, key id, secret)."""
    with running_moto_server() as endpoint:
        key_id, secret = enforce_auth(endpoint)
        yield endpoint, key_id, secret


def test_wrong_secret_is_access_denied_without_the_secret(
    auth_endpoint: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, key_id, secret = auth_endpoint
    admin = s3_client(endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret)
    bucket = create_bucket(admin)
    admin.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    good = make_s3(endpoint, bucket)
    put_bytes(good, "k", b"v")
    assert good.get("k") == b"v"
    good.close()

    wrong = "wrongSECRETwrongSECRETwrongSECRET0123456"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    bad = make_s3(endpoint, bucket)
    for name, operation in OPERATIONS.items():
        with pytest.raises(StorageAccessDenied) as excinfo:
            operation(bad)
        error = excinfo.value
        text = f"{error} {error!r} {error.hint}"
        assert "SignatureDoesNotMatch" in text or name == "stat", text  # HEAD has no body
        assert bucket in text
        assert wrong not in text and secret not in text
        assert not error.retryable
    bad.close()


@pytest.mark.parametrize("name", ["put", "get", "list", "delete"])
def test_missing_bucket_says_so(moto_endpoint: str, name: str) -> None:
    storage = make_s3(moto_endpoint, "no-such-bucket-here")
    with pytest.raises(StorageError) as excinfo:
        OPERATIONS[name](storage)
    error = excinfo.value
    assert type(error) is StorageError
    assert "bucket 'no-such-bucket-here' does not exist" in str(error)
    assert error.hint is not None and "create the bucket" in error.hint
    storage.close()


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_unreachable_endpoint_is_unavailable(name: str) -> None:
    storage = make_s3(f"http://127.0.0.1:{free_port()}", "bucket", connect_timeout=1.0)
    with pytest.raises(StorageUnavailable) as excinfo:
        OPERATIONS[name](storage)
    assert excinfo.value.retryable
    assert "s3://bucket/repo/" in str(excinfo.value)
    storage.close()


def test_tls_to_a_plain_http_endpoint_hints_at_the_ca_bundle(moto_endpoint: str) -> None:
    storage = make_s3(moto_endpoint.replace("http://", "https://"), "bucket")
    with pytest.raises(StorageError) as excinfo:
        storage.stat("k")
    assert not excinfo.value.retryable
    assert excinfo.value.hint is not None and "BACKUPD_S3__CA_BUNDLE" in excinfo.value.hint
    storage.close()


@pytest.mark.parametrize("fault", ["500", "503", "drop", "drop_after"])
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_server_errors_are_unavailable(
    fault_proxy: FaultProxy, s3_bucket: str, fault: str, name: str
) -> None:
    storage = make_s3(fault_proxy.url, s3_bucket)
    fault_proxy.fail_next(fault)
    with pytest.raises(StorageUnavailable) as excinfo:
        OPERATIONS[name](storage)
    assert excinfo.value.retryable
    if fault == "503" and name != "stat":  # HEAD answers have no body to name the code
        assert "SlowDown" in str(excinfo.value)
    assert fault_proxy.injected == {fault: 1}
    storage.close()


# -- acknowledged writes that did not store what was sent ------------------------------------


@pytest.mark.parametrize("size", [1000, 6 * MiB])
def test_wrong_etag_is_an_incomplete_write(
    fault_proxy: FaultProxy, s3_admin: S3Client, s3_bucket: str, size: int
) -> None:
    storage = make_s3(fault_proxy.url, s3_bucket)
    fault_proxy.tamper.add("put_etag")
    with pytest.raises(IncompleteWrite, match="ETag") as excinfo:
        put_bytes(storage, "k", b"x" * size)
    assert excinfo.value.retryable
    assert uploads(s3_admin, s3_bucket) == []  # a failed multipart upload is aborted
    storage.close()


def test_incomplete_conditional_write_removes_its_object(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    storage = make_s3(fault_proxy.url, s3_bucket)
    fault_proxy.tamper.add("put_etag")
    with pytest.raises(IncompleteWrite):
        put_bytes(storage, "k", b"data", if_absent=True)
    fault_proxy.tamper.clear()
    with pytest.raises(ObjectNotFound):
        storage.stat("k")  # so that a retry can create it, rather than find ObjectExists
    put_bytes(storage, "k", b"data", if_absent=True)
    storage.close()


def test_acknowledged_put_without_etag_is_an_incomplete_write(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    storage = make_s3(fault_proxy.url, s3_bucket)
    fault_proxy.tamper.add("put_swallow")
    with pytest.raises(IncompleteWrite, match="ETag None"):
        put_bytes(storage, "k", b"data")
    fault_proxy.tamper.clear()
    with pytest.raises(ObjectNotFound):
        storage.stat("k")
    storage.close()


def test_multipart_upload_of_wrong_size_is_an_incomplete_write(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    storage = make_s3(fault_proxy.url, s3_bucket)
    fault_proxy.tamper.add("head_length")
    with pytest.raises(IncompleteWrite, match=f"stores {6 * MiB - 1} bytes, not the {6 * MiB}"):
        put_bytes(storage, "k", b"x" * (6 * MiB))
    storage.close()


def test_a_body_cut_off_mid_stream_is_unavailable(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    storage = make_s3(fault_proxy.url, s3_bucket)
    put_bytes(storage, "k", b"x" * 100_000)
    fault_proxy.tamper.add("get_truncate")
    with storage.open("k") as body:
        assert body.read(10) == b"x" * 10
        with pytest.raises(StorageUnavailable, match=r"s3://.*/repo/k") as excinfo:
            body.read()
    assert excinfo.value.retryable
    with pytest.raises(StorageUnavailable):
        storage.get("k")
    storage.close()
