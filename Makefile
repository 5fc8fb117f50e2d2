# The targets CI and people call. `make test` is the README's test command.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast slow lint bench serve clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

slow: install
	MEMVAULT_SLOW=1 $(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src/memvault

bench: install
	$(BIN)/python bench/run.py

serve: install
	$(BIN)/memvault serve

clean:
	rm -rf $(VENV) build *.egg-info
