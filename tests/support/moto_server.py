"""moto's S3 server as a subprocess on a free loopback port, for tests that speak real HTTP.

Tests talk to it with boto3 and the credentials of :func:`aws_test_env` (moto accepts any
credentials unless :func:`enforce_auth` was called on that server).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def aws_test_env() -> dict[str, str]:
    """Environment for boto3 in tests: fixed fake credentials, no profile, no instance metadata."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# Variables that would make boto3 ignore or override aws_test_env() when set by the developer.
AWS_ENV_TO_CLEAR = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextlib.contextmanager
def running_moto_server(timeout: float = 20.0, log: Path | None = None) -> Iterator[str]:
    """Start ``moto_server``, wait until it answers, yield its endpoint URL, stop it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        _moto_command(port),
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **aws_test_env()},
    )
    try:
        _wait_until_up(proc, endpoint, timeout)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def _wait_until_up(proc: subprocess.Popen[bytes], endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # an HTTP answer, even an error, means it is up
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer at {endpoint}") from None
            time.sleep(0.05)


def s3_client(
    endpoint: str,
    *,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
) -> S3Client:
    """A plain boto3 client for test setup (creating buckets, inspecting objects)."""
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    return client


def create_bucket(client: S3Client, name: str | None = None) -> str:
    name = name or f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return name


def delete_bucket(client: S3Client, name: str) -> None:
    """Remove a bucket with its objects and unfinished uploads."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys: list[Any] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys})
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=name)


def enforce_auth(endpoint: str) -> tuple[str, str]:
    """Make this moto server check signatures; return a new IAM user's (key id, secret).

    The three requests that create the user, its key and its policy are the last ones moto lets
    through unauthenticated. Use a server of its own: every later request must be signed with a
    key that moto's IAM knows.
    """
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"3",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass
    iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name=REGION)
    try:
        iam.create_user(UserName="backupd")
        key = iam.create_access_key(UserName="backupd")["AccessKey"]
        iam.put_user_policy(
            UserName="backupd",
            PolicyName="s3-all",
            PolicyDocument=(
                '{"Version": "2012-10-17", "Statement": '
                '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
            ),
        )
    finally:
        iam.close()
    return key["AccessKeyId"], key["SecretAccessKey"]
