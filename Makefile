# The set-up commands of the README: `make demo`, `make test` (every test), `make test-fast` (the edit-test
# loop: no subprocess, no training run) and `make lint`. They create .venv when missing and install what
# they need; a stamp keeps reruns fast. Test tiers: docs/DESIGN.md ("Tests").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_SECONDS ?= 540
PYTEST_ARGS ?=
# Test processes (pytest-xdist): a test file runs whole in one of them (its module-scoped runs are shared),
# the files with the longest tests first (tests/conftest.py).
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
FAST_MARKERS := not slow and not distributed and not slurm and not gpu
# The tests that go through submitit and SLURM (fake or real): .ci/run runs them once more with SLURM hidden.
LAUNCHER_TESTS := tests/test_fake_slurm.py tests/simdinov2/test_run.py tests/simdino/test_submitit.py tests/slurm

.PHONY: setup test test-fast test-launchers demo lint fashion-mnist clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Real data without internet: Debian's dataset-fashion-mnist package (IDX .gz files).
fashion-mnist:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "could not install dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist"; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass a --data_path ImageFolder)"; fi

test: $(STAMP) fashion-mnist
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "$(FAST_MARKERS)" --forbid-python-subprocesses $(PYTEST_ARGS)

test-launchers: $(STAMP)
	$(PYTEST) $(LAUNCHER_TESTS) $(PYTEST_ARGS)

demo: $(STAMP) fashion-mnist
	$(PY) -m simdino.demo --seconds $(DEMO_SECONDS) --output_dir outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
