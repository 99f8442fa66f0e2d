# Two commands on a fresh machine: `make demo` (install everything, run a search) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_PACKAGES := dataset-fashion-mnist
TEST_PACKAGES := dataset-fashion-mnist postgresql chromium chromium-driver util-linux

.PHONY: setup demo test lint bench clean

setup: $(BIN)/.installed

# The CPU build of torch is pinned here, in the set-up, not in pyproject: an unpinned torch resolves
# to a multi-GB CUDA build on these machines, while users with a GPU want exactly that.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# timm is a test dependency (tests/test_timm.py checks our block strings against it). --no-deps:
	# its torchvision requirement would pull a multi-GB CUDA torch, and the tests stand in for torchvision.
	$(BIN)/pip install -q --no-deps 'timm==1.0.31'
	touch $@

# Debian packages, installed only where missing: the Fashion-MNIST data, and for the tests a
# PostgreSQL server (distributed search) and Chromium (the report's browser test). taskset (util-linux)
# pins a test latency agent to one core.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

demo: setup
	$(call apt_install,$(DEMO_PACKAGES))
	$(BIN)/mbsearch run --space v3 --target cpu --trials 30

test: setup
	$(call apt_install,$(TEST_PACKAGES))
	$(BIN)/python -m pytest -q -n auto --dist worksteal

bench: setup
	$(call apt_install,$(DEMO_PACKAGES))
	$(BIN)/python benchmarks/throughput.py --trials 12

lint: setup
	$(BIN)/ruff check mbsearch tests benchmarks
	$(BIN)/ruff format --check mbsearch tests benchmarks
	# the wings' import contract (pyproject.toml [tool.importlinter]): data-flow order, no torch in architecture/device
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
