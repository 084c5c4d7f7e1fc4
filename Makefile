# Two commands on a fresh machine (see README.md):
#   make serve   -- run vmledger on the embedded default (SQLite ./vmledger.db + a simulator
#                   whose guests are kept beside it: a restart loses nothing)
#   make test    -- run the test suite (the same command CI runs)
# Both create the virtual environment on first use: `make serve` installs only what the
# runtime needs, `make test` adds the test tooling, the OpenStack clients and Ansible.

PYTHON ?= python3
VENV := .venv
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(VENV)/bin/pip install --quiet -e '.[dev,clients,ansible]'
	@# libvirt-python compiles against the system libvirt (apt: libvirt-dev pkg-config);
	@# without it the libvirt tests skip with that reason (CI installs it and fails on skips)
	$(VENV)/bin/pip install --quiet -e '.[libvirt]' || echo "note: libvirt-python not installed (needs libvirt-dev and pkg-config); libvirt tests will be skipped"
	touch $(STAMP)

serve: $(RUNTIME)
	$(VENV)/bin/vmledger serve

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
