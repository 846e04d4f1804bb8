#!/usr/bin/env bash
# Builds what the container tests run, with podman as root and no registry (docs/deployment.md,
# "How the tests build and run the image"):
#
#   1. a stand-in for python:3.11-slim-bookworm: a Debian bookworm rootfs made by debootstrap
#      (Debian's python3, venv and pip), imported under the name the Dockerfile uses;
#   2. the real Dockerfile on that base, `podman build --pull=never --format docker`;
#   3. a systemd image: the same base with systemd, the PostgreSQL client and the package installed
#      as docs/deployment.md ("systemd") says, for `podman run --systemd=always`.
#
# The rootfs tarball is cached in $BACKUPD_CONTAINER_CACHE (default /var/cache/contentflow-backupd)
# between runs on one machine; the images are rebuilt from podman's layer cache.
#
# Usage: tests/container/images.sh [all|tools|base|image|systemd]
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${BACKUPD_CONTAINER_CACHE:-/var/cache/contentflow-backupd}
BASE_NAME=docker.io/library/python:3.11-slim-bookworm
IMAGE=${BACKUPD_TEST_IMAGE:-localhost/contentflow-backupd:test}
SYSTEMD_IMAGE=${BACKUPD_TEST_SYSTEMD_IMAGE:-localhost/contentflow-backupd-systemd:test}
PG_MAJOR=${PG_MAJOR:-15}
MIRROR=${DEBIAN_MIRROR:-$(awk '$1 == "URIs:" {print $2; exit} $1 == "deb" {print $2; exit}' \
    /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS_TAR=$CACHE/bookworm-python3-rootfs.tar
export CONTAINERS_CONF=$CACHE/containers.conf

log() { echo "[images.sh $(date -u +%H:%M:%S)] $*" >&2; }

tools() {
    local missing=()
    for cmd in podman buildah debootstrap runc; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
            podman buildah debootstrap runc
    fi
    install -d -m 0755 "$CACHE"
    # crun (podman's default here) fails: "setrlimit RLIMIT_NOFILE: Operation not permitted", then
    # "cgroups in hybrid mode not supported". runc with explicit limits works.
    cat >"$CONTAINERS_CONF.tmp" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
    mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
}

base() {
    if [ ! -s "$ROOTFS_TAR" ]; then
        local root
        root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        log "debootstrap bookworm into $root from $MIRROR"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
        ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
        ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
        # HTTPS from containers goes through this machine's intercepting proxy: trust its CAs.
        if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
            cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
            chroot "$root" update-ca-certificates >/dev/null
        fi
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -cf "$ROOTFS_TAR.tmp" .
        mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
        rm -rf "$root"
        podman rmi -f "$BASE_NAME" >/dev/null 2>&1 || true
    fi
    if ! podman image exists "$BASE_NAME"; then
        log "importing the stand-in base as $BASE_NAME"
        podman import --change 'CMD ["python3"]' "$ROOTFS_TAR" "$BASE_NAME" >/dev/null
    fi
}

# The previous build of a tag is removed once the tag moves (build-stage layers stay as cache).
drop_old() {
    local old=$1 name=$2 new
    new=$(podman image inspect --format '{{.Id}}' "$name")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
}

image() {
    log "building $IMAGE (PG_MAJOR=$PG_MAJOR) from the Dockerfile"
    local old
    old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    podman build --pull=never --format docker --network host --build-arg "PG_MAJOR=$PG_MAJOR" \
        -t "$IMAGE" -f Dockerfile .
    drop_old "$old" "$IMAGE"
    log "$IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
}

systemd_image() {
    # The wheel differs at every build (timestamps): skip the build when its inputs did not change.
    local inputs
    inputs=$(find pyproject.toml README.md contentflow_backupd systemd/contentflow-backupd.service \
        tests/container/systemd.Containerfile deploy/container/requirements.txt -type f \
        ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    if [ "$(podman image inspect --format '{{index .Labels "io.contentflow.backupd.test-inputs"}}' \
            "$SYSTEMD_IMAGE" 2>/dev/null || true)" = "$inputs" ]; then
        log "$SYSTEMD_IMAGE is up to date ($inputs)"
        return
    fi
    log "building $SYSTEMD_IMAGE"
    rm -rf "$CACHE/systemd-ctx"
    mkdir -p "$CACHE/systemd-ctx"
    # The package as a wheel, the way docs/deployment.md installs it from a path.
    .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE/systemd-ctx" . 2>/dev/null \
        || .venv/bin/python -m pip wheel -q --no-deps -w "$CACHE/systemd-ctx" .
    cp systemd/contentflow-backupd.service tests/container/systemd.Containerfile \
        deploy/container/requirements.txt "$CACHE/systemd-ctx/"
    local old
    old=$(podman image inspect --format '{{.Id}}' "$SYSTEMD_IMAGE" 2>/dev/null || true)
    podman build --pull=never --format docker --network host --build-arg "PG_MAJOR=$PG_MAJOR" \
        --label "io.contentflow.backupd.test-inputs=$inputs" \
        -t "$SYSTEMD_IMAGE" -f "$CACHE/systemd-ctx/systemd.Containerfile" "$CACHE/systemd-ctx"
    drop_old "$old" "$SYSTEMD_IMAGE"
}

case "${1:-all}" in
    tools) tools ;;
    base) tools; base ;;
    image) tools; base; image ;;
    systemd) tools; base; systemd_image ;;
    all) tools; base; image; systemd_image ;;
    *) echo "usage: $0 [all|tools|base|image|systemd]" >&2; exit 2 ;;
esac
