# energybook: build the book and run the tests.
#   make book         build the Jupyter Book into _build/html, and the course's slides into _build/html/slides
#                     (the book's packages only: no torch, no test tools)
#   make slides       one HTML slide deck per week of the course from the built book, into _build/html/slides
#   make book-teacher the teacher's build: the book with every solution, and its slides, into
#                     _build/teacher/_build/html (hand out `make book-students`'s build instead)
#   make test         ruff, pytest (and again under the oldest tested transformers), the wheel job, the book build,
#                     and a headless-Chromium check of every page
#   make lock         re-resolve requirements/*.txt from pyproject.toml (the only command that changes the lock)
#   make test-latest  the unit tests under the newest releases pyproject.toml allows; reports, never fails CI
# Every install comes from the committed lock (requirements/*.txt, exact versions with hashes), so a fresh clone
# next year installs what CI installed today. An install re-runs only when its lock file changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.energybook-installed
BOOK_VENV ?= .venv-book
BOOK_BIN := $(BOOK_VENV)/bin
BOOK_STAMP := $(BOOK_VENV)/.energybook-installed
# The floor job: the packages that differ under the oldest tested transformers, on top of $(VENV).
FLOOR := $(VENV)/floor
FLOOR_STAMP := $(FLOOR)/.installed
LATEST_VENV ?= .venv-latest
CHROMIUM ?= /usr/bin/chromium
# The test lock pins torch's CPU build (torch==X+cpu), which PyPI does not serve: pip finds it on PyTorch's CPU
# wheel index, read as a find-links page by an install of torch alone (pip reads find-links pages once per package
# it looks up). Without it pip would take PyPI's CUDA build, gigabytes. (On a machine that already lists that file
# through pip's own find-links, an unreachable index only costs one round of retries.)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu/torch/
# The lock's tool, pinned like everything else.
PIP_TOOLS ?= pip-tools==7.6.2
LOCKED := -m pip install --quiet --require-hashes --no-deps
EDITABLE := -m pip install --quiet --no-deps --no-build-isolation -e .
COMPILE := -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: book test install install-book chromium lint unit unit-floor browser wheel clean lock test-latest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BOOK_BIN)/python:
	$(PYTHON) -m venv $(BOOK_VENV)

$(STAMP): requirements/test.txt pyproject.toml | $(BIN)/python
	$(PYTHON) scripts/lock_overlay.py --select torch requirements/test.txt > $(VENV)/torch-lock.txt
	$(BIN)/python $(LOCKED) --find-links $(TORCH_CPU_INDEX) -r $(VENV)/torch-lock.txt
	$(BIN)/python $(LOCKED) -r requirements/test.txt
	$(BIN)/python $(EDITABLE)
	touch $@

$(BOOK_STAMP): requirements/book.txt pyproject.toml | $(BOOK_BIN)/python
	$(BOOK_BIN)/python $(LOCKED) -r requirements/book.txt
	$(BOOK_BIN)/python $(EDITABLE)
	touch $@

$(FLOOR_STAMP): requirements/floor.txt $(STAMP)
	rm -rf $(FLOOR)
	$(BIN)/python $(LOCKED) --target $(FLOOR) -r requirements/floor.txt
	touch $@

install: $(STAMP)
install-book: $(BOOK_STAMP)

chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		echo "+ installing Debian's chromium"; \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; \
	fi

# --all: every page is re-read and re-executed on every build, so that a warning or a cell
# error can never be hidden by Sphinx's incremental build.
book: $(BOOK_STAMP)
	$(BOOK_BIN)/jupyter-book build . --all -W -n --keep-going
	$(MAKE) slides

lint: $(STAMP)
	$(BIN)/ruff check .

# Exit status 5 is pytest's "no tests collected": not a failure here.
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not book" || [ $$? -eq 5 ]

# The tests that touch transformers, again under the oldest release pyproject.toml allows (the lent GPUs' release).
FLOOR_TESTS ?= tests/test_engine.py tests/test_lean_engine.py tests/test_lock.py
unit-floor: $(FLOOR_STAMP)
	PYTHONPATH=$(FLOOR) EB_EXPECT_TRANSFORMERS=$$(sed -n 's/^transformers==\([^ ]*\).*/\1/p' requirements/floor.txt) \
		$(BIN)/python -m pytest -m "not book" -p no:cacheprovider $(FLOOR_TESTS)

browser: $(STAMP) chromium
	EB_REQUIRE_BOOK=1 $(BIN)/python -m pytest -m book tests/test_book_html.py

# The wheel job: a non-editable install with base dependencies only (from requirements/base.txt), used from
# outside the checkout.
wheel: | $(BIN)/python
	PYTHON=$(BIN)/python bash scripts/check_wheel.sh

test: $(STAMP) chromium
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) unit-floor
	$(MAKE) wheel
	$(MAKE) book
	$(MAKE) browser

clean:
	rm -rf _build

