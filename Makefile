# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak unit integration cluster chaos lint bench bench-proxy clean deps dig

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

# the dev agent with the demo apps (web calls api through the mesh) and their sidecars
run: $(STAMP)
	BIN=$(BIN) examples/run-dev.sh

# dig for the DNS tests: installed when missing and possible (root with apt), else those tests skip
dig:
	@command -v dig >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bind9-dnsutils >/dev/null 2>&1); } || true

# the unit tier (pure, in-process) runs on both cores; the tiers with real processes
# one test at a time, as their timing assertions assume
test: $(STAMP) dig
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not soak" -n 2 tests/unit
	$(BIN)/python -m pytest -q -m "not soak" tests --ignore=tests/unit

# long runs kept out of `make test` (the 100,000-entry Raft state with snapshots, a
# minute of 10-second leaves through automatic root rotations)
soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

cluster: $(STAMP)
	$(BIN)/python -m pytest -q tests/cluster

# the fault suite: hosts in network namespaces (needs root and iproute2), a seeded nemesis,
# a checked workload; `make chaos SEED=123 CHAOS_SECONDS=600` replays or lengthens a run.
# `make test` runs a bounded version (tests/chaos/test_chaos.py, CHAOS_TEST_SECONDS=36).
CHAOS_SECONDS ?= 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.run --seconds $(CHAOS_SECONDS) $(if $(SEED),--seed $(SEED)) $(if $(CHAOS_SERVERS),--servers $(CHAOS_SERVERS))

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/raft_writes.py

# the sidecar pair beside a haproxy mutual-TLS pair and direct nginx (needs wrk, hey,
# haproxy and nginx: installed from Debian when missing and possible)
bench-proxy: $(STAMP)
	@command -v wrk >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && \
	  command -v hey >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey haproxy nginx >/dev/null 2>&1); } || true
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) *.egg-info
