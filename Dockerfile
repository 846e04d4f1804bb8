# contentflow-backupd as a container: the daemon (`contentflow-backupd run`) with the PostgreSQL
# client tools (pg_dump, pg_restore, pg_basebackup, pg_receivewal) of one major version.
#
#   docker build -t contentflow-backupd:0.1.0 .                         # PostgreSQL 15 clients
#   docker build --build-arg PG_MAJOR=16 -t contentflow-backupd:0.1.0-pg16 .
#
# PG_MAJOR must match the server's major version. See docs/deployment.md ("Container").

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contentflow_backupd ./contentflow_backupd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

ARG PG_MAJOR=15

# Debian bookworm ships postgresql-client-15; any other major comes from the PGDG apt repository
# (apt.postgresql.org), whose signing key is fetched with Python (no curl or gnupg needed).
RUN set -eux; \
    apt-get update; \
    if ! apt-cache show "postgresql-client-${PG_MAJOR}" >/dev/null 2>&1; then \
        install -d /usr/share/postgresql-common/pgdg; \
        python -c "import urllib.request; urllib.request.urlretrieve('https://www.postgresql.org/media/keys/ACCC4CF8.asc', '/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc')"; \
        echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
            > /etc/apt/sources.list.d/pgdg.list; \
        apt-get update; \
    fi; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    rm -rf /var/lib/apt/lists/*; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels

# A non-root user; the state directory (catalog, locks, WAL spool, temp files) is a volume.
RUN groupadd --system --gid 10001 backupd \
    && useradd --system --uid 10001 --gid backupd --home-dir /var/lib/contentflow-backupd \
        --no-create-home --shell /usr/sbin/nologin backupd \
    && install -d -o backupd -g backupd -m 0700 /var/lib/contentflow-backupd
VOLUME ["/var/lib/contentflow-backupd"]
WORKDIR /var/lib/contentflow-backupd

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BACKUPD_STATE_DIR=/var/lib/contentflow-backupd \
    BACKUPD_HTTP__LISTEN=0.0.0.0:9847 \
    BACKUPD_LOG__FORMAT=json

USER 10001:10001
EXPOSE 9847

# /livez only: it never depends on the database or storage (a restart would not fix them).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('BACKUPD_HTTP__LISTEN', '0.0.0.0:9847').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4)"]

# The first SIGTERM lets a running backup finish for BACKUPD_SHUTDOWN_GRACE (60s): give the
# container more than that to stop (docker run --stop-timeout 90, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["contentflow-backupd"]
CMD ["run"]
