# vsnet — the two commands a newcomer needs are `make demo` and `make test`.
# Both set up what they need (apt packages, the .venv virtualenv) idempotently.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SANDBOX := $(PY) -m vsnetd.sandbox --

.PHONY: setup demo test test-unit lint schema bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-deps.sh
	bash scripts/install-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The daemon's pipeline on etc/vsnet/servers.yaml, in a sandbox, with real traffic.
demo: setup
	$(PY) scripts/demo.py

# Everything: lint, type check, the schema check, unit, property and namespace tests.
# pytest itself runs inside fresh network + mount namespaces.
test: setup lint
	$(SANDBOX) $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check vsnetd tests bench scripts
	$(VENV)/bin/mypy vsnetd

schema: setup
	$(VENV)/bin/vsnetctl schema > schemas/servers.schema.json

bench: setup
	$(PY) bench/pbr.py --servers 1000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
