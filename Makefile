# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv when missing and install what they need; a stamp keeps reruns fast.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_SECONDS ?= 540
PYTEST_ARGS ?=

.PHONY: setup test demo lint fashion-mnist clean

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
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP) fashion-mnist
	$(PY) -m simdino.demo --seconds $(DEMO_SECONDS) --output_dir outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache
