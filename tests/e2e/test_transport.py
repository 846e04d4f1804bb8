"""Transport security: S3 over TLS with a private CA (refused without BACKUPD_S3__CA_BUNDLE,
accepted with it) against moto's server serving a certificate made here, and PostgreSQL's
``sslmode`` from the URL honoured."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.helpers import checksums, seed
from tests.support.cli import Cli
from tests.support.moto_server import AWS_ENV_TO_CLEAR, REGION, aws_test_env, free_port
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("backupd test CA"))
        .issuer_name(_name("backupd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def tls_moto(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """moto's server over HTTPS with a certificate of a private CA: (endpoint, CA bundle)."""
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    port = free_port()
    script = Path(sys.executable).with_name("moto_server")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*base, "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**aws_test_env()},
    )
    endpoint = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "moto_server exited"
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1, context=context):
                    break
            except urllib.error.HTTPError:
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "moto_server over TLS did not answer"
                time.sleep(0.05)
        yield endpoint, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.s3
def test_s3_with_a_private_ca_needs_the_ca_bundle(
    cli: Cli, pg: PgCluster, pg_db: str, tls_moto: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, ca = tls_moto
    import boto3

    boto3.session.Session(**{"aws_access_key_id": "t", "aws_secret_access_key": "t"}).client(
        "s3", endpoint_url=endpoint, region_name=REGION, verify=str(ca)
    ).create_bucket(Bucket="tls-bucket")
    cli.env.update(aws_test_env())
    cli.env.update(
        {
            "BACKUPD_REPOSITORY": "s3://tls-bucket/pg",
            "BACKUPD_S3__ENDPOINT_URL": endpoint,
            "BACKUPD_S3__REGION": REGION,
            "BACKUPD_S3__FORCE_PATH_STYLE": "true",
        }
    )
    for name in (*AWS_ENV_TO_CLEAR, "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)  # nothing else may make the private CA trusted
    refused = cli.run("init")
    assert refused.returncode == 1, refused
    assert "TLS error talking to S3" in refused.stderr and "certificate verify failed" in refused.stderr
    assert "BACKUPD_S3__CA_BUNDLE" in refused.stderr  # the hint says what to do

    missing = cli.run("init", env={"BACKUPD_S3__CA_BUNDLE": str(ca) + ".missing"})
    assert missing.returncode == 2 and "BACKUPD_S3__CA_BUNDLE" in missing.stderr, missing

    cli.env["BACKUPD_S3__CA_BUNDLE"] = str(ca)
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    target = "tls_restore_" + pg_db
    cli.run("restore", "latest", "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == checksums(pg, pg_db)
    pg.drop_database(target)


def test_sslmode_require_against_a_server_without_tls_fails_clearly(
    cli: Cli, pg: PgCluster, pg_db: str
) -> None:
    assert pg.execute("show ssl") == [("off",)]
    cli.run("init", check=True)
    cli.env["BACKUPD_DATABASE_URL"] = pg.url(pg_db) + "?sslmode=require"
    result = cli.run("backup", "--kind", "full")
    assert result.returncode == 1, result
    assert "server does not support SSL, but SSL was required" in result.stderr
    assert pg.password not in result.stderr + result.stdout
    check = cli.run("check", "--json")
    assert check.returncode == 1
    assert "SSL was required" in check.json()["database"][0]["detail"]
    # sslmode=disable is honoured too: the same backup works without TLS
    cli.env["BACKUPD_DATABASE_URL"] = pg.url(pg_db) + "?sslmode=disable"
    cli.run("backup", "--kind", "full", check=True)
