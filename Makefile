# The two commands in the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# mkdocs-material 9.7+ prints a banner about its end of life on every build; the pinned version is what the site is checked with.
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup demo test bench constraints notebook docs docs-serve docs-screenshots ui-check

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt is the environment CI tested: a fresh machine gets exactly it.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,docs]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/taxi-pipeline demo

# The layers (import-linter contracts in pyproject.toml), lint and format, types, the docs site (--strict: a broken link
# or a stale reference fails), then the tests and doctests
# (two processes, a test module in each at a time, the files that start servers first: 758 tests in 12.3 min on a
# fresh clone on these 2 cores with nothing beside it, 16.5 min before Dask's upkeep was quieted in tests/conftest.py;
# the goal is 10 min).
test: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/pytest -n 2 --dist loadfile
	# The benchmarks are not type-checked: collecting every one (opt-in scales too) catches a stale import in seconds.
	$(BIN)/pytest benchmarks --collect-only -q --bench-year --bench-soak > /dev/null

notebook: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,notebook]'
	$(BIN)/jupyter lab notebooks/quickstart.ipynb

# The documentation site into site/ (docs/, mkdocs.yml); --strict turns a broken link or a stale reference into a failure.
docs: setup
	$(BIN)/mkdocs build --strict

# The site on http://127.0.0.1:8001, rebuilt on every change.
docs-serve: setup
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# Screenshots of the built site in headless Chromium (apt-get install chromium) into site-screenshots/.
docs-screenshots: docs
	$(BIN)/python docs/screenshots.py site site-screenshots

# The Prefect UI checked in headless Chromium (apt-get install chromium): the tests marked browser, which make test
# leaves out (CI machines have no browser).
ui-check: setup
	$(BIN)/pytest -m browser tests

bench: setup
	$(BIN)/pytest benchmarks --benchmark-json .benchmarks/latest.json

# Refresh the lock on purpose (after changing dependencies), then run `make test`.
constraints:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^taxi-pipeline' > constraints.txt
