# hvds: the two commands of the README are `make demo` and `make test`; both install what they
# need first (scripts/setup.sh) and are safe to run twice.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: setup test unit integration lint demo demo-local bench fuzz ansible-check ansible-units ansible-integration

setup:
	@bash scripts/setup.sh

lint: setup
	cd agent && ruff format --check src tests && ruff check src tests && mypy src

unit: setup
	cd agent && pytest -q tests/unit

integration: setup
	cd agent && pytest -q tests/integration

test: setup lint ansible-check ansible-units ansible-integration
	cd agent && pytest -q -ra tests

# The main job: the two-site lab (podman containers) deployed by ansible-playbook, see lab-demo.
demo: lab-demo

# The same story with every service as a local process, no containers (a minute).
demo-local: setup
	bash scripts/demo.sh

# The long fuzz run (docs/reliability.md): a million random NBD sessions and a million random
# frame streams, tens of thousands of hypothesis cases and damaged journals, 20,000 sessions
# at a real tap. About an hour on 2 cores. Figures, one JSON line per test, in FUZZ_REPORT.
FUZZ_REPORT ?= $(CURDIR)/build/fuzz-report.jsonl
FUZZ_PYTEST = HVDS_FUZZ_REPORT=$(FUZZ_REPORT) pytest -q -s -p no:cacheprovider --timeout=0
fuzz: setup
	mkdir -p $(dir $(FUZZ_REPORT)) && rm -f $(FUZZ_REPORT)
	cd agent && HVDS_FUZZ_EXAMPLES=1000000 $(FUZZ_PYTEST) tests/unit/test_fuzz_nbd.py -k random_sessions
	cd agent && HVDS_FUZZ_EXAMPLES=1000000 $(FUZZ_PYTEST) tests/unit/test_fuzz_wire.py -k random_streams
	cd agent && HVDS_FUZZ_EXAMPLES=20000 $(FUZZ_PYTEST) tests/unit/test_fuzz_nbd.py -k "not random_sessions"
	cd agent && HVDS_FUZZ_EXAMPLES=20000 $(FUZZ_PYTEST) tests/unit/test_fuzz_wire.py -k "not random_streams"
	cd agent && HVDS_FUZZ_EXAMPLES=25000 $(FUZZ_PYTEST) tests/unit/test_fuzz_journal.py -k damaged
	cd agent && HVDS_FUZZ_EXAMPLES=20000 $(FUZZ_PYTEST) tests/integration/test_fuzz_tap.py
	jq -c '{test, inputs, seconds, crashes, hangs, peak_rss_mib}' $(FUZZ_REPORT)

bench: setup
	$(PY) bench/tap_bench.py
	$(PY) bench/replication_bench.py
	$(PY) bench/manager_bench.py
	$(PY) bench/view_bench.py

# The Ansible collection (the repo root): a tree build/ansible_collections/hvds/replication, then
# ansible-test sanity (empty ignore file) and ansible-lint --profile production in it, then
# ansible-galaxy collection build/install of it and ansible-doc -l of the installed modules.
ansible-check: setup
	bash scripts/ansible-check.sh tree sanity lint galaxy

# Unit tests of the collection's plugins (tests/unit/plugins): ansible-test units in the same tree.
ansible-units: setup
	bash scripts/ansible-check.sh tree units

# Every module through ansible-playbook (ansible-test integration) against two real sites:
# hvds-manager, VDSAs and a tap started by scripts/ansible-integration.py.
ansible-integration: setup
	bash scripts/ansible-check.sh tree
	$(PY) scripts/ansible-integration.py

# The two-site lab (lab/, inventory/lab): systemd containers under rootful podman, deployed by
# playbooks/site.yml. lab-demo leaves the lab running; lab-test starts from fresh containers,
# checks that a second site.yml changes nothing and that the mirror at site B equals the disk at
# site A, then removes the containers (the image stays cached). lab-clean removes everything.
.PHONY: lab-demo lab-test lab-clean
lab-demo: setup
	bash scripts/lab-demo.sh

lab-test: setup
	bash scripts/lab-demo.sh --fresh --down

lab-clean:
	bash lab/lab.sh down
	bash lab/image.sh --remove
	rm -rf build/lab
