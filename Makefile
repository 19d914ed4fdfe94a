# vsnet — the two commands a newcomer needs are `make demo` and `make test`.
# Both set up what they need (apt packages, the .venv virtualenv) idempotently.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SANDBOX := $(PY) -m tests.sandbox --

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB     := dist/vsnet_$(VERSION)_amd64.deb
# what goes into the package: rebuilt when any of it changes
PACKAGED := $(wildcard $(shell git ls-files vsnetd systemd packaging etc schemas docs README.md \
                                             pyproject.toml 2>/dev/null))

.PHONY: setup vm-image deb demo test test-vm lint schema bench bench-netns bench-dataplane mutation \
        clean

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

# The Debian kernel + initramfs the 802.1Q tests boot under qemu (cached in .cache/vm).
# Built before the sandbox: the first build downloads packages.
vm-image: setup
	$(PY) -m tests.vm.harness

# The Debian package: vsnet in a virtualenv under /opt/vsnet, unit, man pages, completion.
# Built before the sandbox: pip fetches the dependencies.
deb: $(DEB)

$(DEB): $(STAMP) $(PACKAGED)
	bash packaging/build-deb.sh $(PY)

# Everything: lint, type check, the schema check, unit, property, namespace and VM tests.
# pytest itself runs inside fresh network + mount namespaces.
test: setup lint vm-image deb
	$(SANDBOX) $(PY) -m pytest -q

# Only the tests that boot a VM (real 802.1Q VLANs).
test-vm: setup vm-image deb
	$(SANDBOX) $(PY) -m pytest -q -m vm

lint: setup
	$(VENV)/bin/ruff check vsnetd tests bench scripts
	$(VENV)/bin/mypy vsnetd

# Mutation testing of the pure modules (config, numbering, compile, diff) against the unit and
# property tests ([tool.mutmut] in pyproject.toml; CONTRIBUTING.md, "Mutation testing").
# Not part of `make test`: 5 to 15 minutes here. MUTANTS narrows it: MUTANTS='vsnetd.diff*'.
MUTANTS ?=
mutation: setup
	rm -rf mutants
	nice -n 19 $(SANDBOX) $(VENV)/bin/mutmut run --max-children 2 $(MUTANTS)
	$(VENV)/bin/mutmut results

schema: setup
	$(VENV)/bin/vsnetctl schema > schemas/servers.schema.json
	$(VENV)/bin/vsnetctl schema --drop-in > schemas/servers.d.schema.json

bench: setup
	$(PY) bench/pbr.py --servers 1000

bench-netns: setup
	$(PY) bench/netns.py --servers 1000

bench-dataplane: setup
	$(PY) bench/dataplane.py --servers 100,1000,4000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist mutants
