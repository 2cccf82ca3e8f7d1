# energybook: build the book and run the tests.
#   make book   build the Jupyter Book into _build/html
#   make test   ruff, pytest, the wheel job, the book build, and a headless-Chromium check of every page
# Both create .venv on first use; the install step re-runs only when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.energybook-installed
CHROMIUM ?= /usr/bin/chromium
# torch is pinned and installed first: on the project's machines this picks a CPU wheel from
# local disk; an unpinned torch would download the CUDA build (gigabytes).
# Elsewhere, pass TORCH_PIP_ARGS="--index-url <your CPU wheel index>" to avoid the CUDA build.
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: book test install chromium lint unit browser wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $@

install: $(STAMP)

chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		echo "+ installing Debian's chromium"; \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; \
	fi

# --all: every page is re-read and re-executed on every build, so that a warning or a cell
# error can never be hidden by Sphinx's incremental build.
book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check .

# Exit status 5 is pytest's "no tests collected": not a failure here.
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not book" || [ $$? -eq 5 ]

browser: $(STAMP) chromium
	EB_REQUIRE_BOOK=1 $(BIN)/python -m pytest -m book tests/test_book_html.py

# The wheel job: a non-editable install with base dependencies only, used from outside the checkout.
wheel: | $(BIN)/python
	PYTHON=$(BIN)/python bash scripts/check_wheel.sh

test: $(STAMP) chromium
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) wheel
	$(MAKE) book
	$(MAKE) browser

clean:
	rm -rf _build

# For teachers: the whole book with every solution of the exercises left out (text and code), into
# _build/students/_build/html. book/_ext/eb_book.py sets sphinx-exercise's hide_solutions when
# EB_HIDE_SOLUTIONS=1. The recipe is `book`'s with that variable and another output folder.
.PHONY: book-students notebooks
book-students: $(STAMP)
	EB_HIDE_SOLUTIONS=1 $(BIN)/jupyter-book build . --all -W -n --keep-going --path-output _build/students

# The .ipynb copies of the book's pages that the Colab buttons open (each with an install cell),
# into _build/notebooks; CI publishes them to the branch named by eb_notebooks_branch in _config.yml.
notebooks: $(STAMP)
	$(BIN)/python scripts/make_notebooks.py --out _build/notebooks
