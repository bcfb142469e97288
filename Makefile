# EchoStream. `make demo` runs the main job on the bundled model; `make test` passes the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.echostream-installed
TORCH  ?= torch==2.13.0

.PHONY: setup test test-slow lint format bench demo clean

setup: $(STAMP)

# Idempotent: reruns pip only when pyproject.toml changed. Torch goes in first (the local CPU
# wheel), so that the `torch>=2.4` requirement is already met and nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	# SimulEval 1.1.4 (tests compare our latency scorers with its own): --no-deps, because its
	# pinned requirements would downgrade tqdm and add pytest plugins; these are what it imports.
	$(PY) -m pip install -q --no-deps simuleval==1.1.4
	$(PY) -m pip install -q pandas textgrid requests tornado
	touch $@

# pytest exits 5 when it collects no tests: that is a failure too, and says so.
test: setup
	$(PY) -m pytest -q; rc=$$?; [ $$rc -ne 5 ] || echo "make test: no tests collected" >&2; exit $$rc

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(VENV)/bin/echostream bench encoder --out docs/benchmarks/encoder --doc docs/benchmarks/encoder.md

demo: setup
	$(VENV)/bin/echostream demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
