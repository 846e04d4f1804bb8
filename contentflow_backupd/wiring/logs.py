"""Settings -> logging: configured once per process, with every configured secret registered so
that no log line prints it."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

from contentflow_backupd.observability.logging import configure_logging, register_secret
from contentflow_backupd.settings import Settings


def setup_logging(settings: Settings) -> None:
    configure_logging(settings.log.format, settings.log.level)
    secrets = [
        settings.database_url,
        settings.encryption.passphrase,
        settings.catalog_url,
        settings.notify.webhook_url,
        settings.drill.database_url,
    ]
    for own in settings.clusters.values():  # every named cluster's, whichever one runs
        secrets += [
            own.database_url,
            own.encryption.passphrase if own.encryption is not None else None,
            own.notify.webhook_url if own.notify is not None else None,
            own.drill.database_url if own.drill is not None else None,
        ]
    for secret in secrets:
        if secret is not None:
            value = secret.get_secret_value()
            register_secret(value)
            info_pw = _password_of(value)
            register_secret(info_pw)
    register_secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))
    register_secret(os.environ.get("PGPASSWORD"))


def _password_of(url: str) -> str | None:
    """The password in a libpq URI or key=value string, without importing psycopg (wal-push is
    started once per WAL segment and must start fast)."""
    if "://" in url:
        return unquote(urlsplit(url).password or "") or None
    m = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)
    if not m:
        return None
    value = m.group(1)
    return value[1:-1].replace("\\'", "'").replace("\\\\", "\\") if value.startswith("'") else value