# Re-resolve every lock file from pyproject.toml, for CPython 3.11 on Linux x86-64 (CI's platform). Run it after
# changing a dependency in pyproject.toml; tests/test_lock.py fails until the lock agrees with it.
#   base.txt   the base dependencies (the wheel job)
#   book.txt   base + the book extra (make book; the Pages workflow)
#   test.txt   base + book + test, with torch's CPU build (make test)
#   floor.txt  what differs from test.txt under the oldest tested transformers (requirements/floor.in)
LOCK_VENV ?= .venv-lock
lock:
	[ -x $(LOCK_VENV)/bin/python ] || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet "$(PIP_TOOLS)"
	$(LOCK_VENV)/bin/python $(COMPILE) -o requirements/base.txt pyproject.toml requirements/build.in
	$(LOCK_VENV)/bin/python $(COMPILE) --extra book -o requirements/book.txt pyproject.toml requirements/build.in
	$(LOCK_VENV)/bin/python $(COMPILE) --find-links $(TORCH_CPU_INDEX) --extra book --extra test \
		-o requirements/test.txt pyproject.toml requirements/build.in requirements/torch-cpu.in
	$(LOCK_VENV)/bin/python $(COMPILE) --find-links $(TORCH_CPU_INDEX) --extra test \
		-o $(LOCK_VENV)/floor-full.txt pyproject.toml requirements/torch-cpu.in requirements/floor.in
	$(PYTHON) scripts/lock_overlay.py requirements/test.txt $(LOCK_VENV)/floor-full.txt > requirements/floor.txt

# The newest releases that pyproject.toml allows, in a throw-away environment (torch stays the lock's CPU build: the
# newest torch on PyPI is a CUDA build of gigabytes): the unit tests, and a list of what failed. Never part of `make test` or CI: a new release upstream must not turn CI red; this says what it would break.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --no-deps --find-links $(TORCH_CPU_INDEX) \
		"$$(sed -n 's/^\(torch==[^ ]*\).*/\1/p' requirements/test.txt)"
	$(LATEST_VENV)/bin/python -m pip install --quiet -e ".[book,test]"
	@$(LATEST_VENV)/bin/python -m pip list --format=freeze > $(LATEST_VENV)/versions.txt
	@echo "+ newest allowed: $$(grep -iE '^(torch|transformers|numpy|pandas|scipy|lmfit|matplotlib|seaborn)==' \
		$(LATEST_VENV)/versions.txt | tr '\n' ' ')"
	@set +e; $(LATEST_VENV)/bin/python -m pytest -m "not book" -q -p no:cacheprovider -rfE \
		> $(LATEST_VENV)/pytest.txt 2>&1; rc=$$?; \
	tail -n 40 $(LATEST_VENV)/pytest.txt; \
	if [ $$rc -eq 0 ]; then echo "test-latest: every unit test passes on the newest releases"; \
	else echo "test-latest: failures above (full log: $(LATEST_VENV)/pytest.txt); CI is not affected"; fi

# For teachers: the whole book with every solution of the exercises left out (text and code), into
# _build/students/_build/html. book/_ext/eb_book.py sets sphinx-exercise's hide_solutions when
# EB_HIDE_SOLUTIONS=1. The recipe is `book`'s with that variable and another output folder; then
# - the copies of the pages' sources (html/_sources/*.md, behind the theme's download button) go: they
#   hold the solutions;
# - the build fails if any file of it still holds a solution (a solution box, its title, or a solution
#   directive). tests/test_students_build.py reads it closer (pytest -m book tests/test_students_build.py).
STUDENTS_HTML := _build/students/_build/html
.PHONY: book-students notebooks
book-students: $(BOOK_STAMP)
	rm -rf $(STUDENTS_HTML)
	EB_HIDE_SOLUTIONS=1 $(BOOK_BIN)/jupyter-book build . --all -W -n --keep-going --path-output _build/students
	rm -rf $(STUDENTS_HTML)/_sources
	@if grep -rlE 'class="solution\b|>Solution to |\{solution(-start|-end)?\}' $(STUDENTS_HTML); then \
		echo "book-students: the files above still hold solutions"; exit 1; \
	else echo "book-students: no solution in $(STUDENTS_HTML)"; fi

# The course's slides (book/course/syllabus.md): one self-contained HTML deck per week, from the figures of the
# built book (make book first), into $(SLIDES_HTML)/slides; energybook/report/course.py builds them.
# The teacher's build: the book with every solution (EB_HIDE_SOLUTIONS=0, as `make book`), and the slides,
# into $(TEACHER_HTML).
SLIDES_HTML ?= _build/html
TEACHER_HTML := _build/teacher/_build/html
.PHONY: slides book-teacher
slides: $(BOOK_STAMP)
	$(BOOK_BIN)/python -m energybook.report.course slides --html $(SLIDES_HTML) --out $(SLIDES_HTML)/slides

book-teacher: $(BOOK_STAMP)
	rm -rf $(TEACHER_HTML)
	EB_HIDE_SOLUTIONS=0 $(BOOK_BIN)/jupyter-book build . --all -W -n --keep-going --path-output _build/teacher
	$(MAKE) slides SLIDES_HTML=$(TEACHER_HTML)

# The .ipynb copies of the book's pages that the Colab buttons open (each with an install cell),
# into _build/notebooks; CI publishes them to the branch named by eb_notebooks_branch in _config.yml.
notebooks: $(BOOK_STAMP)
	$(BOOK_BIN)/python scripts/make_notebooks.py --out _build/notebooks
