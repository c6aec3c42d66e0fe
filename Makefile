# jaxmath: `make run` and `make test` work on a machine with only python3 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run tour test test-slow test-gpu bench bench-scaling bench-gpu lint clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[experiments]'
	touch $@

$(VENV)/.dev: $(VENV)/.runtime pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@

run: $(VENV)/.runtime  ## the main job: 1,024 gradient-descent runs as one compiled sweep
	$(VENV)/bin/jaxmath run configs/linear_regression.py --workdir runs/linear_regression --overwrite

tour: $(VENV)/.runtime  ## every seed example evaluated with jaxmath beside a NumPy reference
	$(PY) -m jaxmath.run.tour

test: $(VENV)/.dev  ## the whole test suite, doctests and lint included (slow checks excluded)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow and not multidevice" -n 2
	JAX_NUM_CPU_DEVICES=4 $(PY) -m pytest tests -m "multidevice and not slow" -n 2 -p no:cacheprovider

test-slow: $(VENV)/.dev  ## the long accuracy checks
	$(PY) -m pytest -m slow

bench: $(VENV)/.dev  ## CPU benchmarks against the reference libraries
	$(PY) -m benchmarks.run

bench-scaling: $(VENV)/.dev  ## per experiment and mesh: collectives, bytes and memory per device
	$(PY) -m benchmarks.scaling

# On a GPU machine: its own python3, whose JAX already has CUDA, runs this checkout as it
# is (nothing is installed or reinstalled). Each pytest worker allocates GPU memory on
# demand instead of claiming 75% of it.
GPU_WORKERS ?= 8
GPU_ENV := PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} XLA_PYTHON_CLIENT_PREALLOCATE=false

test-gpu:  ## the test suite (slow checks excluded) on the GPU, with the machine's own JAX
	$(GPU_ENV) $(PYTHON) -m benchmarks.gpu_check
	$(GPU_ENV) $(PYTHON) -m pytest -m "not slow" -n $(GPU_WORKERS) -p no:cacheprovider

bench-gpu:  ## GPU benchmarks into benchmarks/results/gpu.json, with the machine's own JAX
	$(GPU_ENV) $(PYTHON) -m benchmarks.gpu_check
	$(GPU_ENV) $(PYTHON) -m benchmarks.gpu

lint: $(VENV)/.dev
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
