# Every target sets up its own virtual environment first; a fresh clone needs only python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check remote_kernel tests benchmarks

test: setup lint
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m remote_kernel demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
