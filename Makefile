# The two commands in the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench constraints notebook

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt is the environment CI tested: a fresh machine gets exactly it.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/taxi-pipeline demo

# The layers (import-linter contracts in pyproject.toml), lint and format, types, then the tests and doctests
# (two processes, a test module in each at a time: 13.6 min serial, 9.5 min so on these 2 cores).
test: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadfile

notebook: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,notebook]'
	$(BIN)/jupyter lab notebooks/quickstart.ipynb

bench: setup
	$(BIN)/pytest benchmarks --benchmark-json .benchmarks/latest.json

# Refresh the lock on purpose (after changing dependencies), then run `make test`.
constraints:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^taxi-pipeline' > constraints.txt
