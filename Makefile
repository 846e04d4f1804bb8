# contentflow-backupd: the two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
# The system Python when there is one: the postgres user must be able to run the tool (archive_command).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?= -n 2

.PHONY: run demo test test-container bench lint venv postgres pgbackrest prometheus clean help

help:
	@echo "make run    - the daemon in the foreground (on a disposable demo PostgreSQL unless BACKUPD_DATABASE_URL is set)"
	@echo "               keeps the previous demo under .demo/; make run FRESH=1 starts over"
	@echo "make demo   - one pass: full, incremental, verify, restore into a new database, compare"
	@echo "make test   - install what is missing and run the whole test suite (and make test-container where podman is)"
	@echo "make test-container - build the image and a systemd image with podman, run them against real PostgreSQL and S3"
	@echo "make bench  - benchmarks (>= 1 GB of generated data: logical, then physical and WAL, then native incrementals on PostgreSQL 18), results in bench/results/"
	@echo "make lint   - ruff and mypy --strict"

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

# The tests start their own clusters with initdb/pg_ctl; they need the server binaries.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "PostgreSQL server binaries: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')"; \
	else \
		echo "installing PostgreSQL server with apt"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q postgresql; \
	fi

# promtool (alert rule tests) and the prometheus server (scrape test) come from the Debian package.
# Installing it must not leave its service running: a policy-rc.d that denies starts is in place
# during the install (removed after unless it was there before), and on a systemd host the unit is
# disabled and stopped again.
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		echo "Prometheus: $$(command -v promtool) $$(command -v prometheus)"; \
	else \
		echo "installing the Debian package prometheus (promtool, prometheus server) with apt; its service stays stopped"; \
		added=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\n# added by contentflow-backupd make test: no service starts during apt-get install\nexit 101\n' \
				| $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && $(SUDO) chmod 755 /usr/sbin/policy-rc.d && added=1; \
		fi; \
		$(SUDO) apt-get update -q && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
		rc=$$?; \
		if [ -n "$$added" ]; then $(SUDO) rm -f /usr/sbin/policy-rc.d; fi; \
		if [ $$rc -eq 0 ] && [ -d /run/systemd/system ]; then \
			$(SUDO) systemctl disable --now prometheus.service >/dev/null 2>&1 || true; \
		fi; \
		exit $$rc; \
	fi

# The container tests (-m container) run in `make test-container`, not in the main pytest run.
# CONTAINER_TESTS=auto: `make test` runs them too when podman is installed and we are root;
# yes: always (installing podman); no: never (.ci/run passes no and runs test-container itself,
# so CI runs them exactly once).
CONTAINER_TESTS ?= auto
CONTAINER_PYTEST_ARGS ?= -n 2 --dist loadfile

test: venv postgres prometheus
	@$(PY) -m pytest $(PYTEST_ARGS) -m "not container"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; rc=1; fi; \
	run=no; \
	case "$(CONTAINER_TESTS)" in \
		yes) run=yes ;; \
		auto) if command -v podman >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then run=yes; \
			else echo "make test: podman not installed (or not root): skipping the container tests (make test-container)"; fi ;; \
	esac; \
	if [ $$run = yes ]; then $(MAKE) --no-print-directory test-container || rc=1; fi; \
	exit $$rc

# Builds the stand-in base (cached in /var/cache/contentflow-backupd), the Dockerfile's image and
# the systemd image, then runs tests/container (docs/deployment.md, "How the tests build and run").
test-container: venv postgres
	tests/container/images.sh all
	@# PostgreSQL 16 (the pgserver wheel) for the client/server major check of the image
	@$(PY) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("pgserver") is None)' \
		|| $(PY) -m pip install -q pgserver==0.1.4
	@BACKUPD_CONTAINER_TESTS=1 $(PY) -m pytest $(CONTAINER_PYTEST_ARGS) -m container tests/container; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no container tests: that is a failure" >&2; exit 1; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check contentflow_backupd tests bench
	$(VENV)/bin/ruff format --check contentflow_backupd tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy -p bench

run: venv postgres
	$(PY) -m contentflow_backupd.demo.daemon $(if $(filter-out 0,$(FRESH)),--fresh)

demo: venv postgres
	$(PY) -m contentflow_backupd.demo.run

# Byte-compiled first: per-call start-up is part of what wal-push is measured by.
# pgBackRest is the baseline of bench/physical.py's pgBackRest column (issue 15); without it
# (no apt-get, no sudo) the column is skipped with a note.
pgbackrest:
	@if command -v pgbackrest >/dev/null 2>&1; then \
		echo "pgBackRest: $$(pgbackrest version)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing pgBackRest with apt (the baseline of the pgBackRest column)"; \
		($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q pgbackrest) \
			|| echo "NOTE: pgBackRest could not be installed: the pgBackRest column will be skipped"; \
	else \
		echo "NOTE: pgBackRest is not installed and apt-get is missing: the pgBackRest column will be skipped"; \
	fi

bench: venv postgres pgbackrest
	$(PY) -m compileall -q contentflow_backupd
	$(PY) bench/run.py
	$(PY) bench/physical.py
	$(PY) bench/native.py
	$(PY) bench/chunk_sizes.py
	$(PY) bench/fleet.py

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
