# The README's first two commands: `make demo` and `make test`. Both create .venv if missing and
# install what they need, including Debian's wordnet-base (offline synonyms for CleanCLIP's EDA).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
WORDNET := /usr/share/wordnet/data.noun
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo demo-full test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

$(WORDNET):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wordnet-base

# Ends with the check of the headline numbers against presets/demo.expected.yaml (exit 1 if off).
demo: $(STAMP) $(WORDNET)
	$(BIN)/python -m poisonlab run demo --out demo-out
	$(BIN)/python -m poisonlab report --check demo-out

# The demo's grid from a well-trained clean model, cleaned 36 epochs at lr 2e-3; sections at their
# calibrated budgets (docs/results/clip.md, "make demo-full at 36 cleaning epochs").
# One process: here the CLIP grid is most of the work, so it keeps both threads.
demo-full: $(STAMP) $(WORDNET)
	$(BIN)/python -m poisonlab run full --out demo-full-out --serial

test: $(STAMP) $(WORDNET)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf demo-out demo-full-out .pytest_cache
