# pyxlb: `make setup` once (idempotent), then `make test`, `make demo`, `make bench`;
# `make image` builds the agent image, `make k8s-lab` runs the Kubernetes lab for kubectl.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Everything the build reads: a change to any of these rebuilds the package in the venv.
BUILD_INPUTS := $(wildcard xdp/*.c xdp/bench/*.c xdp/include/*.h ext/*.pyx ext/*.pxd ext/includes/*.pxd) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: setup system build test test-image image k8s-lab demo bench fuzz clean

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

# Everything: the suite, then the image tests (tests/image/: the image built, the Kubernetes
# lab's agents run from it), which `make test-image` runs alone.
test: build
	$(PY) -m pytest --ignore=tests/image $(PYTEST_ARGS)
	$(PY) -m pytest tests/image

test-image: build
	$(PY) -m pytest tests/image $(PYTEST_ARGS)

# The agent image, pyxlb:<version> and pyxlb:dev (scripts/build-image.sh says what it takes
# from the environment: ENGINE, BASE, DEBIAN_MIRROR, CA_BUNDLE).
image: system
	@scripts/build-image.sh

# The Kubernetes lab, left up until Ctrl-C, for kubectl (docs/lab.md); IMAGE=pyxlb:dev runs
# its agents from the image (`make image` first).
k8s-lab: build
	$(PY) -m tests.support.k8slab_main $(if $(IMAGE),--image $(IMAGE))

demo: build
	$(VENV)/bin/pyxlb lab demo

# bench/lab_throughput.py also needs matplotlib (the bench extra); make setup installs
# iptables and nftables. Its two runs take about 21 and 30 minutes on a 2-vCPU VM: the
# chain (or live-frames) generator, then the socket generator beside kernel DNAT.
bench: build
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q --no-build-isolation -e '.[test,bench]'
	$(PY) bench/maglev.py
	$(PY) bench/ring_write.py
	$(PY) bench/datapath.py
	$(PY) bench/lab_throughput.py
	$(PY) bench/lab_throughput.py --generator socket
	$(PY) bench/lab_flood.py
	$(PY) bench/apply.py
	$(PY) bench/node_memory.py
	$(PY) bench/k8s_sync.py
	$(PY) bench/failover.py
	$(PY) bench/upgrade.py

# The fuzzers, long (bench/fuzz.py, 8-12 min; results in bench/results/fuzz.json): 2,000,000
# mutated frames through the balancer and the decapsulator together, the kernel against the
# model on 100,000 packets, and the CLI's bad-input corpus. PYXLB_FUZZ_MUTATIONS,
# PYXLB_FUZZ_SEED, PYXLB_MODEL_PACKETS and PYXLB_FUZZ_CLI_CASES change them.
fuzz: build
	$(PY) bench/fuzz.py

clean:
	rm -rf build pyxlb/bpf/*.o pyxlb/*.so pyxlb/*.c ext/*.c ext/*.html *.egg-info
