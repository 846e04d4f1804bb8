# contentflow-backupd as a container: the daemon (`contentflow-backupd run`) with the PostgreSQL
# client tools (pg_dump, pg_restore, pg_basebackup, pg_receivewal) of one major version.
#
#   docker build -t contentflow-backupd:0.1.0 .                         # PostgreSQL 15 clients (Debian)
#   docker build --build-arg PG_MAJOR=16 --build-arg PG_CLIENT_VERSION=16.6-1.pgdg120+1 \
#       -t contentflow-backupd:0.1.0-pg16 .                             # other majors: apt.postgresql.org
#
# PG_MAJOR must match the server's major version: the daemon checks it at start (exit 2 and a
# message naming both majors otherwise). See docs/deployment.md ("Container").
#
# Only what the base image guarantees is used: `python3` on PATH with the venv module, apt and
# Debian bookworm. Not its Python's location (/usr/local/bin or /usr/bin) nor its environment
# (PYTHON_VERSION, LANG): the tests build this file on a stand-in base made with debootstrap.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with pinned dependencies, byte-compiled, without pip ---------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python3 -m venv /opt/contentflow-backupd
# Exact versions of every dependency (and of the build backend) the image installs.
COPY deploy/container/requirements.txt deploy/container/build-requirements.txt ./
RUN /opt/contentflow-backupd/bin/pip install --no-deps -r requirements.txt \
    && /opt/contentflow-backupd/bin/pip install -r build-requirements.txt
COPY pyproject.toml README.md ./
COPY contentflow_backupd ./contentflow_backupd
RUN set -eux; \
    venv=/opt/contentflow-backupd; \
    "$venv/bin/pip" install --no-deps --no-build-isolation .; \
    "$venv/bin/pip" check; \
    "$venv/bin/pip" uninstall -y -r build-requirements.txt; \
    "$venv/bin/python" -m pip uninstall -y pip; \
    "$venv/bin/python" -m compileall -q "$venv/lib"; \
    "$venv/bin/contentflow-backupd" --version

# -- the image: Python, the PostgreSQL client of PG_MAJOR, the virtual environment -----------
FROM ${BASE_IMAGE}

ARG PG_MAJOR=15
# The Debian package version of postgresql-client-${PG_MAJOR}: bookworm's for 15, PGDG's otherwise.
ARG PG_CLIENT_VERSION=15.18-0+deb12u1
ARG BACKUPD_VERSION=0.1.0

LABEL org.opencontainers.image.title="contentflow-backupd" \
      org.opencontainers.image.description="PostgreSQL backup daemon: encrypted, deduplicated, verified backups to S3 or a local directory" \
      org.opencontainers.image.version="${BACKUPD_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/contentflow/contentflow-backupd" \
      io.contentflow.backupd.pg-major="${PG_MAJOR}" \
      io.contentflow.backupd.pg-client-version="${PG_CLIENT_VERSION}"

# Debian bookworm ships postgresql-client-15; any other major comes from the PGDG apt repository
# (apt.postgresql.org), whose signing key is fetched with Python (no curl or gnupg needed).
RUN set -eux; \
    apt-get update; \
    if ! apt-cache show "postgresql-client-${PG_MAJOR}" >/dev/null 2>&1; then \
        install -d /usr/share/postgresql-common/pgdg; \
        python3 -c "import urllib.request; urllib.request.urlretrieve('https://www.postgresql.org/media/keys/ACCC4CF8.asc', '/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc')"; \
        echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
            > /etc/apt/sources.list.d/pgdg.list; \
        apt-get update; \
    fi; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "postgresql-client-${PG_MAJOR}=${PG_CLIENT_VERSION}"; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version | grep -q "(PostgreSQL) ${PG_MAJOR}\."

COPY --from=build /opt/contentflow-backupd /opt/contentflow-backupd

# A non-root user; the state directory (catalog, locks, WAL spool, temp files) is a volume.
RUN groupadd --system --gid 10001 backupd \
    && useradd --system --uid 10001 --gid backupd --home-dir /var/lib/contentflow-backupd \
        --no-create-home --shell /usr/sbin/nologin backupd \
    && install -d -o backupd -g backupd -m 0700 /var/lib/contentflow-backupd
VOLUME ["/var/lib/contentflow-backupd"]
WORKDIR /var/lib/contentflow-backupd

# BACKUPD_PG_BIN pins the client tools to the build's major: the daemon compares it with the
# server's at start. LANG is set here rather than relied on from the base image.
ENV PATH=/opt/contentflow-backupd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8 \
    BACKUPD_STATE_DIR=/var/lib/contentflow-backupd \
    BACKUPD_PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin \
    BACKUPD_HTTP__LISTEN=0.0.0.0:9847 \
    BACKUPD_LOG__FORMAT=json

USER 10001:10001
EXPOSE 9847

# /livez only: it never depends on the database or storage (a restart would not fix them).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/contentflow-backupd/bin/python", "-c", "import os, urllib.request; port = os.environ.get('BACKUPD_HTTP__LISTEN', '0.0.0.0:9847').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4)"]

# The first SIGTERM lets a running backup finish for BACKUPD_SHUTDOWN_GRACE (60s): give the
# container more than that to stop (docker run --stop-timeout 90, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["contentflow-backupd"]
CMD ["run"]
