# pyxlb: `make setup` once (idempotent), then `make test`, `make demo`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Everything the build reads: a change to any of these rebuilds the package in the venv.
BUILD_INPUTS := $(wildcard xdp/*.c xdp/bench/*.c xdp/include/*.h ext/*.pyx ext/*.pxd ext/includes/*.pxd) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: setup system build test demo bench fuzz clean

setup: system build

system:
	@scripts/setup-system.sh

$(VENV)/.venv-ok:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77' wheel 'Cython>=3.0'
	touch $@

# --no-build-isolation: the venv already holds the build requirements, so rebuilds are quick.
$(VENV)/.build-ok: $(VENV)/.venv-ok $(BUILD_INPUTS)
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

build: system $(VENV)/.build-ok

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

demo: build
	$(VENV)/bin/pyxlb lab demo

# bench/lab_throughput.py also needs matplotlib (the bench extra); make setup installs
# iptables and nftables.
bench: build
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q --no-build-isolation -e '.[test,bench]'
	$(PY) bench/maglev.py
	$(PY) bench/ring_write.py
	$(PY) bench/datapath.py
	$(PY) bench/lab_throughput.py
	$(PY) bench/apply.py
	$(PY) bench/k8s_sync.py
	$(PY) bench/failover.py

# The fuzzers, long (bench/fuzz.py, 8-12 min; results in bench/results/fuzz.json): 2,000,000
# mutated frames through the balancer and the decapsulator together, the kernel against the
# model on 100,000 packets, and the CLI's bad-input corpus. PYXLB_FUZZ_MUTATIONS,
# PYXLB_FUZZ_SEED, PYXLB_MODEL_PACKETS and PYXLB_FUZZ_CLI_CASES change them.
fuzz: build
	$(PY) bench/fuzz.py

clean:
	rm -rf build pyxlb/bpf/*.o pyxlb/*.so pyxlb/*.c ext/*.c ext/*.html *.egg-info
