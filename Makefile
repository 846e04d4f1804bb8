# contentflow-backupd: the two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
# The system Python when there is one: the postgres user must be able to run the tool (archive_command).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?= -n 2

.PHONY: run test bench lint venv postgres clean help

help:
	@echo "make run    - demo: disposable PostgreSQL, backups, verify, restore (or the daemon later)"
	@echo "make test   - install what is missing and run the whole test suite"
	@echo "make bench  - benchmarks (>= 1 GB of generated data), results in bench/results/"
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

test: venv postgres
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check contentflow_backupd tests bench
	$(VENV)/bin/ruff format --check contentflow_backupd tests bench
	$(VENV)/bin/mypy

run: venv postgres
	$(PY) -m contentflow_backupd.demo.run

bench: venv postgres
	$(PY) bench/run.py

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
