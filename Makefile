# Two commands do everything on a fresh clone: `make demo` and `make test` (each runs `setup` first).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup demo test test-slow bench lint typecheck docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: the CPU wheel on local disk (plain `torch` would pull a multi-GB CUDA build).
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	# tianshou 2.0.1 pins pandas<3 in its metadata but runs on pandas 3 (docs/clients.md, tested): without its pins
	$(BIN)/pip install --no-deps tianshou==2.0.1
	$(BIN)/pip install deepdiff h5py overrides sensai-utils virtualenv
	touch $(STAMP)

demo: setup
	$(BIN)/fedpeat demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/fedpeat bench engine

docs: setup
	# the generated pages first (tables from the committed result files, the CLI reference), then a strict build
	$(BIN)/fedpeat report
	$(BIN)/typer experiments.cli utils docs --name fedpeat --title "Command line (generated)" --output docs/cli.md
	$(BIN)/mkdocs build --strict --site-dir site

lint: setup
	$(BIN)/ruff check federation fedpeat_env agents experiments tests

typecheck: setup
	# mypy on the four packages, settings and files in pyproject.toml ([tool.mypy])
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .benchmarks site
