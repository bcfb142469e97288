# EchoStream. `make demo` runs the main job on the bundled model; `make test` passes the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.echostream-installed
TORCH  ?= torch==2.13.0

.PHONY: setup test test-slow lint format bench bench-pipeline bench-serve bench-longstream results eval-longform demo clean

setup: $(STAMP)

# Idempotent: reruns pip only when pyproject.toml changed. Torch goes in first (the local CPU
# wheel), so that the `torch>=2.4` requirement is already met and nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,simulstream]'
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

# Whole agent, per-chunk compute vs stream position, EchoStream vs the recompute baseline
# (reference configs, random weights with busy CTC heads; ~15 min on a quiet 2-core machine).
bench-pipeline: setup
	$(VENV)/bin/echostream bench pipeline --config echostream --baseline-config streamspeech \
		--busy --chunks 160,320,640 --lengths 1,5,10,30,60 --recompute-max-s 10 \
		--out docs/benchmarks/pipeline --doc docs/benchmarks/pipeline.md

# docs/results: both bundled models (EchoStream incremental, the StreamSpeech baseline under its
# recompute agent) at 160/320/640 ms + offline on 30 dev utterances, table + curves.
RESULTS_MODELS ?= --model echostream-tiny=echostream-tiny-fr-en \
	--model streamspeech-tiny=streamspeech-tiny-fr-en@recompute
results: setup
	test -f work/synth-demo/build.json || $(VENV)/bin/echostream prepare synth --size demo --out work/synth-demo
	test -f work/synth-demo/asr_lm.arpa || $(VENV)/bin/echostream prepare asr-lm --data work/synth-demo
	$(VENV)/bin/echostream results $(RESULTS_MODELS) --asr-lm work/synth-demo/asr_lm.arpa \
		--vocoder echostream/pretrained/vocoder-tiny/vocoder.pt \
		--data work/synth-demo --split dev --limit 30 --out docs/results

# Long-form: simulstream + OmniSTEval on 2 one-minute dev streams, EchoStream and the shipped
# same-budget StreamSpeech baseline under its recompute agent.
eval-longform: setup
	test -f work/synth-demo/build.json || $(VENV)/bin/echostream prepare synth --size demo --out work/synth-demo
	$(VENV)/bin/echostream eval-longform --corpus work/synth-demo --split dev --minutes 1 \
		--streams 2 --out out/eval-longform \
		--baseline-checkpoint echostream/pretrained/streamspeech-tiny-fr-en/model.pt \
		--baseline-vocoder echostream/pretrained/vocoder-tiny/vocoder.pt

# Load + faults benchmark of `echostream serve` (starts its own server on a free port). The
# issue's full run is SERVE_CLIENTS=32 SERVE_SECONDS=30 SERVE_THREADS=2: it completes on 2 cores,
# with the server saturated (docs/benchmarks/serve.md).
SERVE_CLIENTS ?= 8
SERVE_SECONDS ?= 10
SERVE_THREADS ?= 1
bench-serve: setup
	mkdir -p work/serve-bench
	$(VENV)/bin/echostream bench serve --clients $(SERVE_CLIENTS) --seconds $(SERVE_SECONDS) \
		--threads $(SERVE_THREADS) --json work/serve-bench/load.json
	$(VENV)/bin/echostream bench serve --faults --seconds 20 --json work/serve-bench/faults.json

# One hour of speech through the bundled model, faster than real time: state and cost per minute.
bench-longstream: setup
	$(VENV)/bin/echostream bench longstream --minutes 60 --threads 1 --out docs/benchmarks/longstream

demo: setup
	$(VENV)/bin/echostream demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
