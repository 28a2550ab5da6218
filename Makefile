# lm: the two commands are `make demo` and `make test`; both install what is missing first.
PYTHON ?= python3
LM := $(PYTHON) -m lm
STAMP := .venv-installed
DEV_STAMP := .venv-installed-dev

.PHONY: install install-dev demo cpt test test-slow lint format bench gpu-check clean

# torch first, pinned, when it is missing: a bare `torch` requirement would pull the newest CUDA build.
# GPU users: install your own torch build before `make` (see README); it is left alone.
# `make demo` needs only lm itself; tests, lint and the Hugging Face/eval/plot checks need the dev extras.
$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e .
	@touch $@

$(DEV_STAMP): $(STAMP)
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

data/python-docs/manifest.json: | $(STAMP)
	$(LM) prepare --source python-docs --out data/python-docs --val_fraction 0.02

# The demo run is disposable: each `make demo` replaces runs/demo (--overwrite true).
demo: $(STAMP) data/python-docs/manifest.json
	$(LM) fit --config configs/demo.yaml --overwrite true
	$(LM) validate --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
	$(LM) generate --ckpt_path runs/demo/checkpoints/best.ckpt --prompt "The module" --max_new_tokens 60 --seed 0
	@echo "run directory: runs/demo (tensorboard --logdir runs)"

# Continued pretraining from a base checkpoint (or HF directory): make cpt BASE=runs/base/checkpoints/best.ckpt
cpt: $(STAMP)
	@test -n "$(BASE)" || { echo "usage: make cpt BASE=<base checkpoint or HF directory>"; exit 2; }
	$(LM) fit --config configs/cpt-124m-mix.yaml --model.init_from $(BASE)

# Experiments (experiments/<name>/): `make exp-<name>` prepares their data, trains each variant not yet finished
# into runs/<name>/<variant>/ and writes the report; `make report-<name>` rewrites the report alone.
exp-%: $(DEV_STAMP)
	$(LM) experiment run $*

report-%: $(DEV_STAMP)
	$(LM) experiment report $*

test: $(DEV_STAMP)
	$(PYTHON) -m pytest -q

test-slow: $(DEV_STAMP)
	$(PYTHON) -m pytest -q -m slow

lint: $(DEV_STAMP)
	$(PYTHON) -m ruff check lm tests
	$(PYTHON) -m ruff format --check lm tests

format: $(DEV_STAMP)
	$(PYTHON) -m ruff check --fix lm tests
	$(PYTHON) -m ruff format lm tests

# Training speed, three ways (see docs/performance.md). GPU: make bench BENCH_CONFIG=configs/bench/gpt2-124m-classic.yaml BENCH_ARGS=
BENCH_CONFIG ?= configs/bench/cpu.yaml
BENCH_ARGS ?= --steps 10 --warmup 3 --repeats 3
bench: $(STAMP)
	$(LM) bench --config $(BENCH_CONFIG) $(BENCH_ARGS)

# What only a GPU can show, in one command of under 8 minutes on one CUDA GPU (docs/performance.md, "GPU check"):
# gpu-check.md and gpu-check.json in $OUT or runs/gpu-check. Its CPU dry run: make gpu-check GPU_CHECK_ARGS="--device
# cpu --tiny". No install step: the GPU machine lent to this project cannot install (scripts/gpu-check.sh runs it there).
GPU_CHECK_ARGS ?=
gpu-check:
	$(LM) gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs/demo .pytest_cache $(STAMP) $(DEV_STAMP)
