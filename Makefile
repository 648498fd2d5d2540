# Developer entry points. `make run` is the whole system on this machine; `make test` the suite.

# The interpreter the venv is made from. The distribution's own Python 3 when it is one
# Vigil supports (Debian's python3.11, linked statically and built profile-guided, runs
# Vigil's services 10-20 % faster than a plain source build such as pyenv's), else the
# `python3` on PATH. `make PYTHON=/path/to/python3.x install` chooses another (after
# `rm -rf .venv`: an existing venv keeps the interpreter it was made from).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in /usr/bin/python3 python3; do \
	$$p -c 'import sys, ensurepip, venv; ensurepip.version(); \
	sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))' >/dev/null 2>&1 \
	&& { echo $$p; exit; }; done; echo python3)
endif
VENV ?= .venv

# CI sets CI=true; the ci Hypothesis profile is derandomised (tests/conftest.py).
ifdef CI
export HYPOTHESIS_PROFILE := ci
endif

.PHONY: install run test lint deploy-check clean bench faults soak audit-deps

# Reinstalled whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev,embedded,msk-iam]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/vigil up

test: lint deploy-check
	$(VENV)/bin/python -m pytest -q

# The deploy artefacts, offline: the chart rendered and validated against the Kubernetes
# schemas, checkov over the chart, Terraform and Dockerfile, promtool on the alert rules,
# the compose file against the Compose schema (deploy/check/check.py says what each does).
# checkov lives in a venv of its own: its pinned dependencies clash with Vigil's.
CHECKOV_VENV ?= .venv-checkov

$(CHECKOV_VENV)/.installed: deploy/check/requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q -r deploy/check/requirements-checkov.txt
	touch $@

deploy-check: install $(CHECKOV_VENV)/.installed
	$(VENV)/bin/python deploy/check/check.py --checkov $(CHECKOV_VENV)/bin/checkov

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/bandit -q -r domain application projections interfaces infrastructure --severity-level high

# Known vulnerabilities of the installed packages, from the PyPI advisory database: needs a
# network, and is not part of `make test`, so that a new advisory cannot break a build
# nothing changed. Run it before a release.
audit-deps: install
	$(VENV)/bin/pip-audit --skip-editable

# Only what the tools and `vigil up` made. `vigil clean` removes var/, and refuses while
# `vigil up`, a process it started or the PostgreSQL it left behind still runs on it.
# Without the venv nothing here can check that, so var/ stays.
clean:
	@if [ -x $(VENV)/bin/vigil ]; then $(VENV)/bin/vigil clean; \
	elif [ -e var ]; then echo "make clean: run make install first, so that vigil clean can check nothing runs on var/" >&2; exit 1; fi
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# The throughput benchmark: a fresh system of its own under var/bench/run-*/;
# prints a table and writes var/bench/latest.json.
bench: install
	$(VENV)/bin/python load/bench.py

# Fault injection: a system of its own under var/faults/run-*/, a mixed workload, every kind
# of crash and outage (up to 60; injecting stops after 25 minutes, about 35 in all), the
# invariants after each; prints a table and writes var/faults/latest.json. Exit 1 on any
# violation.
faults: install
	$(VENV)/bin/python load/faults.py

# Twenty minutes (SOAK_MINUTES) at half the capacity `make bench` measured: memory and lag
# within their bounds, the invariants at the end; writes var/soak/latest.json.
SOAK_MINUTES ?= 20
soak: install
	$(VENV)/bin/python load/soak.py --minutes $(SOAK_MINUTES)
