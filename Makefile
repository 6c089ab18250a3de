# Two entry points on a fresh machine: `make demo` and `make test`.
# Both bootstrap a virtualenv in .venv from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml bin/shipyard
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/shipyard demo

test: $(VENV)/.installed
	tools/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 300

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bluegreen.py

clean:
	rm -rf $(VENV) build src/*.egg-info
