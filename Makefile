# Every target sets up its own virtual environment first; a fresh clone needs only python3
# (and apt-get for the system packages the browser and ssh tests use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,bench,lab,dask
# Parts add their own set-up steps and test prerequisites in mk/*.mk.
SETUP_STEPS :=
TEST_STEPS :=

.PHONY: setup test demo demo-script lint clean pytest

include $(wildcard mk/*.mk)

setup: $(STAMP) $(SETUP_STEPS)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

pytest: setup
	$(PY) -m pytest -q tests

test: setup lint $(TEST_STEPS) pytest

# make demo: JupyterLab on notebooks/ with the simulated bench; make demo CHECK=1: headless,
# executes every notebook and fails on any error.
demo: setup
ifeq ($(CHECK),1)
	$(PY) -m remote_kernel.demo.launcher --check
else
	$(PY) -m remote_kernel.demo.launcher
endif

# The scripted first look: a classic server and a short session against it, printed.
demo-script: setup
	$(PY) -m remote_kernel demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
